//! The durable half of a voter: the log, the vote, the committed and
//! purged markers and the latest snapshot, in one redb file; and the
//! state machine's applied state in memory, rebuilt from them at start.
//!
//! Every write openraft must find again after a crash (the vote, appended
//! entries, truncation, purge, snapshots) is one redb write transaction
//! committed with `Durability::Immediate` (fsync) before the call returns
//! or, for appends, before the flush callback is called.

use std::fmt::Debug;
use std::io::Cursor;
use std::ops::{Bound, RangeBounds};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage, RaftStateMachine, Snapshot};
use openraft::{
    AnyError, Entry, EntryPayload, LogId, OptionalSend, RaftLogReader, RaftSnapshotBuilder,
    SnapshotMeta, StorageError, StorageIOError, StoredMembership, Vote,
};
use redb::{Database, Durability, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use crate::machine::{Machine, Reply};
use crate::{Member, NodeId, TypeConfig};

type StoreError = StorageError<NodeId>;

/// Entries by index, postcard-encoded.
const LOG: TableDefinition<'_, u64, &[u8]> = TableDefinition::new("log");
/// The vote, markers and snapshot, postcard-encoded, by the keys below.
const META: TableDefinition<'_, &str, &[u8]> = TableDefinition::new("meta");
const VOTE: &str = "vote";
const COMMITTED: &str = "committed";
const PURGED: &str = "purged";
const SNAPSHOT: &str = "snapshot";
const STANDING: &str = "standing";

/// Whether a store may vote: see [`Store::standing`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Standing {
    /// Created empty and not admitted yet: its member must not vote,
    /// stand for election or bootstrap, since it may be a voter whose
    /// data directory was lost (and, with it, the votes it gave and the
    /// entries it acknowledged). On disk: append variants only.
    Pending,
    /// Admitted: by the founding of the group, or by a membership change
    /// that added its node while it was no voter.
    Admitted,
}

/// The store's file inside the data directory.
pub(crate) const FILE: &str = "raft.redb";

/// The database, shared by the log and the state machine halves.
#[derive(Clone)]
pub(crate) struct Store {
    db: Arc<Database>,
}

impl Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store").finish_non_exhaustive()
    }
}

/// A snapshot as stored: openraft's metadata and the encoded machine.
#[derive(Serialize, Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta<NodeId, Member>,
    data: Vec<u8>,
}

fn encode<T: Serialize>(v: &T) -> Result<Vec<u8>, AnyError> {
    postcard::to_allocvec(v).map_err(|e| AnyError::new(&e))
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, AnyError> {
    postcard::from_bytes(bytes).map_err(|e| AnyError::new(&e))
}

fn any(e: impl std::error::Error + 'static) -> AnyError {
    AnyError::new(&e)
}

/// A [`Store`] that does not keep the database open: the file is closed
/// once the Raft member that holds the store stops.
#[derive(Debug, Clone)]
pub(crate) struct WeakStore(std::sync::Weak<Database>);

impl WeakStore {
    /// The store, while its Raft member holds it open.
    pub(crate) fn upgrade(&self) -> Result<Store, String> {
        self.0
            .upgrade()
            .map(|db| Store { db })
            .ok_or_else(|| "the store is closed".to_owned())
    }
}

impl Store {
    /// A handle that does not keep the database open.
    pub(crate) fn downgrade(&self) -> WeakStore {
        WeakStore(Arc::downgrade(&self.db))
    }

    /// Opens (or creates) the store in `dir`.
    pub(crate) fn open(dir: &Path) -> Result<Self, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create the directory: {e}"))?;
        let db = Database::create(dir.join(FILE)).map_err(|e| e.to_string())?;
        // Create the tables so later reads find them.
        let tx = db.begin_write().map_err(|e| e.to_string())?;
        tx.open_table(LOG).map_err(|e| e.to_string())?;
        tx.open_table(META).map_err(|e| e.to_string())?;
        tx.commit().map_err(|e| e.to_string())?;
        Ok(Self { db: Arc::new(db) })
    }

    /// The store's standing, recorded the first time it is asked: a store
    /// with no vote, log or snapshot is `Pending`; one that has any (a
    /// store from before standings were recorded) is `Admitted`. Blocks
    /// (reads, and may sync a write).
    pub(crate) fn standing(&self) -> Result<Standing, String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        {
            let tx = self.db.begin_read().map_err(|e| err(&e))?;
            let meta = tx.open_table(META).map_err(|e| err(&e))?;
            if let Some(v) = meta.get(STANDING).map_err(|e| err(&e))? {
                return decode(v.value()).map_err(|e| err(&e));
            }
        }
        let standing = if self.is_empty()? {
            Standing::Pending
        } else {
            Standing::Admitted
        };
        self.set_standing(standing)?;
        Ok(standing)
    }

    /// Records the store's standing, synced. Blocks.
    pub(crate) fn set_standing(&self, standing: Standing) -> Result<(), String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let bytes = encode(&standing).map_err(|e| err(&e))?;
        let mut tx = self.db.begin_write().map_err(|e| err(&e))?;
        tx.set_durability(Durability::Immediate);
        tx.open_table(META)
            .map_err(|e| err(&e))?
            .insert(STANDING, bytes.as_slice())
            .map_err(|e| err(&e))?;
        tx.commit().map_err(|e| err(&e))
    }

    /// Whether the store holds no vote, no log entry, no purge marker and
    /// no snapshot: it has never been part of a group. Blocks.
    pub(crate) fn is_empty(&self) -> Result<bool, String> {
        let err = |e: &dyn std::fmt::Display| e.to_string();
        let tx = self.db.begin_read().map_err(|e| err(&e))?;
        let log = tx.open_table(LOG).map_err(|e| err(&e))?;
        if log.first().map_err(|e| err(&e))?.is_some() {
            return Ok(false);
        }
        let meta = tx.open_table(META).map_err(|e| err(&e))?;
        for key in [VOTE, PURGED, SNAPSHOT] {
            if meta.get(key).map_err(|e| err(&e))?.is_some() {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Runs `f` on a thread that may block, as redb does on fsync.
    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Database) -> Result<T, AnyError> + Send + 'static,
    ) -> Result<T, AnyError> {
        let db = self.db.clone();
        match tokio::task::spawn_blocking(move || f(&db)).await {
            Ok(r) => r,
            Err(e) => Err(any(e)),
        }
    }

    async fn read_meta<T: DeserializeOwned + Send + 'static>(
        &self,
        key: &'static str,
    ) -> Result<Option<T>, AnyError> {
        self.blocking(move |db| {
            let tx = db.begin_read().map_err(any)?;
            let table = tx.open_table(META).map_err(any)?;
            match table.get(key).map_err(any)? {
                Some(v) => Ok(Some(decode(v.value())?)),
                None => Ok(None),
            }
        })
        .await
    }

    async fn write_meta<T: Serialize>(
        &self,
        key: &'static str,
        value: &T,
        durability: Durability,
    ) -> Result<(), AnyError> {
        let bytes = encode(value)?;
        self.blocking(move |db| {
            let mut tx = db.begin_write().map_err(any)?;
            tx.set_durability(durability);
            tx.open_table(META)
                .map_err(any)?
                .insert(key, bytes.as_slice())
                .map_err(any)?;
            tx.commit().map_err(any)
        })
        .await
    }
}

/// The log half, handed to openraft (its reader is a clone).
#[derive(Debug, Clone)]
pub(crate) struct LogStore {
    store: Store,
    /// The committed marker openraft last saved, not written yet: it is
    /// written with the next append, in the same transaction, rather than
    /// by a write of its own on every commit.
    committed: Arc<Mutex<Option<Option<LogId<NodeId>>>>>,
}

impl LogStore {
    pub(crate) fn new(store: Store) -> Self {
        Self {
            store,
            committed: Arc::default(),
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StoreError> {
        let bounds = (range.start_bound().cloned(), range.end_bound().cloned());
        self.store
            .blocking(move |db| {
                let tx = db.begin_read().map_err(any)?;
                let table = tx.open_table(LOG).map_err(any)?;
                let mut entries = Vec::new();
                for row in table.range::<u64>(bounds).map_err(any)? {
                    let (_, v) = row.map_err(any)?;
                    entries.push(decode(v.value())?);
                }
                Ok(entries)
            })
            .await
            .map_err(|e| StorageIOError::read_logs(e).into())
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StoreError> {
        let purged: Option<LogId<NodeId>> = self
            .store
            .read_meta(PURGED)
            .await
            .map_err(StorageIOError::read_logs)?;
        let last: Option<Entry<TypeConfig>> = self
            .store
            .blocking(|db| {
                let tx = db.begin_read().map_err(any)?;
                let table = tx.open_table(LOG).map_err(any)?;
                match table.last().map_err(any)? {
                    Some((_, v)) => Ok(Some(decode(v.value())?)),
                    None => Ok(None),
                }
            })
            .await
            .map_err(StorageIOError::read_logs)?;
        Ok(LogState {
            last_purged_log_id: purged,
            last_log_id: last.map(|e| e.log_id).or(purged),
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StoreError> {
        self.store
            .write_meta(VOTE, vote, Durability::Immediate)
            .await
            .map_err(|e| StorageIOError::write_vote(e).into())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StoreError> {
        self.store
            .read_meta(VOTE)
            .await
            .map_err(|e| StorageIOError::read_vote(e).into())
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StoreError> {
        // Kept until the next append writes it: losing it only means
        // learning it again from the leader.
        *crate::locked(&self.committed) = Some(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StoreError> {
        if let Some(committed) = *crate::locked(&self.committed) {
            return Ok(committed);
        }
        let committed: Option<Option<LogId<NodeId>>> = self
            .store
            .read_meta(COMMITTED)
            .await
            .map_err(StorageIOError::read)?;
        Ok(committed.flatten())
    }

    async fn append<I>(
        &mut self,
        entries: I,
        callback: LogFlushed<TypeConfig>,
    ) -> Result<(), StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut rows = Vec::new();
        for entry in entries {
            rows.push((
                entry.log_id.index,
                encode(&entry).map_err(StorageIOError::write_logs)?,
            ));
        }
        let committed = match *crate::locked(&self.committed) {
            Some(c) => Some(encode(&c).map_err(StorageIOError::write_logs)?),
            None => None,
        };
        let written = self
            .store
            .blocking(move |db| {
                let mut tx = db.begin_write().map_err(any)?;
                tx.set_durability(Durability::Immediate);
                {
                    let mut table = tx.open_table(LOG).map_err(any)?;
                    for (index, bytes) in &rows {
                        table.insert(*index, bytes.as_slice()).map_err(any)?;
                    }
                }
                if let Some(committed) = &committed {
                    let mut meta = tx.open_table(META).map_err(any)?;
                    meta.insert(COMMITTED, committed.as_slice()).map_err(any)?;
                }
                tx.commit().map_err(any)
            })
            .await;
        // Only now, after the fsync'd commit, may openraft count them.
        match written {
            Ok(()) => {
                callback.log_io_completed(Ok(()));
                Ok(())
            }
            Err(e) => {
                callback.log_io_completed(Err(std::io::Error::other(e.to_string())));
                Err(StorageIOError::write_logs(e).into())
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        self.remove((Bound::Included(log_id.index), Bound::Unbounded), None)
            .await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StoreError> {
        self.remove(
            (Bound::Unbounded, Bound::Included(log_id.index)),
            Some(log_id),
        )
        .await
    }
}

impl LogStore {
    /// Deletes the entries in `range`, recording `purged` if given, in one
    /// synced transaction.
    async fn remove(
        &mut self,
        range: (Bound<u64>, Bound<u64>),
        purged: Option<LogId<NodeId>>,
    ) -> Result<(), StoreError> {
        let marker = purged
            .map(|p| encode(&p))
            .transpose()
            .map_err(StorageIOError::write_logs)?;
        self.store
            .blocking(move |db| {
                let mut tx = db.begin_write().map_err(any)?;
                tx.set_durability(Durability::Immediate);
                {
                    if let Some(bytes) = &marker {
                        let mut meta = tx.open_table(META).map_err(any)?;
                        meta.insert(PURGED, bytes.as_slice()).map_err(any)?;
                    }
                    let mut table = tx.open_table(LOG).map_err(any)?;
                    table
                        .retain_in::<u64, _>(range, |_, _| false)
                        .map_err(any)?;
                }
                tx.commit().map_err(any)
            })
            .await
            .map_err(|e| StorageIOError::write_logs(e).into())
    }
}

/// The state machine's applied state.
#[derive(Debug, Clone, Default)]
pub(crate) struct Applied {
    /// The last entry applied.
    pub(crate) last: Option<LogId<NodeId>>,
    /// The last membership applied.
    pub(crate) membership: StoredMembership<NodeId, Member>,
    /// The machine.
    pub(crate) machine: Machine,
}

/// The applied state, shared by openraft's state machine half and the
/// [`crate::Consensus`] handle (local reads, expiry, waits).
#[derive(Debug)]
pub(crate) struct Shared {
    state: Mutex<Applied>,
    /// The index of the last entry applied, for waiting on changes.
    applied: watch::Sender<u64>,
}

impl Shared {
    pub(crate) fn new() -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(Applied::default()),
            applied: watch::channel(0).0,
        })
    }

    /// The applied state, whether or not a panicking thread poisoned it.
    pub(crate) fn state(&self) -> MutexGuard<'_, Applied> {
        crate::locked(&self.state)
    }

    /// Follows the index of the last entry applied.
    pub(crate) fn watch(&self) -> watch::Receiver<u64> {
        self.applied.subscribe()
    }

    fn replace(&self, applied: Applied) {
        let index = applied.last.map_or(0, |l| l.index);
        *self.state() = applied;
        self.applied.send_replace(index);
    }
}

/// The state machine half, handed to openraft.
#[derive(Debug, Clone)]
pub(crate) struct StateStore {
    store: Store,
    shared: Arc<Shared>,
}

impl StateStore {
    /// The state machine, restored from the store's snapshot if it has one.
    pub(crate) async fn restore(store: Store, shared: Arc<Shared>) -> Result<Self, String> {
        let this = Self { store, shared };
        let stored: Option<StoredSnapshot> = this
            .store
            .read_meta(SNAPSHOT)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(s) = stored {
            let machine = Machine::from_snapshot(&s.data).map_err(|e| e.to_string())?;
            this.shared.replace(Applied {
                last: s.meta.last_log_id,
                membership: s.meta.last_membership,
                machine,
            });
        }
        Ok(this)
    }

    async fn save_snapshot(
        &self,
        meta: SnapshotMeta<NodeId, Member>,
        data: Vec<u8>,
    ) -> Result<(), StoreError> {
        let signature = meta.signature();
        self.store
            .write_meta(
                SNAPSHOT,
                &StoredSnapshot { meta, data },
                Durability::Immediate,
            )
            .await
            .map_err(|e| StorageIOError::write_snapshot(Some(signature), e).into())
    }
}

impl RaftSnapshotBuilder<TypeConfig> for StateStore {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StoreError> {
        let (last, membership, data) = {
            let state = self.shared.state();
            let data = state
                .machine
                .to_snapshot()
                .map_err(|e| StorageIOError::read_state_machine(any(e)))?;
            (state.last, state.membership.clone(), data)
        };
        let snapshot_id = match last {
            Some(l) => format!("{}-{}-{}", l.leader_id.term, l.leader_id.node_id, l.index),
            None => "empty".to_owned(),
        };
        let meta = SnapshotMeta {
            last_log_id: last,
            last_membership: membership,
            snapshot_id,
        };
        self.save_snapshot(meta.clone(), data.clone()).await?;
        Ok(Snapshot {
            meta,
            snapshot: Box::new(Cursor::new(data)),
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateStore {
    type SnapshotBuilder = Self;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StoreError> {
        let state = self.shared.state();
        Ok((state.last, state.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Reply>, StoreError>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut replies = Vec::new();
        let last = {
            let mut state = self.shared.state();
            for entry in entries {
                state.last = Some(entry.log_id);
                replies.push(match entry.payload {
                    EntryPayload::Blank => Reply::Nothing,
                    EntryPayload::Normal(command) => {
                        state.machine.apply(entry.log_id.index, &command)
                    }
                    EntryPayload::Membership(m) => {
                        state.membership = StoredMembership::new(Some(entry.log_id), m);
                        Reply::Nothing
                    }
                });
            }
            state.last.map_or(0, |l| l.index)
        };
        self.shared.applied.send_replace(last);
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StoreError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StoreError> {
        let data = snapshot.into_inner();
        let machine = Machine::from_snapshot(&data)
            .map_err(|e| StorageIOError::read_snapshot(Some(meta.signature()), any(e)))?;
        // Durable first: a crash after this finds the snapshot again.
        self.save_snapshot(meta.clone(), data).await?;
        self.shared.replace(Applied {
            last: meta.last_log_id,
            membership: meta.last_membership.clone(),
            machine,
        });
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StoreError> {
        let stored: Option<StoredSnapshot> = self
            .store
            .read_meta(SNAPSHOT)
            .await
            .map_err(|e| StorageIOError::read_snapshot(None, e))?;
        Ok(stored.map(|s| Snapshot {
            meta: s.meta,
            snapshot: Box::new(Cursor::new(s.data)),
        }))
    }
}

#[cfg(test)]
mod tests;
