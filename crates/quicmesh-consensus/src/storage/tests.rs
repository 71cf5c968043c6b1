use openraft::storage::RaftLogStorageExt;
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Vote};

use super::*;
use crate::machine::{Command, Op};

fn log_id(term: u64, index: u64) -> LogId<NodeId> {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn entry(term: u64, index: u64) -> Entry<TypeConfig> {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Normal(Command::Client {
            from: "a@h".parse().expect("name"),
            op: Op::OpenSession { ttl_ms: 1000 },
        }),
    }
}

/// Appends `entries`, waiting for the flush callback as openraft does.
async fn append(log: &mut LogStore, entries: Vec<Entry<TypeConfig>>) {
    log.blocking_append(entries).await.expect("append");
}

#[tokio::test]
async fn vote_and_log_survive_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    {
        let mut log = LogStore::new(Store::open(dir.path()).expect("open"));
        log.save_vote(&Vote::new(3, 1)).await.expect("vote");
        append(&mut log, (1..=5).map(|i| entry(3, i)).collect()).await;
    }
    let mut log = LogStore::new(Store::open(dir.path()).expect("reopen"));
    assert_eq!(log.read_vote().await.expect("read"), Some(Vote::new(3, 1)));
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(3, 5)));
    let entries = log.try_get_log_entries(2..4).await.expect("read");
    let indices: Vec<u64> = entries.iter().map(|e| e.log_id.index).collect();
    assert_eq!(indices, [2, 3]);
}

#[tokio::test]
async fn truncate_and_purge_remove_what_they_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut log = LogStore::new(Store::open(dir.path()).expect("open"));
    append(&mut log, (1..=10).map(|i| entry(1, i)).collect()).await;
    log.truncate(log_id(1, 8)).await.expect("truncate");
    log.purge(log_id(1, 3)).await.expect("purge");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 3)));
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));
    let left: Vec<u64> = log
        .try_get_log_entries(0..100)
        .await
        .expect("read")
        .iter()
        .map(|e| e.log_id.index)
        .collect();
    assert_eq!(left, [4, 5, 6, 7]);
    // Everything purged: the last log id is the purged one.
    log.purge(log_id(1, 7)).await.expect("purge all");
    let state = log.get_log_state().await.expect("state");
    assert_eq!(state.last_log_id, Some(log_id(1, 7)));
}

#[tokio::test]
async fn a_snapshot_restores_the_machine_after_reopening() {
    let dir = tempfile::tempdir().expect("tempdir");
    let expected = {
        let store = Store::open(dir.path()).expect("open");
        let mut sm = StateStore::restore(store, Shared::new())
            .await
            .expect("restore");
        let replies = sm.apply((1..=3).map(|i| entry(1, i))).await.expect("apply");
        assert_eq!(replies.len(), 3);
        let snapshot = sm.build_snapshot().await.expect("snapshot");
        assert_eq!(snapshot.meta.last_log_id, Some(log_id(1, 3)));
        sm.shared.state().machine.clone()
    };
    let shared = Shared::new();
    let store = Store::open(dir.path()).expect("reopen");
    let mut sm = StateStore::restore(store, shared.clone())
        .await
        .expect("restore");
    let (last, _) = sm.applied_state().await.expect("applied");
    assert_eq!(last, Some(log_id(1, 3)));
    assert_eq!(shared.state().machine, expected);
    assert_eq!(shared.state().machine.sessions().len(), 3);
    let current = sm.get_current_snapshot().await.expect("read");
    assert!(current.is_some());
}

#[tokio::test]
async fn a_new_store_is_pending_until_admitted_and_an_old_one_is_admitted() {
    let dir = tempfile::tempdir().expect("tempdir");
    let fresh = dir.path().join("fresh");
    {
        let store = Store::open(&fresh).expect("open");
        assert!(store.is_empty().expect("read"));
        assert_eq!(store.standing(), Ok(Standing::Pending));
    }
    {
        let store = Store::open(&fresh).expect("reopen");
        // Still pending after a restart, whatever it holds by then.
        LogStore::new(store.clone())
            .save_vote(&Vote::new(2, 1))
            .await
            .expect("vote");
        assert!(!store.is_empty().expect("read"));
        assert_eq!(store.standing(), Ok(Standing::Pending));
        store.set_standing(Standing::Admitted).expect("admitted");
    }
    let store = Store::open(&fresh).expect("reopen");
    assert_eq!(store.standing(), Ok(Standing::Admitted));

    // A store written before standings were recorded holds a vote: it is
    // a voter in good standing.
    let old = dir.path().join("old");
    let store = Store::open(&old).expect("open");
    LogStore::new(store.clone())
        .save_vote(&Vote::new(3, 1))
        .await
        .expect("vote");
    assert_eq!(store.standing(), Ok(Standing::Admitted));
}
