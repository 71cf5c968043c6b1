//! The voters of the group: founding it, admitting a new store, and
//! changing the voters one at a time at run time.
//!
//! ```text
//! founder (first configured voter, empty store)
//!   every configured voter answers Probe with an empty store?
//!     yes ── Admit each, admit itself, initialize the group
//!     one has a log ── the group exists: this store was lost; wait to be re-added
//!
//! add_voter(n) on the leader (one change at a time)
//!   n not a voter ── Admit n ── add_learner(n), blocking until caught up
//!                ── change_membership(voters + n)
//! remove_voter(n) on the leader
//!   n a voter, not the last ── change_membership(voters - n), n forgotten
//! ```
//!
//! A store created empty is `Pending`: its member grants no vote and
//! stands for no election, since it may be a voter whose data directory
//! was lost along with the votes it gave and the entries it acknowledged.
//! It is admitted only by the founding of the group or by a leader adding
//! its node while that node is no voter, so a voter that lost its store
//! votes again only once it was removed and added back. A member is
//! caught up (the leader's vote and the whole log durable in its store)
//! before it becomes a voter.
//!
//! Who may change the voters: a node of the cluster that is visible (not
//! hidden), as the leader sees it connected, or the leader itself. A
//! hidden node, such as the one an admin command joins as, asks a node's
//! admin service, which asks in its own name.

use std::collections::BTreeSet;
use std::sync::Weak;
use std::time::Duration;

use openraft::ChangeMembers;
use openraft::error::{ChangeMembershipError, ClientWriteError, RaftError};
use quicmesh_rpc::RpcError;
use quicmesh_wire::NodeName;
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{debug, info, warn};

use super::{
    ATTEMPT, Answer, CLIENT, Consensus, Inner, Redirect, Request, Voter, initialize, leads, millis,
    name_of,
};
use crate::storage::Standing;
use crate::{ConsensusError, Member, NodeId, locked, node_id};

/// The group's members, as a committed membership records them
/// ([`Consensus::membership`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct Membership {
    /// The voters, sorted. While a change is being committed (a joint
    /// configuration), the voters of both halves.
    pub voters: Vec<NodeName>,
    /// The learners (nodes being added, receiving the log without a
    /// vote), sorted.
    pub learners: Vec<NodeName>,
    /// The log index of the entry that made this membership.
    pub index: Option<u64>,
}

/// Why a change of the voters was refused, as the leader tells the asker.
/// On the wire (postcard): append variants only.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) enum ChangeRefused {
    /// Another change is under way.
    InProgress,
    /// The node is a voter already.
    AlreadyAVoter(NodeName),
    /// The node is no voter.
    NotAMember(NodeName),
    /// The node is the last voter.
    WouldEmptyGroup(NodeName),
    /// The node could not be admitted: why.
    CannotJoin(NodeName, String),
    /// The node did not catch up within this many milliseconds.
    NotCaughtUp(NodeName, u64),
}

impl ChangeRefused {
    pub(super) fn into_error(self) -> ConsensusError {
        match self {
            Self::InProgress => ConsensusError::MembershipChangeInProgress,
            Self::AlreadyAVoter(node) => ConsensusError::AlreadyAVoter { node },
            Self::NotAMember(node) => ConsensusError::NotAMember { node },
            Self::WouldEmptyGroup(node) => ConsensusError::WouldEmptyGroup { node },
            Self::CannotJoin(node, detail) => ConsensusError::CannotJoin { node, detail },
            Self::NotCaughtUp(node, ms) => ConsensusError::NotCaughtUp {
                node,
                waited: Duration::from_millis(ms),
            },
        }
    }
}

impl Consensus {
    /// Makes `node` a voter of the group, waiting up to `timeout`; the
    /// membership after the change. Asked on any node, done by the leader:
    /// it admits the node's new store, adds it as a learner, waits for it
    /// to catch up with the log, then makes it a voter.
    ///
    /// The node must run a Raft member: started with
    /// [`ConsensusConfig::join`](crate::ConsensusConfig::join) (or named in
    /// its `voters`), connected to the cluster. One change at a time:
    /// `MembershipChangeInProgress` while another is under way;
    /// `AlreadyAVoter` if it is one (a voter whose data directory was lost
    /// is removed first, then added); `CannotJoin` if it cannot be
    /// admitted; `NotCaughtUp` if it did not catch up in time (it stays a
    /// learner; ask again); `NoQuorum` if no leader committed the change
    /// in time; `Refused` if this node may not change the voters (a hidden
    /// node).
    pub async fn add_voter(
        &self,
        node: &NodeName,
        timeout: Duration,
    ) -> Result<Membership, ConsensusError> {
        let deadline = Instant::now() + timeout;
        let request = Request::AddVoter {
            node: node.clone(),
            wait_ms: millis(timeout),
        };
        self.change(request, deadline).await
    }

    /// Removes `node` from the voters, waiting up to `timeout`; the
    /// membership after the change. Asked on any node, done by the leader
    /// (which may remove itself: it steps down once the change is
    /// committed). The node is forgotten by the group: it receives no more
    /// of the log. `NotAMember` if it is no voter, `WouldEmptyGroup` if it
    /// is the last one; otherwise the errors of [`Consensus::add_voter`].
    pub async fn remove_voter(
        &self,
        node: &NodeName,
        timeout: Duration,
    ) -> Result<Membership, ConsensusError> {
        let deadline = Instant::now() + timeout;
        self.change(Request::RemoveVoter(node.clone()), deadline)
            .await
    }

    /// The group's committed membership, read linearizably through the
    /// leader, within `request_timeout`.
    pub async fn membership(&self) -> Result<Membership, ConsensusError> {
        let deadline = Instant::now() + self.inner.config.request_timeout;
        self.change(Request::Membership, deadline).await
    }

    async fn change(
        &self,
        request: Request,
        deadline: Instant,
    ) -> Result<Membership, ConsensusError> {
        match self.submit(request, deadline).await? {
            Answer::Membership(m) => {
                *locked(&self.inner.known_voters) = m.voters.clone();
                Ok(m)
            }
            _ => Err(self.confused()),
        }
    }
}

/// The membership `v` has applied: the last committed one it knows.
pub(super) fn applied(v: &Voter) -> Membership {
    let stored = v.shared.state().membership.clone();
    named(stored.membership(), stored.log_id().map(|l| l.index))
}

/// `m`'s voters and learners by name, as of the entry at `index`.
fn named(m: &openraft::Membership<NodeId, Member>, index: Option<u64>) -> Membership {
    let names = |ids: Vec<NodeId>| -> Vec<NodeName> {
        let mut names: Vec<NodeName> = ids
            .iter()
            .filter_map(|id| m.get_node(id))
            .filter_map(|n| n.name.parse().ok())
            .collect();
        names.sort();
        names
    };
    Membership {
        voters: names(m.voter_ids().collect()),
        learners: names(m.learner_ids().collect()),
        index,
    }
}

/// Admits this member's store, on the word of `from`: a configured voter
/// or a member of the group as this member knows it (the founder, or a
/// leader adding this node).
pub(super) async fn admit(inner: &Inner, v: &Voter, from: &NodeName) -> Result<Answer, Redirect> {
    if *from != inner.me && !v.gate.knows(&v.raft, from) {
        return Err(Redirect::Refused(format!(
            "{from} is no member of the group as {} knows it: it may not admit it",
            inner.me
        )));
    }
    if !v.gate.admitted() {
        let store = v.store.clone();
        match tokio::task::spawn_blocking(move || store.upgrade()?.set_standing(Standing::Admitted))
            .await
        {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(Redirect::Stopped(e)),
            Err(e) => return Err(Redirect::Stopped(e.to_string())),
        }
        info!(by = %from, "admitted to the group: this member votes from now on");
    }
    v.gate.admit(from);
    v.raft.runtime_config().elect(true);
    Ok(Answer::Admitted)
}

/// Whether `from` may change the voters: this node, or a visible node
/// connected to it.
fn may_change(inner: &Inner, from: &NodeName) -> Result<(), Redirect> {
    if *from == inner.me || inner.rpc.mesh().visible_nodes().contains(from) {
        return Ok(());
    }
    Err(Redirect::Refused(format!(
        "{from} may not change the voters: only a visible node of the cluster may (a hidden \
         node asks through one, as `quicmesh consensus add-voter --connect NODE` does)"
    )))
}

/// The start of every change asked by `from`: the asker may ask, no other
/// change runs (the guard keeps it so), and `v` leads a settled
/// membership; its voters.
fn begin_change<'a>(
    inner: &'a Inner,
    v: &Voter,
    from: &NodeName,
) -> Result<(tokio::sync::MutexGuard<'a, ()>, BTreeSet<NodeId>), Redirect> {
    may_change(inner, from)?;
    let Ok(one_at_a_time) = inner.changing.try_lock() else {
        return Err(Redirect::Change(ChangeRefused::InProgress));
    };
    Ok((one_at_a_time, settled(inner, v)?))
}

/// Checks that `v` leads and that its membership is committed (no joint
/// configuration, nothing newer than what it applied); the voters.
fn settled(inner: &Inner, v: &Voter) -> Result<BTreeSet<NodeId>, Redirect> {
    if !leads(v) {
        let leader = v.raft.metrics().borrow().current_leader;
        return Err(Redirect::NotLeader(
            leader.and_then(|id| name_of(inner, id)),
        ));
    }
    let effective = v.raft.metrics().borrow().membership_config.clone();
    let applied = *v.shared.state().membership.log_id();
    if effective.membership().get_joint_config().len() > 1 || *effective.log_id() != applied {
        return Err(Redirect::Change(ChangeRefused::InProgress));
    }
    Ok(effective.membership().voter_ids().collect())
}

/// The redirect for an error of a membership change concerning `node`.
fn change_error(
    inner: &Inner,
    node: &NodeName,
    e: RaftError<NodeId, ClientWriteError<NodeId, Member>>,
) -> Redirect {
    match e {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f)) => {
            Redirect::NotLeader(f.leader_id.and_then(|id| name_of(inner, id)))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(c)) => {
            Redirect::Change(match c {
                ChangeMembershipError::InProgress(_) => ChangeRefused::InProgress,
                ChangeMembershipError::EmptyMembership(_) => {
                    ChangeRefused::WouldEmptyGroup(node.clone())
                }
                ChangeMembershipError::LearnerNotFound(_) => ChangeRefused::CannotJoin(
                    node.clone(),
                    "it is no learner of the group (was it removed meanwhile?)".into(),
                ),
            })
        }
        RaftError::Fatal(e) => Redirect::Stopped(e.to_string()),
    }
}

/// The membership a change's response carries, or else the applied one.
fn after(v: &Voter, membership: Option<openraft::Membership<NodeId, Member>>) -> Membership {
    match membership {
        Some(m) => named(&m, applied(v).index),
        None => applied(v),
    }
}

/// Makes `node` a voter, by the leader `v`, until `deadline`.
pub(super) async fn add(
    inner: &Inner,
    v: &Voter,
    from: &NodeName,
    node: NodeName,
    deadline: Instant,
) -> Result<Answer, Redirect> {
    let (_one_at_a_time, voters) = begin_change(inner, v, from)?;
    let id = node_id(&node);
    if voters.contains(&id) {
        return Err(Redirect::Change(ChangeRefused::AlreadyAVoter(node)));
    }
    info!(node = %node, asked_by = %from, "adding a voter");
    let started = Instant::now();
    let attempt = deadline.saturating_duration_since(started).min(ATTEMPT);
    let admitted: Result<Result<Answer, Redirect>, RpcError> = inner
        .rpc
        .call(&node, CLIENT, &Request::Admit, attempt)
        .await;
    let cannot = |detail: String| Redirect::Change(ChangeRefused::CannotJoin(node.clone(), detail));
    match admitted {
        Ok(Ok(Answer::Admitted)) => {}
        Ok(Ok(other)) => return Err(cannot(format!("it answered {other:?}"))),
        Ok(Err(Redirect::Refused(detail))) => return Err(cannot(detail)),
        Ok(Err(other)) => return Err(cannot(format!("it answered {other:?}"))),
        Err(e) => return Err(cannot(e.to_string())),
    }
    let member = Member {
        name: node.to_string(),
    };
    let added = match tokio::time::timeout_at(deadline, v.raft.add_learner(id, member, false)).await
    {
        Err(_) => return Err(Redirect::NoQuorum),
        Ok(Err(e)) => return Err(change_error(inner, &node, e)),
        Ok(Ok(r)) => r.log_id.index,
    };
    // Caught up: it holds the log up to its own learner entry, and with
    // it the leader's vote (openraft's own wait allows a lag of
    // thousands of entries, counting a learner that has nothing yet).
    let caught_up = |m: &openraft::RaftMetrics<NodeId, Member>| {
        let matched = m.replication.as_ref().and_then(|r| r.get(&id).cloned());
        matched.flatten().is_some_and(|l| l.index >= added)
    };
    let wait = deadline.saturating_duration_since(Instant::now());
    if v.raft
        .wait(Some(wait))
        .metrics(caught_up, "learner caught up")
        .await
        .is_err()
    {
        let waited = millis(started.elapsed());
        return Err(Redirect::Change(ChangeRefused::NotCaughtUp(node, waited)));
    }
    debug!(node = %node, "the new voter caught up as a learner");
    let change = ChangeMembers::AddVoterIds(BTreeSet::from([id]));
    match tokio::time::timeout_at(deadline, v.raft.change_membership(change, false)).await {
        Err(_) => Err(Redirect::NoQuorum),
        Ok(Err(e)) => Err(change_error(inner, &node, e)),
        Ok(Ok(r)) => {
            info!(node = %node, "voter added");
            Ok(Answer::Membership(after(v, r.membership)))
        }
    }
}

/// Removes `node` from the voters, by the leader `v`, until `deadline`.
pub(super) async fn remove(
    inner: &Inner,
    v: &Voter,
    from: &NodeName,
    node: NodeName,
    deadline: Instant,
) -> Result<Answer, Redirect> {
    let (_one_at_a_time, voters) = begin_change(inner, v, from)?;
    let id = node_id(&node);
    if !voters.contains(&id) {
        return Err(Redirect::Change(ChangeRefused::NotAMember(node)));
    }
    if voters.len() == 1 {
        return Err(Redirect::Change(ChangeRefused::WouldEmptyGroup(node)));
    }
    info!(node = %node, asked_by = %from, "removing a voter");
    let change = ChangeMembers::RemoveVoters(BTreeSet::from([id]));
    match tokio::time::timeout_at(deadline, v.raft.change_membership(change, false)).await {
        Err(_) => Err(Redirect::NoQuorum),
        Ok(Err(e)) => Err(change_error(inner, &node, e)),
        Ok(Ok(r)) => {
            info!(node = %node, "voter removed");
            Ok(Answer::Membership(after(v, r.membership)))
        }
    }
}

/// What the founder learnt from the configured voters.
enum Probed {
    /// Every one has an empty store.
    AllEmpty,
    /// This one has a log or vote: the group exists.
    Founded(NodeName),
    /// This one did not answer (yet): why.
    Waiting(NodeName, String),
}

/// Asks every other configured voter whether its store is empty.
async fn probe(inner: &Inner) -> Probed {
    for (_, name) in inner.voters.iter() {
        if *name == inner.me {
            continue;
        }
        let answer: Result<Result<Answer, Redirect>, RpcError> =
            inner.rpc.call(name, CLIENT, &Request::Probe, ATTEMPT).await;
        match answer {
            Ok(Ok(Answer::Store { empty: true })) => {}
            Ok(Ok(Answer::Store { empty: false })) => return Probed::Founded(name.clone()),
            Ok(other) => return Probed::Waiting(name.clone(), format!("it answered {other:?}")),
            Err(e) => return Probed::Waiting(name.clone(), e.to_string()),
        }
    }
    Probed::AllEmpty
}

/// The founder's task (the configured voter whose name sorts first): while
/// its store is empty, waits until every configured voter answers with an
/// empty store, then admits them and itself and initializes the group. If
/// one has a log, the group exists and this store was lost: it does not
/// found the group again, and waits to be re-added.
pub(super) async fn found(inner: Weak<Inner>) {
    let mut said = String::new();
    loop {
        let Some(this) = inner.upgrade() else { return };
        let Some(v) = &this.voter else { return };
        let (cancel, pause) = (this.cancel.clone(), this.config.heartbeat * 4);
        if !matches!(v.raft.is_initialized().await, Ok(false)) {
            return;
        }
        let store = v.store.clone();
        match tokio::task::spawn_blocking(move || store.upgrade()?.is_empty()).await {
            Ok(Ok(true)) => {}
            _ => return,
        }
        match probe(&this).await {
            Probed::AllEmpty => match found_now(&this, v).await {
                Ok(()) => return,
                Err(e) => warn!("could not found the group yet: {e}"),
            },
            Probed::Founded(by) => {
                warn!(
                    voter = %by,
                    "{by} has a log: the group exists, and this node's store is new (its data \
                     directory was lost?); it does not found the group again, and votes once \
                     re-added (remove-voter {me}, then add-voter {me})",
                    me = this.me
                );
                return;
            }
            Probed::Waiting(voter, why) => {
                let now = format!("{voter}: {why}");
                if now != said {
                    info!(voter = %voter, "waiting for every voter to found the group: {why}");
                    said = now;
                }
            }
        }
        drop(this);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(pause) => {}
        }
    }
}

/// Admits every configured voter and this one, then initializes the group.
async fn found_now(inner: &Inner, v: &Voter) -> Result<(), String> {
    for (_, name) in inner.voters.iter() {
        if *name == inner.me {
            continue;
        }
        let answer: Result<Result<Answer, Redirect>, RpcError> =
            inner.rpc.call(name, CLIENT, &Request::Admit, ATTEMPT).await;
        match answer {
            Ok(Ok(Answer::Admitted)) => {}
            other => return Err(format!("{name} was not admitted: {other:?}")),
        }
    }
    admit(inner, v, &inner.me)
        .await
        .map_err(|r| format!("{r:?}"))?;
    debug!("every voter admitted: founding the group");
    initialize(&v.raft, &inner.voters).await
}
