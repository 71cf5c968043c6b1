//! openraft's RPCs over the mesh: each is a reserved RPC service, called
//! on the member by the node name its membership entry records, with
//! openraft's timeout, and served only to a member of the group that is
//! the node the message claims to come from.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use openraft::Vote;
use openraft::error::{
    InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout, Unreachable,
};
use openraft::network::{RPCOption, RPCTypes, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use quicmesh_rpc::{CallContext, RegisterError, Rpc, RpcError};
use quicmesh_wire::NodeName;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{Member, NodeId, Raft, TypeConfig, Voters, locked, node_id};

/// Append-entries (and heartbeats).
pub(crate) const APPEND: &str = "quicmesh.raft.append";
/// Vote requests.
pub(crate) const VOTE: &str = "quicmesh.raft.vote";
/// Snapshot chunks.
pub(crate) const SNAPSHOT: &str = "quicmesh.raft.snapshot";

/// Who may send this member Raft messages, and whether it may vote.
#[derive(Debug)]
pub(crate) struct Gate {
    /// The configured voters.
    voters: Arc<Voters>,
    /// The nodes that admitted this member (a founder or a leader adding
    /// it), which it may not find in its own membership yet.
    introduced: Mutex<BTreeSet<NodeName>>,
    /// Whether this member's store is admitted: until it is, it grants no
    /// vote.
    admitted: AtomicBool,
}

impl Gate {
    pub(crate) fn new(voters: Arc<Voters>, admitted: bool) -> Arc<Self> {
        Arc::new(Self {
            voters,
            introduced: Mutex::new(BTreeSet::new()),
            admitted: AtomicBool::new(admitted),
        })
    }

    /// Whether this member may vote.
    pub(crate) fn admitted(&self) -> bool {
        self.admitted.load(Ordering::Acquire)
    }

    /// Lets this member vote, as admitted by `by`.
    pub(crate) fn admit(&self, by: &NodeName) {
        locked(&self.introduced).insert(by.clone());
        self.admitted.store(true, Ordering::Release);
    }

    /// Whether `name` may send Raft messages here: a configured voter, a
    /// voter or learner of this member's membership, or a node that
    /// admitted it.
    pub(crate) fn knows(&self, raft: &Raft, name: &NodeName) -> bool {
        if self.voters.id(name).is_some() || locked(&self.introduced).contains(name) {
            return true;
        }
        let id = node_id(name);
        let metrics = raft.metrics();
        let m = metrics.borrow();
        m.membership_config
            .membership()
            .get_node(&id)
            .is_some_and(|n| n.name == name.as_str())
    }
}

/// Why a Raft message was refused before openraft saw it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// The caller is neither a configured voter nor a member of the group
    /// as this member knows it.
    #[error("{0} is not a voter or learner of the group")]
    NotVoter(NodeName),
    /// This member's store is new and not admitted: it votes for nobody.
    #[error("{0} votes for nobody until a membership change admits it (its store is new)")]
    NotAdmitted(NodeName),
    /// The caller's certificate names another voter than the message.
    #[error("{caller} sent a message as voter {claimed}")]
    Impostor {
        /// The caller, as its certificate names it.
        caller: NodeName,
        /// The voter id the message claims.
        claimed: NodeId,
    },
}

/// Checks that `ctx`'s caller is a member `gate` knows, and the node
/// `claimed`.
fn check(gate: &Gate, raft: &Raft, ctx: &CallContext, claimed: NodeId) -> Result<(), Refusal> {
    if !gate.knows(raft, &ctx.from) {
        return Err(Refusal::NotVoter(ctx.from.clone()));
    }
    if node_id(&ctx.from) != claimed {
        return Err(Refusal::Impostor {
            caller: ctx.from.clone(),
            claimed,
        });
    }
    Ok(())
}

/// Serves `service`: checks the caller against the member `claimed(req)`
/// (and, for a vote, that this member may vote), then hands the request
/// to `handle`.
fn serve<Req, Resp, F, Fut>(
    rpc: &Rpc,
    raft: &Raft,
    gate: &Arc<Gate>,
    service: &str,
    claimed: fn(&Req) -> NodeId,
    handle: F,
) -> Result<(), RegisterError>
where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    F: Fn(Raft, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Resp> + Send + 'static,
{
    let (raft, gate) = (raft.clone(), gate.clone());
    let me = rpc.mesh().name().clone();
    let is_vote = service == VOTE;
    rpc.register_reserved(service, move |ctx: CallContext, req: Req| {
        let checked = check(&gate, &raft, &ctx, claimed(&req))
            .and_then(|()| {
                if is_vote && !gate.admitted() {
                    Err(Refusal::NotAdmitted(me.clone()))
                } else {
                    Ok(())
                }
            })
            .map(|()| handle(raft.clone(), req));
        async move {
            match checked {
                Ok(fut) => Ok(fut.await),
                Err(refusal) => {
                    tracing::warn!(peer = %ctx.from, "raft message refused: {refusal}");
                    Err(refusal)
                }
            }
        }
    })
}

fn leader_of(vote: &Vote<NodeId>) -> NodeId {
    vote.leader_id.node_id
}

/// Registers the Raft services of `raft`.
pub(crate) fn serve_raft(rpc: &Rpc, raft: &Raft, gate: &Arc<Gate>) -> Result<(), RegisterError> {
    serve(
        rpc,
        raft,
        gate,
        APPEND,
        |r: &AppendEntriesRequest<TypeConfig>| leader_of(&r.vote),
        |raft, r| async move { raft.append_entries(r).await },
    )?;
    serve(
        rpc,
        raft,
        gate,
        VOTE,
        |r: &VoteRequest<NodeId>| leader_of(&r.vote),
        |raft, r| async move { raft.vote(r).await },
    )?;
    serve(
        rpc,
        raft,
        gate,
        SNAPSHOT,
        |r: &InstallSnapshotRequest<TypeConfig>| leader_of(&r.vote),
        |raft, r| async move { raft.install_snapshot(r).await },
    )
}

/// Stops serving the Raft services.
pub(crate) fn unserve_raft(rpc: &Rpc) {
    for service in [APPEND, VOTE, SNAPSHOT] {
        rpc.unregister(service);
    }
}

/// Makes a [`Link`] per member for openraft.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) rpc: Rpc,
    pub(crate) me: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Link {
        // The name is the membership entry's, and must be the one the id
        // is the hash of (the certificate of the node called names it).
        let name = node
            .name
            .parse::<NodeName>()
            .ok()
            .filter(|n| node_id(n) == target);
        if name.is_none() {
            tracing::warn!(target, member = %node.name, "raft member's name does not match its id");
        }
        Link {
            rpc: self.rpc.clone(),
            me: self.me,
            target,
            name,
        }
    }
}

/// The way to one member.
#[derive(Debug)]
pub(crate) struct Link {
    rpc: Rpc,
    me: NodeId,
    target: NodeId,
    name: Option<NodeName>,
}

/// A member id whose recorded name is not that of the id.
#[derive(Debug, thiserror::Error)]
#[error("raft node {0} has no valid name in the membership")]
struct UnknownVoter(NodeId);

impl Link {
    async fn call<Req, Resp, E>(
        &self,
        service: &str,
        action: RPCTypes,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, Member, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let Some(name) = &self.name else {
            return Err(RPCError::Unreachable(Unreachable::new(&UnknownVoter(
                self.target,
            ))));
        };
        let timeout = option.hard_ttl();
        let answer: Result<Result<Resp, RaftError<NodeId, E>>, RpcError> =
            self.rpc.call(name, service, req, timeout).await;
        match answer {
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) => Err(RPCError::RemoteError(RemoteError::new_with_node(
                self.target,
                Member {
                    name: name.to_string(),
                },
                e,
            ))),
            Err(RpcError::Timeout { .. }) => Err(RPCError::Timeout(Timeout {
                action,
                id: self.me,
                target: self.target,
                timeout,
            })),
            // Not connected, gone, or shedding load: back off.
            Err(
                e @ (RpcError::NotConnected { .. }
                | RpcError::NodeDown { .. }
                | RpcError::Overloaded { .. }
                | RpcError::NoSuchService { .. }),
            ) => Err(RPCError::Unreachable(Unreachable::new(&e))),
            Err(e) => Err(RPCError::Network(NetworkError::new(&e))),
        }
    }
}

impl RaftNetwork<TypeConfig> for Link {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(APPEND, RPCTypes::AppendEntries, &rpc, &option)
            .await
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, Member, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(SNAPSHOT, RPCTypes::InstallSnapshot, &rpc, &option)
            .await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, Member, RaftError<NodeId>>> {
        self.call(VOTE, RPCTypes::Vote, &rpc, &option).await
    }
}
