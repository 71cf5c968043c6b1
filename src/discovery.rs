//! Discovery: topologies whose strategies report candidate peers, which
//! membership dials and keeps.
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

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use quicmesh_wire::{NodeAddr, NodeName};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::config::duration;
use crate::membership::Membership;

mod dns;
mod mdns;

pub use dns::{DnsPoll, DnsSrv};
pub use mdns::{Mdns, MdnsOptions, SERVICE_TYPE};

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
    /// [`crate::Node::ca_fingerprint`]).
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

/// One topology as written in a config file's `[topologies.<name>]`; the
/// keys and defaults follow libcluster's strategies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "strategy", rename_all = "snake_case", deny_unknown_fields)]
#[non_exhaustive]
pub enum TopologyConfig {
    /// `strategy = "static"`: the nodes listed.
    Static {
        /// `["app1@10.0.0.5:4370", ...]`; the port defaults to 4370.
        nodes: Vec<NodeAddr>,
        /// Forget a node no poll reported for this long. Default: never.
        #[serde(
            default,
            with = "duration::option",
            skip_serializing_if = "Option::is_none"
        )]
        prune_after: Option<Duration>,
    },
    /// `strategy = "dns_poll"`: the A and AAAA records of `query`, each
    /// address a node `<node_basename>@<ip>`.
    DnsPoll {
        /// The name to look up.
        query: String,
        /// The part of the node names before `@`.
        node_basename: String,
        /// The nodes' UDP port. Default 4370.
        #[serde(default = "default_port")]
        port: u16,
        /// Time between lookups. Default 5 s.
        #[serde(default = "default_interval", with = "duration")]
        polling_interval: Duration,
        /// `"ip:port"` of the name server to ask. Default: the system's.
        #[serde(
            default,
            deserialize_with = "nameserver",
            skip_serializing_if = "Option::is_none"
        )]
        nameserver: Option<SocketAddr>,
        /// Forget a node no poll reported for this long. Default: never.
        #[serde(
            default,
            with = "duration::option",
            skip_serializing_if = "Option::is_none"
        )]
        prune_after: Option<Duration>,
    },
    /// `strategy = "kubernetes_dns"`: the A records of a headless service,
    /// `<service>.<namespace>.svc.<cluster_domain>`, each pod a node
    /// `<application_name>@<pod ip>`.
    KubernetesDns {
        /// The headless service's name.
        service: String,
        /// Its namespace. Default `default`.
        #[serde(default = "default_namespace")]
        namespace: String,
        /// The part of the node names before `@`.
        application_name: String,
        /// The nodes' UDP port. Default 4370.
        #[serde(default = "default_port")]
        port: u16,
        /// Time between lookups. Default 5 s.
        #[serde(default = "default_interval", with = "duration")]
        polling_interval: Duration,
        /// The cluster's DNS domain. Default `cluster.local`.
        #[serde(default = "default_cluster_domain")]
        cluster_domain: String,
        /// `"ip:port"` of the name server to ask. Default: the system's.
        #[serde(
            default,
            deserialize_with = "nameserver",
            skip_serializing_if = "Option::is_none"
        )]
        nameserver: Option<SocketAddr>,
        /// Forget a node no poll reported for this long. Default: never.
        #[serde(
            default,
            with = "duration::option",
            skip_serializing_if = "Option::is_none"
        )]
        prune_after: Option<Duration>,
    },
    /// `strategy = "kubernetes_dns_srv"`: the SRV records
    /// `_<port_name>._<protocol>.<service>.<namespace>.svc.<cluster_domain>`
    /// of a headless service (StatefulSets), each target a node
    /// `<application_name>@<target host>` at the record's port.
    KubernetesDnsSrv {
        /// The headless service's name.
        service: String,
        /// Its namespace. Default `default`.
        #[serde(default = "default_namespace")]
        namespace: String,
        /// The part of the node names before `@`.
        application_name: String,
        /// The service port's name. Default `quicmesh`.
        #[serde(default = "default_port_name")]
        port_name: String,
        /// The service port's protocol. Default `udp`.
        #[serde(default = "default_protocol")]
        protocol: String,
        /// Time between lookups. Default 5 s.
        #[serde(default = "default_interval", with = "duration")]
        polling_interval: Duration,
        /// The cluster's DNS domain. Default `cluster.local`.
        #[serde(default = "default_cluster_domain")]
        cluster_domain: String,
        /// `"ip:port"` of the name server to ask. Default: the system's.
        #[serde(
            default,
            deserialize_with = "nameserver",
            skip_serializing_if = "Option::is_none"
        )]
        nameserver: Option<SocketAddr>,
        /// Forget a node no poll reported for this long. Default: never.
        #[serde(
            default,
            with = "duration::option",
            skip_serializing_if = "Option::is_none"
        )]
        prune_after: Option<Duration>,
    },
    /// `strategy = "mdns"`: the nodes of this cluster on the local link,
    /// found with multicast DNS (see [`Mdns`]). For LANs; nothing is sent
    /// unless a topology says so.
    Mdns {
        /// Time between looks at the records heard (new ones are taken at
        /// once) and re-verifications of unconnected peers. Default 5 s.
        #[serde(default = "default_interval", with = "duration")]
        polling_interval: Duration,
        /// How long a re-verified record has to answer. Default 2 s.
        #[serde(default = "default_verify_timeout", with = "duration")]
        verify_timeout: Duration,
        /// Interface names to use, e.g. `["eth0"]`. Default: all but
        /// loopback.
        #[serde(
            default,
            deserialize_with = "interface_names",
            skip_serializing_if = "Vec::is_empty"
        )]
        interfaces: Vec<String>,
        /// Forget a node no poll reported for this long. Default: never.
        #[serde(
            default,
            with = "duration::option",
            skip_serializing_if = "Option::is_none"
        )]
        prune_after: Option<Duration>,
    },
}

/// Reads `nameserver`, saying which key holds a bad address.
fn nameserver<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let text = String::deserialize(d)?;
    text.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "nameserver must be \"ip:port\" (e.g. \"10.96.0.10:53\"), got {text:?}"
        ))
    })
}

/// Reads `interfaces`, saying which key is wrong (a tagged enum's own
/// errors do not name the key).
fn interface_names<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    Vec::<String>::deserialize(d).map_err(|e| {
        serde::de::Error::custom(format!(
            "interfaces must be a list of interface names (e.g. [\"eth0\"]): {e}"
        ))
    })
}

fn default_port() -> u16 {
    quicmesh_wire::DEFAULT_PORT
}
fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_verify_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_namespace() -> String {
    "default".to_owned()
}
fn default_cluster_domain() -> String {
    "cluster.local".to_owned()
}
fn default_port_name() -> String {
    "quicmesh".to_owned()
}
fn default_protocol() -> String {
    "udp".to_owned()
}

impl TopologyConfig {
    /// The strategy this config describes, for the node `local` (DNS
    /// strategies build their resolver here; mDNS starts advertising).
    pub fn strategy(&self, local: &LocalNode) -> Result<Arc<dyn Strategy>, DiscoveryError> {
        Ok(match self {
            Self::Static { nodes, .. } => Arc::new(StaticNodes::new(nodes.clone())),
            Self::DnsPoll {
                query,
                node_basename,
                port,
                polling_interval,
                nameserver,
                ..
            } => Arc::new(DnsPoll::new(
                query,
                node_basename,
                *port,
                *polling_interval,
                *nameserver,
            )?),
            Self::KubernetesDns {
                service,
                namespace,
                application_name,
                port,
                polling_interval,
                cluster_domain,
                nameserver,
                ..
            } => Arc::new(DnsPoll::new(
                &format!("{service}.{namespace}.svc.{cluster_domain}"),
                application_name,
                *port,
                *polling_interval,
                *nameserver,
            )?),
            Self::KubernetesDnsSrv {
                service,
                namespace,
                application_name,
                port_name,
                protocol,
                polling_interval,
                cluster_domain,
                nameserver,
                ..
            } => Arc::new(DnsSrv::new(
                &format!("_{port_name}._{protocol}.{service}.{namespace}.svc.{cluster_domain}"),
                application_name,
                *polling_interval,
                *nameserver,
            )?),
            Self::Mdns {
                polling_interval,
                verify_timeout,
                interfaces,
                ..
            } => Arc::new(Mdns::start(
                local,
                MdnsOptions {
                    polling_interval: *polling_interval,
                    verify_timeout: *verify_timeout,
                    interfaces: interfaces.clone(),
                },
            )?),
        })
    }

    /// The pruning grace period, if pruning is on.
    pub fn prune_after(&self) -> Option<Duration> {
        match self {
            Self::Static { prune_after, .. }
            | Self::DnsPoll { prune_after, .. }
            | Self::KubernetesDns { prune_after, .. }
            | Self::KubernetesDnsSrv { prune_after, .. }
            | Self::Mdns { prune_after, .. } => *prune_after,
        }
    }

    /// The polling interval set, for strategies that have one.
    fn polling_interval(&self) -> Option<Duration> {
        match self {
            Self::Static { .. } => None,
            Self::DnsPoll {
                polling_interval, ..
            }
            | Self::KubernetesDns {
                polling_interval, ..
            }
            | Self::KubernetesDnsSrv {
                polling_interval, ..
            }
            | Self::Mdns {
                polling_interval, ..
            } => Some(*polling_interval),
        }
    }

    /// Checks values serde cannot: zero durations.
    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.polling_interval().is_some_and(|d| d.is_zero()) {
            return Err("polling_interval must be above zero".to_owned());
        }
        if let Self::Mdns { verify_timeout, .. } = self
            && verify_timeout.is_zero()
        {
            return Err("verify_timeout must be above zero".to_owned());
        }
        Ok(())
    }
}

/// A topology ready to run.
#[derive(Clone)]
pub(crate) struct Topology {
    pub(crate) name: String,
    pub(crate) strategy: Arc<dyn Strategy>,
    pub(crate) prune_after: Option<Duration>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("name", &self.name)
            .field("prune_after", &self.prune_after)
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// The topologies of a config file for the node `local`; the first
    /// that cannot start, with its name.
    pub(crate) fn from_configs(
        configs: &BTreeMap<String, TopologyConfig>,
        local: &LocalNode,
    ) -> Result<Vec<Self>, (String, DiscoveryError)> {
        configs
            .iter()
            .map(|(name, c)| {
                Ok(Self {
                    name: name.clone(),
                    strategy: c.strategy(local).map_err(|e| (name.clone(), e))?,
                    prune_after: c.prune_after(),
                })
            })
            .collect()
    }
}

/// Starts polling `topology` until the node stops.
pub(crate) fn spawn(m: &Arc<Membership>, topology: Topology) {
    let span = info_span!("topology", node = %m.me, topology = %topology.name);
    let m2 = m.clone();
    m.tracker.spawn(run(m2, topology).instrument(span));
}

async fn run(m: Arc<Membership>, topology: Topology) {
    let strategy = &topology.strategy;
    let interval = strategy.polling_interval();
    // A poll may take at most one interval (and at least a few seconds).
    let patience = interval.max(Duration::from_secs(5));
    let mut seen: HashMap<NodeName, Seen> = HashMap::new();
    let mut failing = false;
    loop {
        let polled = tokio::time::timeout(patience, strategy.candidates()).await;
        let now = Instant::now();
        match polled {
            Ok(Ok(found)) => {
                if failing {
                    info!("discovery works again: {} candidates", found.len());
                    failing = false;
                }
                for candidate in found {
                    if candidate.node.name == m.me {
                        continue;
                    }
                    let name = candidate.node.name.clone();
                    m.discovered(&topology.name, candidate);
                    let seen = seen.entry(name.clone()).or_insert(Seen {
                        first: now,
                        last: now,
                    });
                    seen.last = now;
                    if now.duration_since(seen.first) >= interval && !m.is_up(&name) {
                        strategy.not_connected(&name);
                    }
                }
            }
            Ok(Err(e)) => {
                if !failing {
                    warn!("discovery failed, keeping the current peers and retrying: {e}");
                }
                failing = true;
            }
            Err(_) => {
                if !failing {
                    warn!("discovery timed out after {patience:?}, keeping the current peers");
                }
                failing = true;
            }
        }
        if let Some(grace) = topology.prune_after
            && !failing
        {
            seen.retain(|name, seen| {
                let keep = now.duration_since(seen.last) < grace;
                if !keep {
                    debug!(peer = %name, "not reported for {grace:?}: pruned");
                    m.undiscovered(&topology.name, name);
                }
                keep
            });
        }
        tokio::select! {
            biased;
            _ = m.token.cancelled() => break,
            _ = tokio::time::sleep(interval) => {}
            _ = strategy.changed() => {}
        }
    }
    strategy.stop().await;
}

/// When a topology's poll first and last reported a candidate.
#[derive(Debug, Clone, Copy)]
struct Seen {
    first: Instant,
    last: Instant,
}
