//! openraft's RPCs over the mesh: each is a reserved RPC service, called
//! on the voter by its node name with openraft's timeout, and served only
//! to the voter the message claims to come from.

use std::sync::Arc;

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

use crate::{Member, NodeId, Raft, TypeConfig, Voters};

/// Append-entries (and heartbeats).
pub(crate) const APPEND: &str = "quicmesh.raft.append";
/// Vote requests.
pub(crate) const VOTE: &str = "quicmesh.raft.vote";
/// Snapshot chunks.
pub(crate) const SNAPSHOT: &str = "quicmesh.raft.snapshot";

/// Why a Raft message was refused before openraft saw it.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// The caller is not a configured voter.
    #[error("{0} is not a voter")]
    NotVoter(NodeName),
    /// The caller's certificate names another voter than the message.
    #[error("{caller} sent a message as voter {claimed}")]
    Impostor {
        /// The caller, as its certificate names it.
        caller: NodeName,
        /// The voter id the message claims.
        claimed: NodeId,
    },
}

/// Checks that `ctx`'s caller is the voter `claimed`.
fn check(voters: &Voters, ctx: &CallContext, claimed: NodeId) -> Result<(), Refusal> {
    match voters.id(&ctx.from) {
        None => Err(Refusal::NotVoter(ctx.from.clone())),
        Some(id) if id != claimed => Err(Refusal::Impostor {
            caller: ctx.from.clone(),
            claimed,
        }),
        Some(_) => Ok(()),
    }
}

/// Serves `service`: checks the caller against the voter `claimed(req)`,
/// then hands the request to `handle`.
fn serve<Req, Resp, F, Fut>(
    rpc: &Rpc,
    raft: &Raft,
    voters: &Arc<Voters>,
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
    let (raft, voters) = (raft.clone(), voters.clone());
    rpc.register_reserved(service, move |ctx: CallContext, req: Req| {
        let checked = check(&voters, &ctx, claimed(&req)).map(|()| handle(raft.clone(), req));
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
pub(crate) fn serve_raft(
    rpc: &Rpc,
    raft: &Raft,
    voters: &Arc<Voters>,
) -> Result<(), RegisterError> {
    serve(
        rpc,
        raft,
        voters,
        APPEND,
        |r: &AppendEntriesRequest<TypeConfig>| leader_of(&r.vote),
        |raft, r| async move { raft.append_entries(r).await },
    )?;
    serve(
        rpc,
        raft,
        voters,
        VOTE,
        |r: &VoteRequest<NodeId>| leader_of(&r.vote),
        |raft, r| async move { raft.vote(r).await },
    )?;
    serve(
        rpc,
        raft,
        voters,
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

/// Makes a [`Link`] per voter for openraft.
#[derive(Debug, Clone)]
pub(crate) struct Network {
    pub(crate) rpc: Rpc,
    pub(crate) voters: Arc<Voters>,
    pub(crate) me: NodeId,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Link;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Link {
        // The name comes from the configured voters, never from the log.
        let name = self.voters.name(target).cloned();
        if name.as_ref().map(NodeName::as_str) != Some(node.name.as_str()) {
            tracing::warn!(target, member = %node.name, "raft member is not a configured voter");
        }
        Link {
            rpc: self.rpc.clone(),
            me: self.me,
            target,
            name,
        }
    }
}

/// The way to one voter.
#[derive(Debug)]
pub(crate) struct Link {
    rpc: Rpc,
    me: NodeId,
    target: NodeId,
    name: Option<NodeName>,
}

/// A voter id that no configured voter has.
#[derive(Debug, thiserror::Error)]
#[error("raft node {0} is not a configured voter")]
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
