//! Topologies as a config file writes them (`[topologies.<name>]`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quicmesh_mesh::duration;
use quicmesh_wire::NodeAddr;
use serde::{Deserialize, Serialize};

use crate::{DiscoveryError, DnsPoll, DnsSrv, LocalNode, Mdns, MdnsOptions, StaticNodes, Strategy};

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
}

/// Checks what serde cannot in `config`: zero durations.
pub fn validate(config: &TopologyConfig) -> Result<(), TopologyError> {
    if config.polling_interval().is_some_and(|d| d.is_zero()) {
        return Err(TopologyError::ZeroPollingInterval);
    }
    if let TopologyConfig::Mdns { verify_timeout, .. } = config
        && verify_timeout.is_zero()
    {
        return Err(TopologyError::ZeroVerifyTimeout);
    }
    Ok(())
}

/// A topology value serde accepts but that cannot work.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// `polling_interval` is zero.
    #[error("polling_interval must be above zero")]
    ZeroPollingInterval,
    /// `verify_timeout` (mDNS) is zero.
    #[error("verify_timeout must be above zero")]
    ZeroVerifyTimeout,
}
