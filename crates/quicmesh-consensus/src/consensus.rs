//! The [`Consensus`] handle: starting a voter or a client, sending each
//! request to the leader, and the client service that answers them.
//!
//! ```text
//! any node                          a voter (quicmesh.raft.client)
//!   submit(request, deadline)
//!     leader is me? ── serve() locally
//!     else ── call leader ──────▶   serve(): client_write / ensure_linearizable
//!     ◀── answer | NotLeader{hint}  (NotLeader: try the hint, or pause and ask again)
//! ```

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::error::{CheckIsLeaderError, ClientWriteError, InitializeError, RaftError};
use openraft::{ServerState, SnapshotPolicy};
use quicmesh_rpc::{CallContext, Rpc};
use quicmesh_wire::NodeName;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, info, info_span, warn};

use crate::machine::{Command, Grant, Key, Op, Reply, SessionId};
use crate::network::{self, Gate, Network};
use crate::storage::{LogStore, Shared, Standing, StateStore, Store, WeakStore};
use crate::{
    ConsensusConfig, ConsensusError, Member, NodeId, Raft, StartError, Voters, locked, node_id,
};

mod client;
mod expiry;
mod members;

pub use client::{Leader, LockGuard, NameOwner};
use members::ChangeRefused;
pub use members::Membership;

/// The client service of the voters.
const CLIENT: &str = "quicmesh.raft.client";
/// Longest single attempt of a request on one node: a voter that does not
/// answer within it is skipped for the next.
const ATTEMPT: Duration = Duration::from_secs(2);

/// What a node asks a voter. On the wire (postcard): append variants
/// only, never reorder or retype.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Request {
    /// Commit `op` on the caller's behalf.
    Write(Op),
    /// Who holds `key`, read linearizably.
    Holder(Key),
    /// Wait up to `wait_ms` until `key` is no longer held with `token`,
    /// then tell who holds it (by the voter's applied state).
    WaitChange {
        /// The key.
        key: Key,
        /// The grant waited out.
        token: u64,
        /// The longest wait, in milliseconds.
        wait_ms: u64,
    },
    /// Whether the member's store is empty (asked by the founder of the
    /// group before it founds it).
    Probe,
    /// Lets the member vote: sent by the founder of the group, or by a
    /// leader adding the node as a voter.
    Admit,
    /// Make `node` a voter (the leader adds it as a learner, waits up to
    /// `wait_ms` for it to catch up, then makes it a voter).
    AddVoter {
        /// The node to add.
        node: NodeName,
        /// The longest wait, in milliseconds.
        wait_ms: u64,
    },
    /// Remove `node` from the voters.
    RemoveVoter(NodeName),
    /// The committed membership, read linearizably.
    Membership,
    /// Who registered the name, and its service, read linearizably.
    Name(String),
}

impl Request {
    /// Whether one attempt may take the whole wait (a membership change
    /// waiting for a new voter), rather than [`ATTEMPT`].
    fn is_long(&self) -> bool {
        matches!(self, Self::AddVoter { .. } | Self::RemoveVoter(_))
    }
}

/// A voter's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Answer {
    /// The committed operation's reply.
    Reply(Reply),
    /// The holder of the key read.
    Holder(Option<Grant>),
    /// To [`Request::Probe`]: whether the member's store is empty.
    Store {
        /// No vote, log or snapshot.
        empty: bool,
    },
    /// To [`Request::Admit`].
    Admitted,
    /// The membership, after a change or as read.
    Membership(Membership),
    /// To [`Request::Name`]: the name's owner and service, if registered.
    Name(Option<NameOwner>),
}

/// Why a voter did not answer a request.
#[derive(Debug, Clone, Serialize, Deserialize)]
enum Redirect {
    /// It is not the leader; it names the leader if it knows one.
    NotLeader(Option<NodeName>),
    /// It is the leader but could not commit (or confirm its leadership)
    /// in time: no quorum answers it.
    NoQuorum,
    /// Its Raft member has stopped.
    Stopped(String),
    /// The caller may not ask this.
    Refused(String),
    /// A change of the voters was refused.
    Change(ChangeRefused),
}

/// This node's Raft member.
struct Voter {
    raft: Raft,
    id: NodeId,
    shared: Arc<Shared>,
    /// The store, for its standing (held open by the Raft member only).
    store: WeakStore,
    gate: Arc<Gate>,
}

impl std::fmt::Debug for Voter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Voter")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// A [`Consensus`] that may have stopped ([`Consensus::downgrade`]).
#[derive(Debug, Clone)]
pub struct WeakConsensus(std::sync::Weak<Inner>);

impl WeakConsensus {
    /// The consensus handle, while its node runs.
    pub fn upgrade(&self) -> Option<Consensus> {
        self.0.upgrade().map(|inner| Consensus { inner })
    }
}

/// A node's view of its Raft group at one moment ([`Consensus::status`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConsensusStatus {
    /// Whether the node runs a Raft member ([`Consensus::is_voter`]).
    pub voter: bool,
    /// `leader`, `follower`, `candidate`, `learner`, `stopped`,
    /// `joining` for a member whose store is new and not admitted yet (it
    /// votes for nobody until the founding of the group or `add_voter`
    /// admits it), or `client` for a node that runs no Raft member.
    pub role: &'static str,
    /// The leader as the node knows it.
    pub leader: Option<NodeName>,
    /// A voter's current Raft term.
    pub term: Option<u64>,
    /// The index of a voter's last log entry.
    pub last_log_index: Option<u64>,
    /// The index of the last entry a voter's state machine applied.
    pub last_applied: Option<u64>,
    /// The voters of the group: a member's applied membership (the last
    /// committed one it has applied); on a client, the last membership it
    /// read, or else the configured voters.
    pub voters: Vec<NodeName>,
}

/// Consensus mode on one node: a Raft member (if the node is one of
/// [`ConsensusConfig::voters`], or [`ConsensusConfig::join`] is set) or a
/// client of the voters, with the lock, election and registry API, and
/// the changes of the voters. Cheap to clone; every clone is the same.
#[derive(Debug, Clone)]
pub struct Consensus {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    rpc: Rpc,
    me: NodeName,
    config: ConsensusConfig,
    voters: Arc<Voters>,
    voter: Option<Voter>,
    /// This node's session; `None` until first needed, and after it ended.
    session: watch::Sender<Option<SessionId>>,
    /// Serialises opening the session.
    opening: tokio::sync::Mutex<()>,
    /// The session whose lease this node counts, and when it began: the
    /// start of the last request for it that the group acknowledged.
    lease: Mutex<Option<(SessionId, Instant)>>,
    /// The voter that last answered as leader.
    leader_hint: Mutex<Option<NodeName>>,
    /// One turn per key among this node's own callers: the session is the
    /// node's, so the group would grant a lock or leadership it holds to
    /// every task of the node at once.
    turns: client::Turns,
    /// The voters of the last membership a client read.
    known_voters: Mutex<Vec<NodeName>>,
    /// Held by the leader while it changes the voters: one change at a
    /// time.
    changing: tokio::sync::Mutex<()>,
    /// Stops this node's consensus tasks.
    cancel: CancellationToken,
}

impl Consensus {
    /// Starts consensus mode on `rpc`'s node with `config`: opens the
    /// store and starts a Raft member if the node is a configured voter
    /// or [`ConsensusConfig::join`] is set, and registers the
    /// `quicmesh.raft.*` services. Call before the mesh starts serving
    /// streams. The node's session is opened on first use.
    ///
    /// A member whose store is new waits, voting for nobody, until it is
    /// admitted: the voter whose name sorts first founds the group once
    /// every configured voter answers with an empty store (and never if
    /// one has a log: its own store was lost, not new), admitting them
    /// all; any other new store is admitted by [`Consensus::add_voter`].
    pub async fn start(rpc: &Rpc, config: ConsensusConfig) -> Result<Self, StartError> {
        config.validate()?;
        let voters = Arc::new(Voters::new(&config.voters)?);
        let me = rpc.mesh().name().clone();
        let voter = if voters.id(&me).is_some() || config.join {
            Some(start_voter(rpc, &config, &voters, node_id(&me), &me).await?)
        } else {
            None
        };
        let this = Self {
            inner: Arc::new(Inner {
                rpc: rpc.clone(),
                me,
                config,
                voters,
                voter,
                session: watch::channel(None).0,
                opening: tokio::sync::Mutex::new(()),
                lease: Mutex::new(None),
                leader_hint: Mutex::new(None),
                turns: client::Turns::default(),
                known_voters: Mutex::new(Vec::new()),
                changing: tokio::sync::Mutex::new(()),
                cancel: CancellationToken::new(),
            }),
        };
        if this.inner.voter.is_some() {
            this.serve_clients()?;
            let span = info_span!("consensus.expiry", node = %this.inner.me);
            let weak = Arc::downgrade(&this.inner);
            rpc.mesh().tasks().spawn(expiry::run(weak).instrument(span));
            if this.inner.voters.first() == Some(&this.inner.me) {
                let span = info_span!("consensus.found", node = %this.inner.me);
                let weak = Arc::downgrade(&this.inner);
                rpc.mesh()
                    .tasks()
                    .spawn(members::found(weak).instrument(span));
            }
        }
        let span = info_span!("consensus.keep_alive", node = %this.inner.me);
        rpc.mesh()
            .tasks()
            .spawn(client::keep_alive(Arc::downgrade(&this.inner)).instrument(span));
        Ok(this)
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.inner.me
    }

    /// A handle that does not keep consensus mode running (for services
    /// registered on the node's own RPC, which would otherwise keep it
    /// alive for ever).
    pub fn downgrade(&self) -> WeakConsensus {
        WeakConsensus(Arc::downgrade(&self.inner))
    }

    /// Whether this node runs a Raft member: it is one of the configured
    /// voters or was started to join ([`ConsensusConfig::join`]). Whether
    /// the group counts its vote is the membership's say
    /// ([`Consensus::membership`]).
    pub fn is_voter(&self) -> bool {
        self.inner.voter.is_some()
    }

    /// The leader this node knows of now, without asking anyone: a voter's
    /// own view, a client's last answer.
    pub fn current_leader(&self) -> Option<NodeName> {
        match &self.inner.voter {
            Some(v) => {
                let id = v.raft.metrics().borrow().current_leader;
                id.and_then(|id| name_of(&self.inner, id))
            }
            None => self.hint(),
        }
    }

    /// What this node's Raft member reports now (for a client: what it
    /// knows of the leader), without asking anyone.
    pub fn status(&self) -> ConsensusStatus {
        let mut status = ConsensusStatus {
            voter: self.is_voter(),
            role: "client",
            leader: self.current_leader(),
            term: None,
            last_log_index: None,
            last_applied: None,
            voters: self.voter_names(),
        };
        if let Some(v) = &self.inner.voter {
            let m = v.raft.metrics();
            let m = m.borrow();
            status.role = match m.state {
                ServerState::Shutdown => "stopped",
                _ if !v.gate.admitted() => "joining",
                ServerState::Leader => "leader",
                ServerState::Candidate => "candidate",
                ServerState::Follower => "follower",
                ServerState::Learner => "learner",
            };
            status.term = Some(m.current_term);
            status.last_log_index = m.last_log_index;
            status.last_applied = m.last_applied.map(|id| id.index);
        }
        status
    }

    /// The settings in force.
    pub fn config(&self) -> &ConsensusConfig {
        &self.inner.config
    }

    /// Closes this node's session (releasing its locks, leaderships and
    /// names, if a quorum answers within `request_timeout`), then stops
    /// the Raft member and the services.
    pub async fn shutdown(&self) {
        if let Err(e) = self.close_session().await {
            warn!("could not close the session: {e}");
        }
        self.halt().await;
    }

    /// Closes this node's session, if it has one, within `request_timeout`:
    /// its locks, leaderships and names are released and its guards report
    /// the loss. The next operation opens a new session.
    pub async fn close_session(&self) -> Result<(), ConsensusError> {
        let session = *self.inner.session.borrow();
        let Some(session) = session else {
            return Ok(());
        };
        let deadline = Instant::now() + self.inner.config.request_timeout;
        let closed = self.write(Op::CloseSession { session }, deadline).await;
        client::forget(&self.inner, session);
        match closed? {
            Reply::Ended { .. } | Reply::NoSession => Ok(()),
            other => Err(ConsensusError::Refused {
                peer: self
                    .current_leader()
                    .unwrap_or_else(|| self.inner.me.clone()),
                detail: format!("unexpected reply {other:?}"),
            }),
        }
    }

    /// Stops the Raft member, the services and the keep-alives *without*
    /// closing the session, as a crash would leave things: the session
    /// expires after its TTL. For tests of expiry and failover.
    pub async fn halt(&self) {
        self.inner.cancel.cancel();
        self.inner.rpc.unregister(CLIENT);
        if let Some(v) = &self.inner.voter {
            network::unserve_raft(&self.inner.rpc);
            if let Err(e) = v.raft.shutdown().await {
                warn!("raft did not stop cleanly: {e}");
            }
        }
    }

    /// The voters as this node knows them: a member's applied membership,
    /// a client's last read, or else the configured voters.
    fn voter_names(&self) -> Vec<NodeName> {
        let known = match &self.inner.voter {
            Some(v) => members::applied(v).voters,
            None => locked(&self.inner.known_voters).clone(),
        };
        if known.is_empty() {
            self.inner.voters.iter().map(|(_, n)| n.clone()).collect()
        } else {
            known
        }
    }

    fn hint(&self) -> Option<NodeName> {
        locked(&self.inner.leader_hint).clone()
    }

    fn set_hint(&self, leader: Option<NodeName>) {
        *locked(&self.inner.leader_hint) = leader;
    }

    /// Commits `op` through the leader, waiting until `deadline`.
    pub(crate) async fn write(&self, op: Op, deadline: Instant) -> Result<Reply, ConsensusError> {
        match self.submit(Request::Write(op), deadline).await? {
            Answer::Reply(r) => Ok(r),
            _ => Err(self.confused()),
        }
    }

    /// Who holds `key`, read linearizably through the leader.
    pub(crate) async fn holder(
        &self,
        key: Key,
        deadline: Instant,
    ) -> Result<Option<Grant>, ConsensusError> {
        match self.submit(Request::Holder(key), deadline).await? {
            Answer::Holder(g) => Ok(g),
            _ => Err(self.confused()),
        }
    }

    /// Who registered `name`, and its service, read linearizably through
    /// the leader.
    pub(crate) async fn name_owner(
        &self,
        name: &str,
        deadline: Instant,
    ) -> Result<Option<NameOwner>, ConsensusError> {
        match self
            .submit(Request::Name(name.to_owned()), deadline)
            .await?
        {
            Answer::Name(owner) => Ok(owner),
            _ => Err(self.confused()),
        }
    }

    /// Who registered `name`, and its service, in this voter's applied
    /// state, which may lag the leader's.
    pub(crate) fn name_owner_stale(&self, name: &str) -> Result<Option<NameOwner>, ConsensusError> {
        let v = self.voter()?;
        Ok(NameOwner::of(&v.shared.state().machine, name))
    }

    /// Who holds `key` in this voter's applied state, which may lag the
    /// leader's.
    pub(crate) fn holder_stale(&self, key: &Key) -> Result<Option<Grant>, ConsensusError> {
        let v = self.voter()?;
        Ok(v.shared.state().machine.holder(key).cloned())
    }

    /// Waits until `key` is no longer held with `token` (or `deadline`).
    pub(crate) async fn wait_change(
        &self,
        key: Key,
        token: u64,
        deadline: Instant,
    ) -> Result<(), ConsensusError> {
        if let Some(v) = &self.inner.voter {
            wait_change_local(&v.shared, &key, token, deadline).await;
            return Ok(());
        }
        let wait_ms = millis(deadline.saturating_duration_since(Instant::now()));
        let request = Request::WaitChange {
            key,
            token,
            wait_ms,
        };
        self.submit(request, deadline).await.map(|_| ())
    }

    fn voter(&self) -> Result<&Voter, ConsensusError> {
        self.inner
            .voter
            .as_ref()
            .ok_or_else(|| ConsensusError::NotVoter {
                node: self.inner.me.clone(),
            })
    }

    fn confused(&self) -> ConsensusError {
        ConsensusError::Refused {
            peer: self.hint().unwrap_or_else(|| self.inner.me.clone()),
            detail: "answered another request".into(),
        }
    }

    /// Sends `request` to the leader (trying the voters in turn while none
    /// is known), until it is answered or `deadline` passes.
    async fn submit(&self, request: Request, deadline: Instant) -> Result<Answer, ConsensusError> {
        let started = Instant::now();
        let mut target = self.current_leader();
        let mut next_voter = 0usize;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            if remaining.is_zero() {
                return Err(ConsensusError::NoQuorum {
                    waited: started.elapsed(),
                });
            }
            let attempt = if request.is_long() {
                remaining
            } else {
                remaining.min(ATTEMPT)
            };
            let result = match &target {
                Some(t) if *t == self.inner.me => {
                    serve(&self.inner, &self.inner.me, request.clone(), attempt).await
                }
                Some(t) => {
                    let called: Result<Result<Answer, Redirect>, _> =
                        self.inner.rpc.call(t, CLIENT, &request, attempt).await;
                    called.unwrap_or_else(|e| {
                        tracing::debug!(voter = %t, "consensus request failed: {e}");
                        Err(Redirect::NotLeader(None))
                    })
                }
                None => Err(Redirect::NotLeader(None)),
            };
            match result {
                Ok(answer) => {
                    self.set_hint(target);
                    return Ok(answer);
                }
                Err(Redirect::NotLeader(Some(l))) if Some(&l) != target.as_ref() => {
                    target = Some(l);
                }
                Err(Redirect::NotLeader(_) | Redirect::NoQuorum) => {
                    // No leader known (an election, a partition): pause a
                    // heartbeat, then ask this node's view or the next voter.
                    let pause = self.inner.config.heartbeat.min(remaining);
                    tokio::select! {
                        _ = self.inner.cancel.cancelled() => {
                            return Err(ConsensusError::Stopped("shut down".into()));
                        }
                        _ = tokio::time::sleep(pause) => {}
                    }
                    target = match self.current_leader() {
                        Some(l) if Some(&l) != target.as_ref() => Some(l),
                        _ => {
                            let names = self.voter_names();
                            next_voter = (next_voter + 1) % names.len().max(1);
                            names.get(next_voter).cloned()
                        }
                    };
                }
                Err(Redirect::Stopped(detail)) => return Err(ConsensusError::Stopped(detail)),
                Err(Redirect::Refused(detail)) => {
                    let peer = target.unwrap_or_else(|| self.inner.me.clone());
                    return Err(ConsensusError::Refused { peer, detail });
                }
                Err(Redirect::Change(refused)) => return Err(refused.into_error()),
            }
        }
    }

    /// Registers the client service (Raft members only).
    fn serve_clients(&self) -> Result<(), StartError> {
        let weak = Arc::downgrade(&self.inner);
        self.inner
            .rpc
            .register_reserved(CLIENT, move |ctx: CallContext, req: Request| {
                let inner = weak.upgrade();
                async move {
                    let Some(inner) = inner else {
                        return Ok::<_, String>(Err(Redirect::Stopped(
                            "the node is stopping".into(),
                        )));
                    };
                    let budget = ctx.deadline.saturating_duration_since(Instant::now());
                    Ok(serve(&inner, &ctx.from, req, budget).await)
                }
            })?;
        Ok(())
    }
}

/// Answers `request` from `from` on this voter within `budget`.
async fn serve(
    inner: &Inner,
    from: &NodeName,
    request: Request,
    budget: Duration,
) -> Result<Answer, Redirect> {
    let Some(v) = &inner.voter else {
        return Err(Redirect::Refused(format!("{} is not a voter", inner.me)));
    };
    let deadline = Instant::now() + budget;
    let leader_name = |id: Option<NodeId>| id.and_then(|id| name_of(inner, id));
    match request {
        Request::Write(op) => {
            let command = Command::Client {
                from: from.clone(),
                op,
            };
            match tokio::time::timeout(budget, v.raft.client_write(command)).await {
                Err(_) => Err(Redirect::NoQuorum),
                Ok(Ok(written)) => Ok(Answer::Reply(written.data)),
                Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f)))) => {
                    Err(Redirect::NotLeader(leader_name(f.leader_id)))
                }
                Ok(Err(RaftError::APIError(e))) => Err(Redirect::Refused(e.to_string())),
                Ok(Err(RaftError::Fatal(e))) => Err(Redirect::Stopped(e.to_string())),
            }
        }
        Request::Holder(key) => {
            match tokio::time::timeout(budget, v.raft.ensure_linearizable()).await {
                Err(_) => Err(Redirect::NoQuorum),
                Ok(Ok(_)) => Ok(Answer::Holder(
                    v.shared.state().machine.holder(&key).cloned(),
                )),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Err(Redirect::NotLeader(leader_name(f.leader_id)))
                }
                Ok(Err(RaftError::APIError(_))) => Err(Redirect::NoQuorum),
                Ok(Err(RaftError::Fatal(e))) => Err(Redirect::Stopped(e.to_string())),
            }
        }
        Request::WaitChange {
            key,
            token,
            wait_ms,
        } => {
            let until = deadline.min(Instant::now() + Duration::from_millis(wait_ms));
            wait_change_local(&v.shared, &key, token, until).await;
            Ok(Answer::Holder(
                v.shared.state().machine.holder(&key).cloned(),
            ))
        }
        Request::Probe => {
            let store = v.store.clone();
            match tokio::task::spawn_blocking(move || store.upgrade()?.is_empty()).await {
                Ok(Ok(empty)) => Ok(Answer::Store { empty }),
                Ok(Err(e)) => Err(Redirect::Stopped(e)),
                Err(e) => Err(Redirect::Stopped(e.to_string())),
            }
        }
        Request::Admit => members::admit(inner, v, from).await,
        Request::AddVoter { node, wait_ms } => {
            let until = deadline.min(Instant::now() + Duration::from_millis(wait_ms));
            members::add(inner, v, from, node, until).await
        }
        Request::RemoveVoter(node) => members::remove(inner, v, from, node, deadline).await,
        Request::Name(name) => {
            match tokio::time::timeout(budget, v.raft.ensure_linearizable()).await {
                Err(_) => Err(Redirect::NoQuorum),
                Ok(Ok(_)) => Ok(Answer::Name(NameOwner::of(
                    &v.shared.state().machine,
                    &name,
                ))),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Err(Redirect::NotLeader(leader_name(f.leader_id)))
                }
                Ok(Err(RaftError::APIError(_))) => Err(Redirect::NoQuorum),
                Ok(Err(RaftError::Fatal(e))) => Err(Redirect::Stopped(e.to_string())),
            }
        }
        Request::Membership => {
            match tokio::time::timeout(budget, v.raft.ensure_linearizable()).await {
                Err(_) => Err(Redirect::NoQuorum),
                Ok(Ok(_)) => Ok(Answer::Membership(members::applied(v))),
                Ok(Err(RaftError::APIError(CheckIsLeaderError::ForwardToLeader(f)))) => {
                    Err(Redirect::NotLeader(leader_name(f.leader_id)))
                }
                Ok(Err(RaftError::APIError(_))) => Err(Redirect::NoQuorum),
                Ok(Err(RaftError::Fatal(e))) => Err(Redirect::Stopped(e.to_string())),
            }
        }
    }
}

/// The name of the member `id`: as its membership entry records it (a
/// member's own view), or a configured voter's, or a voter a client last
/// read.
fn name_of(inner: &Inner, id: NodeId) -> Option<NodeName> {
    if let Some(v) = &inner.voter {
        let metrics = v.raft.metrics();
        let m = metrics.borrow();
        let recorded = m.membership_config.membership().get_node(&id);
        if let Some(name) = recorded.and_then(|n| n.name.parse::<NodeName>().ok()) {
            if node_id(&name) == id {
                return Some(name);
            }
        }
    }
    if let Some(name) = inner.voters.name(id) {
        return Some(name.clone());
    }
    locked(&inner.known_voters)
        .iter()
        .find(|n| node_id(n) == id)
        .cloned()
}

/// Waits until `shared`'s applied state no longer has `key` held with
/// `token`, or until `deadline`.
async fn wait_change_local(shared: &Shared, key: &Key, token: u64, deadline: Instant) {
    let mut applied = shared.watch();
    let changed = |shared: &Shared| {
        shared
            .state()
            .machine
            .holder(key)
            .is_none_or(|g| g.token != token)
    };
    while !changed(shared) {
        match tokio::time::timeout_at(deadline, applied.changed()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Opens the store and starts the Raft member of voter `id`.
async fn start_voter(
    rpc: &Rpc,
    config: &ConsensusConfig,
    voters: &Arc<Voters>,
    id: NodeId,
    me: &NodeName,
) -> Result<Voter, StartError> {
    let dir = config.data_dir_for(me);
    let store_error = |detail: String| StartError::Store {
        dir: dir.clone(),
        detail,
    };
    let opened = {
        let dir = dir.clone();
        tokio::task::spawn_blocking(move || Store::open(&dir)).await
    };
    let store = opened
        .map_err(|e| store_error(e.to_string()))?
        .map_err(store_error)?;
    let standing = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.standing()).await
    };
    let admitted = standing
        .map_err(|e| store_error(e.to_string()))?
        .map_err(store_error)?
        == Standing::Admitted;
    let shared = Shared::new();
    let machine = StateStore::restore(store.clone(), shared.clone())
        .await
        .map_err(store_error)?;
    let raft_config = openraft::Config {
        cluster_name: "quicmesh".into(),
        heartbeat_interval: millis(config.heartbeat),
        election_timeout_min: millis(config.election_timeout),
        election_timeout_max: millis(config.election_timeout * 2),
        snapshot_policy: SnapshotPolicy::LogsSinceLast(config.snapshot_every),
        max_in_snapshot_log_to_keep: config.logs_kept_after_snapshot,
        ..Default::default()
    }
    .validate()
    .map_err(|e| StartError::Raft(e.to_string()))?;
    let network = Network {
        rpc: rpc.clone(),
        me: id,
    };
    let raft = Raft::new(
        id,
        Arc::new(raft_config),
        network,
        LogStore::new(store.clone()),
        machine,
    )
    .await
    .map_err(|e| StartError::Raft(e.to_string()))?;
    if !admitted {
        // Until admitted, it stands for no election (and grants no vote:
        // see the gate).
        raft.runtime_config().elect(false);
        info!(
            node = %me,
            "this member's store is new: it votes for nobody until it is admitted, by the \
             founding of the group or by add-voter (after remove-voter, if it was a voter)"
        );
    }
    let gate = Gate::new(voters.clone(), admitted);
    network::serve_raft(rpc, &raft, &gate)?;
    info!(node = %me, id, dir = %dir.display(), "raft member started");
    Ok(Voter {
        raft,
        id,
        shared,
        store: store.downgrade(),
        gate,
    })
}

/// Initializes the group with the configured voters unless this member
/// already has a log or vote.
async fn initialize(raft: &Raft, voters: &Voters) -> Result<(), String> {
    if raft.is_initialized().await.map_err(|e| e.to_string())? {
        return Ok(());
    }
    let members: BTreeMap<NodeId, Member> = voters
        .iter()
        .map(|(id, name)| {
            let name = name.to_string();
            (id, Member { name })
        })
        .collect();
    match raft.initialize(members).await {
        Ok(()) => {
            info!("raft group founded");
            Ok(())
        }
        Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether this voter leads the group now.
fn leads(v: &Voter) -> bool {
    let m = v.raft.metrics();
    let m = m.borrow();
    m.state == ServerState::Leader && m.current_leader == Some(v.id)
}
