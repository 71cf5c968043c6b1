//! The client API of [`Consensus`]: the node's session, locks, elections
//! and names.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use quicmesh_wire::NodeName;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, warn};

use super::{Answer, Consensus, Inner, Request};
use crate::ConsensusError;
use crate::machine::{Grant, Key, Machine, Op, Reply, SessionId};

/// The leader of an election and its term.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Leader {
    /// The leading node.
    pub node: NodeName,
    /// Its term: the log index of the entry that made it leader.
    pub term: u64,
}

/// Who registered a name, and the service it stands for there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct NameOwner {
    /// The owning node.
    pub node: NodeName,
    /// The service the name stands for on that node.
    pub service: String,
}

impl NameOwner {
    /// `name`'s owner and service in `machine`.
    pub(super) fn of(machine: &Machine, name: &str) -> Option<Self> {
        machine.name(name).map(|(grant, service)| Self {
            node: grant.owner.clone(),
            service: service.to_owned(),
        })
    }
}

/// A lock or leadership held by this node's session. Give it up with
/// [`LockGuard::release`]; dropping it releases it in the background.
/// It is lost if the session expires ([`LockGuard::lost`]).
#[derive(Debug)]
#[must_use = "a lock is released when its guard is dropped"]
pub struct LockGuard {
    consensus: Consensus,
    key: Key,
    token: u64,
    session: SessionId,
    released: bool,
    /// This node's turn at the key, given back once released.
    turn: Option<Turn>,
}

/// A take in progress that may have queued this node's session: dropped
/// while it still has the turn (the take failed with its outcome open, or
/// its caller gave up), the node leaves the queue in the background and
/// gives back a grant made meanwhile, before its next task's turn.
#[derive(Debug)]
struct Waiting {
    consensus: Consensus,
    key: Key,
    session: SessionId,
    turn: Option<Turn>,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if let Some(turn) = self.turn.take() {
            let key = self.key.clone();
            self.consensus
                .give_back(key, self.session, None, true, Some(turn));
        }
    }
}

/// The keys some task of this node holds or waits for, each with the
/// mutex that gives the tasks their turns (and passes on what a releasing
/// task left for the next).
#[derive(Debug, Default)]
pub(super) struct Turns(Mutex<BTreeMap<Key, Arc<tokio::sync::Mutex<Option<Handoff>>>>>);

/// What a task that released a key left for the next task of the node,
/// its session put back in line in the releasing entry
/// ([`Op::Requeue`]).
#[derive(Debug, Clone)]
struct Handoff {
    session: SessionId,
    /// When the release was asked: only a task already waiting then may
    /// take what it left (its take began before the grant was made).
    asked: Instant,
    state: Handed,
}

#[derive(Debug, Clone)]
enum Handed {
    /// Granted again, with this token: no one else waited.
    Granted(u64),
    /// In line behind `owner`'s grant `after`.
    Queued { owner: NodeName, after: u64 },
}

/// A task's turn at a key; the next task's when dropped.
#[derive(Debug)]
struct Turn {
    key: Key,
    held: Option<tokio::sync::OwnedMutexGuard<Option<Handoff>>>,
    inner: Weak<Inner>,
}

impl Turns {
    /// Waits until no other task of this node holds `key`, or `deadline`.
    async fn take(inner: &Arc<Inner>, key: &Key, deadline: Instant) -> Option<Turn> {
        let mutex = crate::locked(&inner.turns.0)
            .entry(key.clone())
            .or_default()
            .clone();
        let held = tokio::time::timeout_at(deadline, mutex.lock_owned()).await;
        let turn = Turn {
            key: key.clone(),
            held: held.ok(),
            inner: Arc::downgrade(inner),
        };
        // Dropped at once if the wait timed out, forgetting the key if no
        // one else wants it.
        turn.held.is_some().then_some(turn)
    }
}

impl Turn {
    /// Whether another task of the node waits for this turn.
    fn waited_for(&self) -> bool {
        // The map, this turn and each waiter hold the mutex.
        self.held
            .as_ref()
            .is_some_and(|g| Arc::strong_count(tokio::sync::OwnedMutexGuard::mutex(g)) > 2)
    }

    /// Leaves `handoff` for the task that has the turn next.
    fn hand_off(&mut self, handoff: Handoff) {
        if let Some(held) = &mut self.held {
            **held = Some(handoff);
        }
    }

    /// What the task that had the turn before left.
    fn handoff(&mut self) -> Option<Handoff> {
        self.held.as_mut().and_then(|held| held.take())
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.held.take());
        let Some(inner) = self.inner.upgrade() else {
            return;
        };
        let mut turns = crate::locked(&inner.turns.0);
        // Only the map holds it: no task holds or waits for the key.
        let Some(mutex) = turns
            .get(&self.key)
            .filter(|m| Arc::strong_count(m) == 1)
            .cloned()
        else {
            return;
        };
        // A handoff no task took (its waiters gave up) goes back to the
        // group, holding the turn meanwhile.
        let left = mutex
            .try_lock_owned()
            .ok()
            .and_then(|mut held| Some((held.take()?, held)));
        let Some((handoff, held)) = left else {
            turns.remove(&self.key);
            return;
        };
        drop(turns);
        let turn = Self {
            key: self.key.clone(),
            held: Some(held),
            inner: self.inner.clone(),
        };
        let token = match handoff.state {
            Handed::Granted(token) => Some(token),
            Handed::Queued { .. } => None,
        };
        let consensus = Consensus { inner };
        consensus.give_back(self.key.clone(), handoff.session, token, true, Some(turn));
    }
}

impl LockGuard {
    /// The fencing token (or the term, for a leadership): the log index
    /// of the granting entry. Every later grant has a larger one.
    pub fn token(&self) -> u64 {
        self.token
    }

    /// The lock's resource or the election's name.
    pub fn name(&self) -> &str {
        let (Key::Lock(k) | Key::Leader(k) | Key::Name(k)) = &self.key;
        k
    }

    /// Whether the session that holds it is still this node's, as this
    /// node knows (see [`LockGuard::lost`]).
    pub fn is_held(&self) -> bool {
        *self.consensus.inner.session.borrow() == Some(self.session)
    }

    /// Resolves once the session that held this ended: closed, refused
    /// by the group as expired, or not renewed for a whole TTL by this
    /// node's clock (cut off or paused; the group may then give the grant
    /// to another node, so stop using it).
    pub async fn lost(&self) {
        let mut session = self.consensus.inner.session.subscribe();
        // An error means the consensus is gone, and the grant with it.
        let _ = session.wait_for(|s| *s != Some(self.session)).await;
    }

    /// Gives the lock or leadership up, within `request_timeout`. If no
    /// quorum answers in time (`NoQuorum`), the node goes on trying in
    /// the background while its session lives, and its other tasks get
    /// their turn at the key only once the release is committed.
    ///
    /// If another task of this node waits for the key, the same entry
    /// puts the node back in the key's queue for it (the lock goes to the
    /// next node in line first, or back to this node with a new token if
    /// none waits): the waiting task needs no commit of its own.
    pub async fn release(mut self) -> Result<(), ConsensusError> {
        self.released = true;
        let asked = Instant::now();
        let deadline = asked + self.consensus.inner.config.request_timeout;
        let requeue = self.turn.as_ref().is_some_and(Turn::waited_for);
        let given_up = if requeue {
            let requeued = self
                .consensus
                .requeue(&self.key, self.session, self.token, deadline)
                .await;
            requeued.map(|state| {
                if let (Some(turn), Some(state)) = (&mut self.turn, state) {
                    let session = self.session;
                    turn.hand_off(Handoff {
                        session,
                        asked,
                        state,
                    });
                }
            })
        } else {
            self.consensus
                .give_up(&self.key, self.session, self.token, deadline)
                .await
        };
        if let Err(ConsensusError::NoQuorum { .. }) = given_up {
            let key = self.key.clone();
            let turn = self.turn.take();
            // A requeue may have put the session back in line.
            self.consensus
                .give_back(key, self.session, Some(self.token), requeue, turn);
        }
        given_up
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        // The node's next task gets its turn once the release is committed.
        let turn = self.turn.take();
        self.consensus.give_back(
            self.key.clone(),
            self.session,
            Some(self.token),
            false,
            turn,
        );
    }
}

impl Consensus {
    /// Takes the cluster lock of `resource`, waiting up to `timeout` while
    /// another node holds it. Fails with `NoQuorum` if no leader with a
    /// quorum commits it in time (this node is cut off, or most voters are
    /// down), `Timeout` if it stayed held by another node.
    pub async fn lock(
        &self,
        resource: &str,
        timeout: Duration,
    ) -> Result<LockGuard, ConsensusError> {
        self.take(Key::Lock(resource.to_owned()), timeout).await
    }

    /// Becomes the leader of `election`, waiting up to `timeout` while
    /// another node leads it; the guard's token is the term.
    pub async fn campaign(
        &self,
        election: &str,
        timeout: Duration,
    ) -> Result<LockGuard, ConsensusError> {
        self.take(Key::Leader(election.to_owned()), timeout).await
    }

    /// The leader of `election`, read linearizably (through the Raft
    /// leader, confirming its leadership with a quorum).
    pub async fn leader(&self, election: &str) -> Result<Option<Leader>, ConsensusError> {
        let deadline = self.deadline(None);
        let key = Key::Leader(election.to_owned());
        Ok(self.holder(key, deadline).await?.map(|g| Leader {
            node: g.owner,
            term: g.token,
        }))
    }

    /// The leader of `election` in this voter's own applied state: no
    /// round trip, but possibly behind the group. `NotVoter` on a client.
    pub fn leader_stale(&self, election: &str) -> Result<Option<Leader>, ConsensusError> {
        let key = Key::Leader(election.to_owned());
        Ok(self.holder_stale(&key)?.map(|g| Leader {
            node: g.owner,
            term: g.token,
        }))
    }

    /// Waits, at most `timeout`, until `election` is no longer led in
    /// `term` (led by another term, or by no one), then reads its leader
    /// as [`Consensus::leader`] does on a client and as
    /// [`Consensus::leader_stale`] does on a voter (its own applied state,
    /// which has just moved on). With no leader now, `term` 0 returns at
    /// once. `Ok` with the leader in `term` again means the wait timed out.
    pub async fn leader_change(
        &self,
        election: &str,
        term: u64,
        timeout: Duration,
    ) -> Result<Option<Leader>, ConsensusError> {
        let key = Key::Leader(election.to_owned());
        self.wait_change(key, term, self.deadline(Some(timeout)))
            .await?;
        match self.inner.voter {
            Some(_) => self.leader_stale(election),
            None => self.leader(election).await,
        }
    }

    /// Registers `name` for this node's session, within `request_timeout`,
    /// standing for the service of the same name (as
    /// [`Consensus::register_service`] with `service` equal to `name`).
    /// `Taken` if another node has it; registering it again is fine.
    pub async fn register(&self, name: &str) -> Result<(), ConsensusError> {
        let name = name.to_owned();
        self.name_op(|session| Op::Register { session, name }, Reply::Registered)
            .await
    }

    /// Registers `name` for this node's session, within `request_timeout`,
    /// standing for `service` on this node. `Taken` if another node has
    /// it; registering it again is fine, and points it at `service` now.
    /// `InvalidService` if `service` is empty or longer than 255 bytes.
    pub async fn register_service(&self, name: &str, service: &str) -> Result<(), ConsensusError> {
        if service == name {
            // The entry every version of the group reads.
            return self.register(name).await;
        }
        let (name, service) = (name.to_owned(), service.to_owned());
        let op = |session| Op::RegisterService {
            session,
            name,
            service,
        };
        self.name_op(op, Reply::Registered).await
    }

    /// Unregisters `name`; `NotHeld` if it is not this node's.
    pub async fn unregister(&self, name: &str) -> Result<(), ConsensusError> {
        let name = name.to_owned();
        self.name_op(|session| Op::Unregister { session, name }, Reply::Released)
            .await
    }

    /// Commits the operation `op` makes for this node's session, expecting
    /// `hoped` as the reply.
    async fn name_op(
        &self,
        op: impl FnOnce(SessionId) -> Op,
        hoped: Reply,
    ) -> Result<(), ConsensusError> {
        let deadline = self.deadline(None);
        let session = self.session(deadline).await?;
        match self.write(op(session), deadline).await? {
            r if r == hoped => Ok(()),
            other => Err(self.refusal(session, other)),
        }
    }

    /// The node that registered `name` and the service it stands for,
    /// read linearizably.
    pub async fn whereis(&self, name: &str) -> Result<Option<NameOwner>, ConsensusError> {
        let deadline = self.deadline(None);
        self.name_owner(name, deadline).await
    }

    /// The node that registered `name` and the service it stands for, in
    /// this voter's own applied state: no round trip, but possibly behind
    /// the group. `NotVoter` on a client.
    pub fn whereis_stale(&self, name: &str) -> Result<Option<NameOwner>, ConsensusError> {
        self.name_owner_stale(name)
    }

    /// This node's session, if one is open (as far as it knows).
    pub fn session_id(&self) -> Option<SessionId> {
        *self.inner.session.borrow()
    }

    fn deadline(&self, timeout: Option<Duration>) -> Instant {
        Instant::now() + timeout.unwrap_or(self.inner.config.request_timeout)
    }

    /// Takes `key`: granted at once if it is free, or else this node's
    /// session waits in the key's queue and is granted it, with no commit
    /// of its own, in the entry that releases it (a contended hand-over is
    /// one commit). At the deadline it leaves the queue; a grant that came
    /// first is returned rather than given up.
    async fn take(&self, key: Key, timeout: Duration) -> Result<LockGuard, ConsensusError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let Some(mut turn) = Turns::take(&self.inner, &key, deadline).await else {
            return Err(ConsensusError::Timeout {
                owner: self.inner.me.clone(),
                waited: started.elapsed(),
            });
        };
        let handoff = turn.handoff();
        let session = self.session(deadline).await?;
        // Until a grant is known or the queue surely left: if this task
        // stops (an error, or the caller drops the future), the node leaves
        // the queue in the background and gives back a grant made meanwhile.
        let mut waiting = Waiting {
            consensus: self.clone(),
            key: key.clone(),
            session,
            turn: Some(turn),
        };
        let granted = |waiting: &mut Waiting, token| LockGuard {
            consensus: self.clone(),
            key: key.clone(),
            token,
            session,
            released: false,
            turn: waiting.turn.take(),
        };
        // What the task before left: the session put back in line (or
        // granted again) for this one.
        let mut queued = None;
        if let Some(h) = handoff.filter(|h| h.session == session) {
            match h.state {
                Handed::Granted(token) if started <= h.asked => {
                    return Ok(granted(&mut waiting, token));
                }
                Handed::Queued { owner, after } if started <= h.asked => {
                    queued = Some((owner, after));
                }
                // Left for a task that gave up: this one began after the
                // grant, so it gives that back and asks afresh.
                Handed::Granted(token) => self.clear(&key, session, Some(token), deadline).await?,
                Handed::Queued { .. } => self.clear(&key, session, None, deadline).await?,
            }
        }
        let owner = loop {
            let (owner, after) = match queued.take() {
                Some(q) => q,
                None => {
                    let op = Op::Enqueue {
                        session,
                        key: key.clone(),
                    };
                    let written = match self.write(op, deadline).await {
                        Ok(reply) => reply,
                        Err(e) => {
                            // The attempt may still be committed: the node
                            // leaves the queue (or gives back the grant)
                            // when `waiting` drops. Any other error
                            // committed nothing.
                            if !matches!(e, ConsensusError::NoQuorum { .. }) {
                                waiting.turn.take();
                            }
                            return Err(e);
                        }
                    };
                    match written {
                        Reply::Granted { token } => return Ok(granted(&mut waiting, token)),
                        Reply::Queued { owner, token } => (owner, token),
                        Reply::QueueFull { owner, token } => {
                            // Too many waiters: wait for a change, ask again.
                            self.wait_change(key.clone(), token, deadline).await?;
                            if Instant::now() < deadline && self.session_id() == Some(session) {
                                continue;
                            }
                            break owner;
                        }
                        other => {
                            // Refused: not queued.
                            waiting.turn.take();
                            return Err(self.refusal(session, other));
                        }
                    }
                }
            };
            if let Some(token) = self.wait_grant(&key, session, after, deadline).await {
                return Ok(granted(&mut waiting, token));
            }
            if Instant::now() >= deadline || self.session_id() != Some(session) {
                break owner;
            }
        };
        // Out of time (or the session ended): leave the queue.
        let until = Instant::now() + self.inner.config.request_timeout;
        let op = Op::Dequeue {
            session,
            key: key.clone(),
        };
        let left = self.write(op, until).await?;
        if let Reply::Granted { token } = left {
            // Granted before it left: the grant is the caller's.
            return Ok(granted(&mut waiting, token));
        }
        // Out of the queue (or refused, so never in it).
        waiting.turn.take();
        match left {
            Reply::Dequeued | Reply::NotHeld => Err(ConsensusError::Timeout {
                owner,
                waited: started.elapsed(),
            }),
            other => Err(self.refusal(session, other)),
        }
    }

    /// Waits until `session` is granted `key` with a token above `after`
    /// (the holder's when it queued), until `deadline` or the end of the
    /// session: on a voter, in its own applied state; on a client, as the
    /// leader tells. `None` if not granted by then.
    async fn wait_grant(
        &self,
        key: &Key,
        session: SessionId,
        after: u64,
        deadline: Instant,
    ) -> Option<u64> {
        let mine = |g: &Grant| (g.session == session && g.token > after).then_some(g.token);
        let mut ended = self.inner.session.subscribe();
        let ended = ended.wait_for(|s| *s != Some(session));
        tokio::pin!(ended);
        if let Some(v) = &self.inner.voter {
            let mut applied = v.shared.watch();
            loop {
                let seen = v.shared.state().machine.holder(key).and_then(mine);
                if seen.is_some() {
                    return seen;
                }
                tokio::select! {
                    changed = tokio::time::timeout_at(deadline, applied.changed()) => {
                        if !matches!(changed, Ok(Ok(()))) {
                            return None;
                        }
                    }
                    _ = &mut ended => return None,
                }
            }
        }
        let mut token = after;
        loop {
            let wait_ms = super::millis(deadline.saturating_duration_since(Instant::now()));
            let request = Request::WaitChange {
                key: key.clone(),
                token,
                wait_ms,
            };
            let answer = tokio::select! {
                answer = self.submit(request, deadline) => answer,
                _ = &mut ended => return None,
            };
            match answer {
                Ok(Answer::Holder(Some(g))) => {
                    if let Some(t) = mine(&g) {
                        return Some(t);
                    }
                    token = g.token;
                }
                // Free, yet not granted: the queue was left (the session
                // ended); or no answer in time.
                Ok(_) | Err(_) => return None,
            }
            if Instant::now() >= deadline {
                return None;
            }
        }
    }

    /// Gives up `session`'s grant of `key` with `token` in the background,
    /// then, if `leave`, takes the session out of the key's queue (giving
    /// up the grant that returns, if the key was granted to it meanwhile);
    /// retrying while no quorum answers and the session lives (its grants
    /// end with it), holding the node's `turn` at the key meanwhile so its
    /// next task starts from a clean slate. A take whose outcome is
    /// unknown has no `token` and leaves.
    fn give_back(
        &self,
        key: Key,
        session: SessionId,
        token: Option<u64>,
        leave: bool,
        turn: Option<Turn>,
    ) {
        let tasks = self.inner.rpc.mesh().tasks().clone();
        if tasks.is_cancelled() {
            return;
        }
        let this = self.clone();
        tasks.spawn(async move {
            let _turn = turn;
            let pause = this.inner.config.session_ttl / 6;
            let (mut token, mut leave) = (token, leave);
            while *this.inner.session.borrow() == Some(session) {
                let deadline = Instant::now() + this.inner.config.request_timeout;
                let step = match (token, leave) {
                    (Some(t), _) => match this.give_up(&key, session, t, deadline).await {
                        Ok(()) | Err(ConsensusError::NotHeld) => {
                            token = None;
                            Ok(())
                        }
                        Err(e) => Err(e),
                    },
                    (None, true) => this.leave(&key, session, deadline).await.map(|t| {
                        (token, leave) = (t, false);
                    }),
                    (None, false) => return,
                };
                match step {
                    Err(ConsensusError::NoQuorum { .. }) => tokio::time::sleep(pause).await,
                    Ok(()) => {}
                    Err(e) => {
                        debug!("a grant not given back: {e}");
                        return;
                    }
                }
            }
        });
    }

    /// Gives up `session`'s grant of `key` with `token` (if any), or else
    /// takes it out of the key's queue, giving up the grant that returns.
    async fn clear(
        &self,
        key: &Key,
        session: SessionId,
        token: Option<u64>,
        deadline: Instant,
    ) -> Result<(), ConsensusError> {
        let token = match token {
            Some(t) => Some(t),
            None => self.leave(key, session, deadline).await?,
        };
        match token {
            Some(t) => match self.give_up(key, session, t, deadline).await {
                Ok(()) | Err(ConsensusError::NotHeld) => Ok(()),
                Err(e) => Err(e),
            },
            None => Ok(()),
        }
    }

    /// Gives up `session`'s grant of `key` with `token` and puts the
    /// session back in line, in one entry: the grant or place in line it
    /// has then (none if the queue was full).
    async fn requeue(
        &self,
        key: &Key,
        session: SessionId,
        token: u64,
        deadline: Instant,
    ) -> Result<Option<Handed>, ConsensusError> {
        let op = Op::Requeue {
            session,
            key: key.clone(),
            token,
        };
        match self.write(op, deadline).await? {
            Reply::Granted { token } => Ok(Some(Handed::Granted(token))),
            Reply::Queued { owner, token } => Ok(Some(Handed::Queued {
                owner,
                after: token,
            })),
            Reply::QueueFull { .. } => Ok(None),
            other => Err(self.refusal(session, other)),
        }
    }

    /// Takes `session` out of `key`'s queue: the token of its grant of
    /// `key` if it was granted meanwhile, `None` if it holds nothing.
    async fn leave(
        &self,
        key: &Key,
        session: SessionId,
        deadline: Instant,
    ) -> Result<Option<u64>, ConsensusError> {
        let op = Op::Dequeue {
            session,
            key: key.clone(),
        };
        match self.write(op, deadline).await? {
            Reply::Granted { token } => Ok(Some(token)),
            Reply::Dequeued | Reply::NotHeld => Ok(None),
            other => Err(self.refusal(session, other)),
        }
    }

    async fn give_up(
        &self,
        key: &Key,
        session: SessionId,
        token: u64,
        deadline: Instant,
    ) -> Result<(), ConsensusError> {
        let op = match key {
            Key::Lock(resource) => Op::Release {
                session,
                resource: resource.clone(),
                token,
            },
            Key::Leader(election) => Op::Resign {
                session,
                election: election.clone(),
                term: token,
            },
            Key::Name(name) => Op::Unregister {
                session,
                name: name.clone(),
            },
        };
        match self.write(op, deadline).await? {
            Reply::Released => Ok(()),
            other => Err(self.refusal(session, other)),
        }
    }

    /// This node's session, opening one if there is none.
    async fn session(&self, deadline: Instant) -> Result<SessionId, ConsensusError> {
        let _opening = self.inner.opening.lock().await;
        if let Some(s) = *self.inner.session.borrow() {
            return Ok(s);
        }
        let ttl_ms = super::millis(self.inner.config.session_ttl);
        let started = Instant::now();
        match self.write(Op::OpenSession { ttl_ms }, deadline).await? {
            Reply::Opened { session } => {
                self.renewed(session, started);
                self.inner.session.send_replace(Some(session));
                debug!(session, "session opened");
                Ok(session)
            }
            other => Err(self.refusal(0, other)),
        }
    }

    /// The error for a reply that is not the one hoped for; a reply saying
    /// the session is gone ends it here too.
    fn refusal(&self, session: SessionId, reply: Reply) -> ConsensusError {
        match reply {
            Reply::NoSession => {
                lose(&self.inner, session);
                ConsensusError::SessionExpired
            }
            Reply::NotHeld => ConsensusError::NotHeld,
            Reply::Taken { owner } => ConsensusError::Taken { owner },
            Reply::Invalid => ConsensusError::Invalid,
            Reply::InvalidService => ConsensusError::InvalidService,
            Reply::Limit => ConsensusError::Limit,
            other => ConsensusError::Refused {
                peer: self
                    .current_leader()
                    .unwrap_or_else(|| self.inner.me.clone()),
                detail: format!("unexpected reply {other:?}"),
            },
        }
    }
}

/// Forgets `session` if it is still this node's; `true` if it was.
pub(super) fn forget(inner: &Inner, session: SessionId) -> bool {
    inner.session.send_if_modified(|s| {
        let mine = *s == Some(session);
        if mine {
            *s = None;
        }
        mine
    })
}

/// Forgets `session`, which the group no longer has: what it held is gone.
fn lose(inner: &Inner, session: SessionId) {
    if forget(inner, session) {
        warn!(
            session,
            "session ended; its locks, leaderships and names are released"
        );
    }
}

/// Renews this node's session every third of its TTL while the node's
/// consensus runs; a renewal refused because the session is gone ends it
/// here too (guards report the loss).
///
/// The node also keeps the lease by its own clock: once a whole TTL has
/// passed since the start of the last request the group acknowledged (the
/// opening or a renewal), it counts the session as lost, since the leader,
/// whose count started no earlier, may expire it any moment. So a node
/// cut off learns of its loss without hearing from the group.
pub(super) async fn keep_alive(inner: Weak<Inner>) {
    loop {
        let Some(strong) = inner.upgrade() else {
            return;
        };
        let ttl = strong.config.session_ttl;
        let period = ttl / 3;
        let (cancel, tasks) = (strong.cancel.clone(), strong.rpc.mesh().tasks().clone());
        let session = *strong.session.borrow();
        if let Some(session) = session {
            let this = Consensus {
                inner: Arc::clone(&strong),
            };
            let started = Instant::now();
            match this
                .write(Op::KeepAlive { session }, started + period)
                .await
            {
                Ok(Reply::Renewed) => this.renewed(session, started),
                Ok(Reply::NoSession | Reply::NotOwner) => lose(&strong, session),
                Ok(other) => warn!(session, "unexpected keep-alive reply {other:?}"),
                Err(e) => debug!(session, "keep-alive failed: {e}"),
            }
            let since = this.lease_start(session);
            if since.is_some_and(|at| at.elapsed() >= ttl) {
                lose(&strong, session);
            }
        }
        drop(strong);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tasks.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}

impl Consensus {
    /// Notes that the group acknowledged a request for `session` sent at
    /// `at`: the lease runs from then.
    fn renewed(&self, session: SessionId, at: Instant) {
        *crate::locked(&self.inner.lease) = Some((session, at));
    }

    /// When `session`'s lease began, by this node's clock.
    fn lease_start(&self, session: SessionId) -> Option<Instant> {
        match *crate::locked(&self.inner.lease) {
            Some((s, at)) if s == session => Some(at),
            _ => None,
        }
    }
}
