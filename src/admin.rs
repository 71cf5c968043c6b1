//! Asking a running node about itself and the cluster: what the
//! `quicmesh status`, `members`, `ping`, `whereis`, `names`, `leaders`,
//! `locks` and `consensus` commands print.
//!
//! Every node answers the reserved service `quicmesh.admin` with reports
//! of its own state: its status and peers, and the registry, elections and
//! lock table as it knows them. Any node of the cluster may ask (a hidden
//! one too, which is how the commands join); the answers say nothing a
//! node of the cluster could not already learn, so asking needs no more
//! rights than being a node. [`Node::admin`] asks from code.
//!
//! In consensus mode a node also changes the voters of the Raft group when
//! asked (`quicmesh consensus add-voter` / `remove-voter`): any node of
//! the cluster may ask, hidden or not, since holding the cluster's
//! identity (the cookie, or a certificate of its CA) is what lets a node
//! in at all, as etcd without role-based access lets in any client with a
//! certificate of its CA. The node asked makes the change in its own name
//! (the leader takes changes from visible nodes only) and logs who asked.
//!
//! The reports are plain data with `serde` derives (defined with the other
//! wire messages): the commands print them as JSON with `--json`. Their
//! shapes change only with the protocol's major version, and then only by
//! added fields. Times are
//! milliseconds since the Unix epoch, round trips are microseconds, and
//! tokens and terms are decimal strings (128-bit numbers do not fit a JSON
//! reader's doubles).

use std::sync::{Arc, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quicmesh_consensus::{Consensus, WeakConsensus};
use quicmesh_coord::Coord;
use quicmesh_mesh::{PeerStatus, Status};
use quicmesh_rpc::{Rpc, RpcError};
use quicmesh_wire::NodeName;
use quicmesh_wire::admin::SERVICE;
use tracing::info;

use crate::Node;

pub use quicmesh_wire::admin::{
    Answer, ConsensusMembersReport, ConsensusReport, DownReport, LeaderReport, LockReport,
    MAX_ROWS, NameReport, NodeReport, PeerReport, Question, Rows,
};

/// Asks one node admin questions ([`Node::admin`]). Every question has the
/// RPC timeout, and fails with the RPC error that says why.
#[derive(Debug)]
pub struct Admin<'a> {
    node: &'a Node,
    peer: NodeName,
}

impl Admin<'_> {
    async fn ask(&self, question: Question) -> Result<Answer, RpcError> {
        self.ask_within(question, self.node.rpc().config().timeout)
            .await
    }

    async fn ask_within(&self, question: Question, timeout: Duration) -> Result<Answer, RpcError> {
        if self.peer == *self.node.name() {
            let me = self.node.name();
            return answer(self.node.coord(), self.node.consensus(), me, question)
                .await
                .map_err(|message| RpcError::Remote {
                    peer: me.clone(),
                    service: SERVICE.to_owned(),
                    message,
                });
        }
        self.node
            .rpc()
            .call(&self.peer, SERVICE, &question, timeout)
            .await
    }

    /// Consensus mode: the Raft group's committed membership, as the node
    /// reads it through the leader.
    pub async fn consensus_members(&self) -> Result<ConsensusMembersReport, RpcError> {
        match self.ask(Question::ConsensusMembers).await? {
            Answer::ConsensusMembers(report) => Ok(report),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Consensus mode: has the node make `node` a voter (see
    /// `quicmesh_consensus::Consensus::add_voter`), waiting up to `wait`;
    /// the membership after the change. A refusal is the RPC error
    /// `Remote` with the reason.
    pub async fn add_voter(
        &self,
        node: &NodeName,
        wait: Duration,
    ) -> Result<ConsensusMembersReport, RpcError> {
        let question = Question::AddVoter {
            node: node.clone(),
            wait_ms: micros(wait) / 1000,
        };
        self.change(question, wait).await
    }

    /// Consensus mode: has the node remove `node` from the voters (see
    /// `quicmesh_consensus::Consensus::remove_voter`), waiting up to
    /// `wait`; the membership after the change.
    pub async fn remove_voter(
        &self,
        node: &NodeName,
        wait: Duration,
    ) -> Result<ConsensusMembersReport, RpcError> {
        let question = Question::RemoveVoter {
            node: node.clone(),
            wait_ms: micros(wait) / 1000,
        };
        self.change(question, wait).await
    }

    async fn change(
        &self,
        question: Question,
        wait: Duration,
    ) -> Result<ConsensusMembersReport, RpcError> {
        // The answer may take the whole wait, and then a little more.
        let timeout = wait + self.node.rpc().config().timeout;
        match self.ask_within(question, timeout).await? {
            Answer::ConsensusMembers(report) => Ok(report),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Its status and its view of its peers.
    pub async fn status(&self) -> Result<NodeReport, RpcError> {
        match self.ask(Question::Status).await? {
            Answer::Status(report) => Ok(*report),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The first `limit` names of its registry, sorted.
    pub async fn names(&self, limit: usize) -> Result<Rows<NameReport>, RpcError> {
        match self.ask(Question::Names { limit }).await? {
            Answer::Names(rows) => Ok(rows),
            other => Err(self.unexpected(&other)),
        }
    }

    /// Where its registry says `name` is.
    pub async fn whereis(&self, name: &str) -> Result<Option<NameReport>, RpcError> {
        let question = Question::Whereis {
            name: name.to_owned(),
        };
        match self.ask(question).await? {
            Answer::Whereis(found) => Ok(found),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The first `limit` elections it knows, sorted, with their leaders.
    pub async fn leaders(&self, limit: usize) -> Result<Rows<LeaderReport>, RpcError> {
        match self.ask(Question::Leaders { limit }).await? {
            Answer::Leaders(rows) => Ok(rows),
            other => Err(self.unexpected(&other)),
        }
    }

    /// The first `limit` locks of its lock table, sorted by resource.
    pub async fn locks(&self, limit: usize) -> Result<Rows<LockReport>, RpcError> {
        match self.ask(Question::Locks { limit }).await? {
            Answer::Locks(rows) => Ok(rows),
            other => Err(self.unexpected(&other)),
        }
    }

    fn unexpected(&self, answer: &Answer) -> RpcError {
        RpcError::Remote {
            peer: self.peer.clone(),
            service: SERVICE.to_owned(),
            message: format!("answered another question: {answer:?}"),
        }
    }
}

impl Node {
    /// Asks `node` (this one or a connected peer) about its state: see
    /// [`admin`](crate::admin).
    ///
    /// ```no_run
    /// # async fn demo(node: quicmesh::Node, peer: quicmesh::NodeName) -> Result<(), quicmesh::RpcError> {
    /// let status = node.admin(&peer).status().await?;
    /// for p in &status.peers {
    ///     println!("{} {}", p.node, p.state);
    /// }
    /// # Ok(()) }
    /// ```
    pub fn admin(&self, node: &NodeName) -> Admin<'_> {
        Admin {
            node: self,
            peer: node.clone(),
        }
    }
}

/// Serves admin questions on `rpc` for as long as `coord` lives.
pub(crate) fn serve(rpc: &Rpc, coord: &Arc<Coord>, consensus: Option<&Consensus>) {
    let weak: Weak<Coord> = Arc::downgrade(coord);
    let consensus: Option<WeakConsensus> = consensus.map(Consensus::downgrade);
    let registered = rpc.register_reserved(
        SERVICE,
        move |ctx: quicmesh_rpc::CallContext, question: Question| {
            let consensus = consensus.as_ref().and_then(WeakConsensus::upgrade);
            let coord = weak.upgrade();
            async move {
                let Some(coord) = coord else {
                    return Err("the node is stopping".to_owned());
                };
                answer(&coord, consensus.as_ref(), &ctx.from, question).await
            }
        },
    );
    debug_assert!(registered.is_ok(), "{SERVICE} registered twice");
}

/// The answer to `question` from `asker`: a consensus-mode question goes
/// to the Raft group, every other is answered from this node's state.
async fn answer(
    coord: &Arc<Coord>,
    consensus: Option<&Consensus>,
    asker: &NodeName,
    question: Question,
) -> Result<Answer, String> {
    let group = || consensus.ok_or_else(|| "this node is not in consensus mode".to_owned());
    let report = |c: &Consensus, m: quicmesh_consensus::Membership| {
        Answer::ConsensusMembers(ConsensusMembersReport {
            asked: c.name().clone(),
            voters: m.voters,
            learners: m.learners,
            index: m.index,
        })
    };
    match question {
        Question::ConsensusMembers => {
            let c = group()?;
            let m = c.membership().await.map_err(|e| e.to_string())?;
            Ok(report(c, m))
        }
        Question::AddVoter { node, wait_ms } => {
            let c = group()?;
            info!(node = %node, asked_by = %asker, "asked to add a voter");
            let wait = Duration::from_millis(wait_ms);
            let m = c.add_voter(&node, wait).await.map_err(|e| e.to_string())?;
            Ok(report(c, m))
        }
        Question::RemoveVoter { node, wait_ms } => {
            let c = group()?;
            info!(node = %node, asked_by = %asker, "asked to remove a voter");
            let wait = Duration::from_millis(wait_ms);
            let m = c
                .remove_voter(&node, wait)
                .await
                .map_err(|e| e.to_string())?;
            Ok(report(c, m))
        }
        other => answer_here(coord, consensus, other),
    }
}

fn answer_here(
    coord: &Arc<Coord>,
    consensus: Option<&Consensus>,
    question: Question,
) -> Result<Answer, String> {
    let registry = coord.registry(None);
    let name_report = |name: &str| {
        registry.whereis(name).map(|r| NameReport {
            name: r.name,
            node: r.owner,
            service: r.service,
        })
    };
    Ok(match question {
        Question::Status => Answer::Status(Box::new(node_report(coord, consensus))),
        Question::Whereis { name } => Answer::Whereis(name_report(&name)),
        Question::Names { limit } => {
            let mut names = registry.registered_names();
            names.sort();
            let rows = names.iter().filter_map(|n| name_report(n)).collect();
            Answer::Names(Rows::first(rows, limit))
        }
        Question::Leaders { limit } => {
            let rows = coord
                .leaders()
                .into_iter()
                .map(|(election, change)| LeaderReport {
                    election,
                    leader: change.leader,
                    term: change.term.to_string(),
                })
                .collect();
            Answer::Leaders(Rows::first(rows, limit))
        }
        Question::Locks { limit } => {
            let rows = coord
                .locks()
                .into_iter()
                .map(|l| LockReport {
                    resource: l.resource,
                    holder: l.holder,
                    incarnation: l.incarnation,
                    token: l.token.map(|t| t.to_string()),
                })
                .collect();
            Answer::Locks(Rows::first(rows, limit))
        }
        // Answered by `answer`, through the Raft group.
        Question::ConsensusMembers | Question::AddVoter { .. } | Question::RemoveVoter { .. } => {
            return Err("a consensus question".to_owned());
        }
    })
}

fn node_report(coord: &Arc<Coord>, consensus: Option<&Consensus>) -> NodeReport {
    let status: Status = coord.mesh().status();
    let counters = status
        .counters
        .named()
        .into_iter()
        .chain(coord.counters().named())
        .map(|(k, v)| (k.to_owned(), v))
        .collect();
    NodeReport {
        node: status.node,
        version: env!("CARGO_PKG_VERSION").to_owned(),
        incarnation: status.incarnation,
        listen: status.listen.to_string(),
        ca_fingerprint: status.ca_fingerprint,
        hidden: status.hidden,
        connections: status.connections,
        peers: status.peers.iter().map(peer_report).collect(),
        names: coord.registry(None).registered_names().len(),
        locks: coord.locks().len(),
        elections: coord.leaders().len(),
        counters,
        consensus: consensus.map(|c| {
            let s = c.status();
            ConsensusReport {
                role: s.role.to_owned(),
                leader: s.leader,
                term: s.term,
                last_log_index: s.last_log_index,
                last_applied: s.last_applied,
                voters: s.voters,
            }
        }),
    }
}

fn peer_report(p: &PeerStatus) -> PeerReport {
    PeerReport {
        node: p.node.clone(),
        state: p.state.to_string(),
        rtt_us: p.rtt.map(micros),
        up_since_ms: p.connected_since.map(unix_ms),
        incarnation: p.incarnation,
        hidden: p.hidden,
        seed: p.seed,
        addrs: p.addrs.iter().map(ToString::to_string).collect(),
        last_down: p.last_down.as_ref().map(|(reason, at)| DownReport {
            reason: reason.to_string(),
            at_ms: unix_ms(*at),
        }),
        last_dial_error: p.last_dial_error.clone(),
    }
}

fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

fn unix_ms(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}
