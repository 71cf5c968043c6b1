//! The discovery layer of quicmesh: topologies whose strategies report
//! candidate peers, which the mesh dials and keeps.
//!
//! A topology polls its [`Strategy`] every polling interval. Each candidate
//! becomes a seed: dialled, and re-dialled with backoff whenever it is down,
//! whether or not later polls report it again. A poll that misses a peer
//! changes nothing; only a topology with `prune_after` forgets a candidate,
//! and only once no poll has reported it for that long (then the node stops
//! re-dialling it and disconnects it, unless another topology or the static
//! `seeds` still name it). A strategy that fails (a DNS server down or
//! answering garbage) is logged and retried at the next interval; the mesh
//! stays as it is.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use quicmesh_wire::{NodeAddr, NodeName};

mod config;
mod dns;
mod mdns;
mod runner;

pub use config::{TopologyConfig, TopologyError, validate};
pub use dns::{DnsPoll, DnsSrv};
pub use mdns::{Mdns, MdnsOptions, SERVICE_TYPE};
pub use runner::{Discovery, Topology};

/// A peer a strategy found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// Its node name (what its certificate must say) and port.
    pub node: NodeAddr,
    /// Where to dial it, when the strategy resolved that itself (say, an
    /// SRV target looked up through its own resolver); empty: resolve the
    /// name's host with the system resolver.
    pub addrs: Vec<SocketAddr>,
}

impl Candidate {
    /// A candidate dialled by resolving its host.
    pub fn new(node: NodeAddr) -> Self {
        Self {
            node,
            addrs: Vec::new(),
        }
    }

    /// A candidate dialled at `addrs`.
    pub fn at(node: NodeAddr, addrs: Vec<SocketAddr>) -> Self {
        Self { node, addrs }
    }
}

/// Why a strategy could not report its candidates this time.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum DiscoveryError {
    /// A DNS query failed: no answer, a server error or a bad record.
    #[error("DNS query for {query} failed: {detail}")]
    Dns {
        /// The name queried.
        query: String,
        /// What went wrong.
        detail: String,
    },
    /// Any other failure, described.
    #[error("{0}")]
    Other(String),
}

/// The future a [`Strategy`] returns.
pub type CandidatesFuture<'a> =
    Pin<Box<dyn Future<Output = Result<Vec<Candidate>, DiscoveryError>> + Send + 'a>>;

/// The future of [`Strategy::changed`] and [`Strategy::stop`].
pub type SignalFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of candidate peers, polled by its topology. Implement it for
/// discovery of your own: only `candidates` and `polling_interval` are
/// needed; the other methods serve strategies that hear of changes, can
/// check a peer at their source, or publish something.
pub trait Strategy: Send + Sync + 'static {
    /// The candidates now. An error keeps the previous ones.
    fn candidates(&self) -> CandidatesFuture<'_>;

    /// How long to wait between polls.
    fn polling_interval(&self) -> Duration;

    /// Resolves when the candidates may have changed, so that the topology
    /// polls before its interval is up (mDNS hears of new nodes at once).
    /// Default: never.
    fn changed(&self) -> SignalFuture<'_> {
        Box::pin(std::future::pending())
    }

    /// A candidate this strategy has reported for at least one polling
    /// interval is not connected: the strategy may check it at its source
    /// (mDNS re-verifies the record, which goes if nobody answers). Called
    /// after every poll while that lasts. Default: nothing.
    fn not_connected(&self, node: &NodeName) {
        let _ = node;
    }

    /// The node is shutting down: withdraw whatever the strategy publishes.
    /// Default: nothing.
    fn stop(&self) -> SignalFuture<'_> {
        Box::pin(async {})
    }
}

/// What a strategy that advertises the node needs to know of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LocalNode {
    /// The node's name.
    pub name: NodeName,
    /// The UDP address it is bound to (its actual port).
    pub addr: SocketAddr,
    /// Its cluster tag: the fingerprint of the CA public key it trusts,
    /// equal on every node of the cluster (see
    /// `quicmesh::Node::ca_fingerprint`).
    pub cluster_tag: String,
}

impl LocalNode {
    /// Describes a node.
    pub fn new(name: NodeName, addr: SocketAddr, cluster_tag: impl Into<String>) -> Self {
        Self {
            name,
            addr,
            cluster_tag: cluster_tag.into(),
        }
    }
}

/// A fixed list of nodes (libcluster's `Epmd` strategy).
#[derive(Debug, Clone)]
pub struct StaticNodes {
    nodes: Vec<NodeAddr>,
}

impl StaticNodes {
    /// Reports `nodes` at every poll.
    pub fn new(nodes: Vec<NodeAddr>) -> Self {
        Self { nodes }
    }
}

impl Strategy for StaticNodes {
    fn candidates(&self) -> CandidatesFuture<'_> {
        let found = self.nodes.iter().cloned().map(Candidate::new).collect();
        Box::pin(async move { Ok(found) })
    }

    fn polling_interval(&self) -> Duration {
        // Nothing changes; the poll only re-adds what pruning removed.
        Duration::from_secs(60)
    }
}
