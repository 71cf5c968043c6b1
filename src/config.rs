//! Node configuration: one serde struct, so the builder, a TOML file and
//! the CLI all set the same fields. Every field documents its default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quicmesh_consensus::ConsensusConfig;
use quicmesh_discovery::TopologyConfig;
use quicmesh_mesh::{HeartbeatConfig, MeshConfig, ReconnectConfig, duration};
use quicmesh_rpc::RpcConfig;
use quicmesh_wire::{NodeAddr, NodeName};
use serde::{Deserialize, Serialize};

/// Everything a node needs to start.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// The node's name, `name@host`. Required.
    pub name: Option<NodeName>,
    /// UDP address to listen on. Default: the name's host if it is an IP
    /// address, else `0.0.0.0`, on port 4370.
    #[serde(default)]
    pub listen: Option<SocketAddr>,
    /// A hidden node connects but is never propagated to other nodes and
    /// does not dial the nodes its peers know. Default `false`.
    #[serde(default)]
    pub hidden: bool,
    /// Nodes to dial at start and to keep re-dialling (with backoff) while
    /// they are absent: static discovery. Default: none.
    #[serde(default)]
    pub seeds: Vec<NodeAddr>,
    /// Discovery: named topologies, each a strategy and its options
    /// (`[topologies.<name>]` in a file). Default: none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub topologies: BTreeMap<String, TopologyConfig>,
    /// Who this node is and whom it trusts. Default: cookie mode with the
    /// cookie from `QUICMESH_COOKIE` or `~/.quicmesh.cookie`.
    #[serde(default)]
    pub identity: IdentityConfig,
    /// Failure detection.
    #[serde(default)]
    pub heartbeat: HeartbeatConfig,
    /// Re-dialling of seeds.
    #[serde(default)]
    pub reconnect: ReconnectConfig,
    /// Remote procedure calls.
    #[serde(default)]
    pub rpc: RpcConfig,
    /// Longest wait for a dial's QUIC + TLS handshake and the `Hello`
    /// exchange. Default 5 s.
    #[serde(default = "defaults::handshake_timeout", with = "duration")]
    pub handshake_timeout: Duration,
    /// Largest control-stream frame accepted from a peer, in bytes.
    /// Default 1 MiB.
    #[serde(default = "defaults::max_frame")]
    pub max_frame: usize,
    /// Cookie mode: validity of the leaf certificate each node mints for
    /// itself; it is renewed when a third is left. Default 24 h.
    #[serde(default = "defaults::leaf_validity", with = "duration")]
    pub leaf_validity: Duration,
    /// How long `shutdown` waits for peers to acknowledge the close.
    /// Default 2 s.
    #[serde(default = "defaults::shutdown_timeout", with = "duration")]
    pub shutdown_timeout: Duration,
    /// Most peers the node keeps in its table (up, down, being dialled,
    /// seeds); names peers tell of past this are refused and counted
    /// (`Status::counters.peers_refused`), so one peer cannot make the node
    /// dial thousands of made-up nodes. Default 1024.
    #[serde(default = "defaults::max_peers")]
    pub max_peers: usize,
    /// Most dials to nodes peers told of in progress at once; the others
    /// wait their turn. Default 32.
    #[serde(default = "defaults::max_dials")]
    pub max_dials: usize,
    /// Large calls (bodies past 16 KiB) to a peer go on a bulk path: a
    /// QUIC connection of their own, to a second UDP port of the peer
    /// (ephemeral, on the listening address; told to peers over the
    /// mesh), driven by threads at a lower CPU priority, so small calls
    /// never wait behind them. Default `true`; `false` keeps all traffic
    /// on the one port (e.g. behind a firewall that opens only it).
    #[serde(default = "defaults::bulk_path")]
    pub bulk_path: bool,
    /// Where `quicmesh node` serves Prometheus metrics (`GET /metrics`,
    /// e.g. `"127.0.0.1:9464"`). The library serves nothing itself: an
    /// application embedding a node calls `Node::register_metrics` on its
    /// own registry. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<SocketAddr>,
    /// Which coordination the node runs: `"global"` (`:global`
    /// semantics: `Node::lock`, `Node::registry`, `Node::election`) or
    /// `"consensus"` (a Raft group of the `[consensus]` voters, through
    /// `Node::consensus`). Default `"global"`.
    #[serde(default)]
    pub coordination: Coordination,
    /// Consensus mode's voters, data directory and timings; required when
    /// `coordination = "consensus"`. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consensus: Option<ConsensusConfig>,
}

/// Which coordination a node runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Coordination {
    /// `:global` semantics among the connected nodes; each side of a
    /// partition goes on alone (see `quicmesh_coord`).
    #[default]
    Global,
    /// Global mode, plus a Raft group over the mesh whose locks, elections
    /// and names are linearizable and never granted on a minority side
    /// (see `quicmesh_consensus`).
    Consensus,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            name: None,
            listen: None,
            hidden: false,
            seeds: Vec::new(),
            topologies: BTreeMap::new(),
            identity: IdentityConfig::default(),
            heartbeat: HeartbeatConfig::default(),
            reconnect: ReconnectConfig::default(),
            rpc: RpcConfig::default(),
            handshake_timeout: defaults::handshake_timeout(),
            max_frame: defaults::max_frame(),
            leaf_validity: defaults::leaf_validity(),
            shutdown_timeout: defaults::shutdown_timeout(),
            max_peers: defaults::max_peers(),
            max_dials: defaults::max_dials(),
            bulk_path: defaults::bulk_path(),
            metrics: None,
            coordination: Coordination::Global,
            consensus: None,
        }
    }
}

/// How a node proves who it is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "mode", rename_all = "lowercase", deny_unknown_fields)]
#[non_exhaustive]
pub enum IdentityConfig {
    /// A shared cookie: the cluster CA is derived from it.
    Cookie {
        /// The cookie itself. Prefer `QUICMESH_COOKIE` or a cookie file:
        /// a config file is often readable by more people than a secret
        /// should be. Default: none.
        #[serde(default)]
        cookie: Option<String>,
        /// A cookie file (mode 0600), which must exist; it wins over
        /// `QUICMESH_COOKIE`. Default: none, then `QUICMESH_COOKIE`, then
        /// `~/.quicmesh.cookie` (created if missing).
        #[serde(default)]
        cookie_file: Option<PathBuf>,
        /// During a cookie rollover, the cookie being replaced: nodes still
        /// on it are trusted too (see the README, "Rotating certificates
        /// and cookies"). Default: none.
        #[serde(default)]
        previous_cookie: Option<String>,
        /// The previous cookie from a file (mode 0600), which must exist;
        /// wins over `previous_cookie`. Default: none.
        #[serde(default)]
        previous_cookie_file: Option<PathBuf>,
    },
    /// Certificates issued by `quicmesh certs` (or any CA): PEM files,
    /// read again on `Node::reload_identity` (`SIGHUP` for `quicmesh node`).
    Certificate {
        /// The CA certificates to trust: one, or two while a CA is rotated.
        ca: PathBuf,
        /// This node's certificate (its URI SAN must name the node).
        cert: PathBuf,
        /// This node's private key.
        key: PathBuf,
        /// A revocation list of the CA (`quicmesh certs revoke` writes
        /// one): peers it names are refused, and dropped at a reload.
        /// Default: none.
        #[serde(default)]
        crl: Option<PathBuf>,
    },
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self::Cookie {
            cookie: None,
            cookie_file: None,
            previous_cookie: None,
            previous_cookie_file: None,
        }
    }
}

/// A configuration value that cannot work, with the values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The node name does not parse.
    #[error("invalid node name: {0}")]
    BadName(#[from] quicmesh_wire::NameError),
    /// `coordination = "consensus"` without a `[consensus]` section.
    #[error("coordination = \"consensus\" needs a [consensus] section naming the voters")]
    MissingConsensus,
    /// A `[consensus]` setting cannot work.
    #[error("consensus: {0}")]
    Consensus(#[from] quicmesh_consensus::ConfigError),
    /// No node name was given.
    #[error("the node needs a name: set `name = \"app1@host\"`")]
    MissingName,
    /// The heartbeat interval is zero.
    #[error("heartbeat.interval must be above zero")]
    ZeroHeartbeat,
    /// The heartbeat timeout leaves room for fewer than two heartbeats.
    #[error(
        "heartbeat.timeout ({timeout:?}) must be at least twice heartbeat.interval ({interval:?})"
    )]
    HeartbeatTimeoutTooShort {
        /// The interval.
        interval: Duration,
        /// The timeout.
        timeout: Duration,
    },
    /// The backoff bounds are reversed or zero.
    #[error(
        "reconnect.initial ({initial:?}) must be above zero and at most reconnect.max ({max:?})"
    )]
    BadBackoff {
        /// The initial delay.
        initial: Duration,
        /// The cap.
        max: Duration,
    },
    /// A discovery topology is set up wrongly.
    #[error("topologies.{topology}: {detail}")]
    Topology {
        /// The topology's name.
        topology: String,
        /// What is wrong.
        detail: String,
    },
    /// A frame limit too small for a `Hello`.
    #[error("max_frame ({0}) must be at least 4096 bytes")]
    FrameLimitTooSmall(usize),
    /// The handshake timeout is zero.
    #[error("handshake_timeout must be above zero")]
    ZeroHandshakeTimeout,
    /// The leaf validity is under ten minutes.
    #[error("leaf_validity ({0:?}) must be at least 10 minutes")]
    LeafValidityTooShort(Duration),
    /// An RPC limit is zero.
    #[error("rpc.{0} must be above zero")]
    ZeroRpcLimit(&'static str),
    /// The RPC buffer budgets cannot hold one message, or the node's is
    /// smaller than one peer's.
    #[error(
        "rpc.max_buffered ({max_buffered}) ≥ rpc.max_buffered_per_peer \
         ({max_buffered_per_peer}) ≥ rpc.max_message ({max_message}) must hold"
    )]
    RpcBuffers {
        /// `rpc.max_message`.
        max_message: usize,
        /// `rpc.max_buffered_per_peer`.
        max_buffered_per_peer: usize,
        /// `rpc.max_buffered`.
        max_buffered: usize,
    },
    /// A node limit is zero.
    #[error("{0} must be above zero")]
    ZeroLimit(&'static str),
    /// The TOML file does not parse or has an unknown key.
    #[error("config file: {0}")]
    Toml(String),
}

impl NodeConfig {
    /// Parses a TOML document.
    pub fn from_toml(s: &str) -> Result<Self, ConfigError> {
        toml::from_str(s).map_err(|e| ConfigError::Toml(e.to_string()))
    }

    /// Checks the values against each other.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_none() {
            return Err(ConfigError::MissingName);
        }
        if self.coordination == Coordination::Consensus {
            self.consensus
                .as_ref()
                .ok_or(ConfigError::MissingConsensus)?
                .validate()?;
        }
        for (topology, t) in &self.topologies {
            quicmesh_discovery::validate(t).map_err(|e| ConfigError::Topology {
                topology: topology.clone(),
                detail: e.to_string(),
            })?;
        }
        let hb = self.heartbeat;
        if hb.interval.is_zero() {
            return Err(ConfigError::ZeroHeartbeat);
        }
        if hb.timeout < hb.interval * 2 {
            return Err(ConfigError::HeartbeatTimeoutTooShort {
                interval: hb.interval,
                timeout: hb.timeout,
            });
        }
        let rc = self.reconnect;
        if rc.initial.is_zero() || rc.initial > rc.max {
            return Err(ConfigError::BadBackoff {
                initial: rc.initial,
                max: rc.max,
            });
        }
        if self.max_frame < 4096 {
            return Err(ConfigError::FrameLimitTooSmall(self.max_frame));
        }
        if self.handshake_timeout.is_zero() {
            return Err(ConfigError::ZeroHandshakeTimeout);
        }
        if self.rpc.timeout.is_zero() {
            return Err(ConfigError::ZeroRpcLimit("timeout"));
        }
        if self.rpc.max_message == 0 {
            return Err(ConfigError::ZeroRpcLimit("max_message"));
        }
        if self.rpc.max_inbound_per_peer == 0 {
            return Err(ConfigError::ZeroRpcLimit("max_inbound_per_peer"));
        }
        let rpc = self.rpc;
        if rpc.max_buffered_per_peer < rpc.max_message
            || rpc.max_buffered < rpc.max_buffered_per_peer
        {
            return Err(ConfigError::RpcBuffers {
                max_message: rpc.max_message,
                max_buffered_per_peer: rpc.max_buffered_per_peer,
                max_buffered: rpc.max_buffered,
            });
        }
        if self.max_peers == 0 {
            return Err(ConfigError::ZeroLimit("max_peers"));
        }
        if self.max_dials == 0 {
            return Err(ConfigError::ZeroLimit("max_dials"));
        }
        if self.leaf_validity < Duration::from_secs(600) {
            return Err(ConfigError::LeafValidityTooShort(self.leaf_validity));
        }
        Ok(())
    }

    /// What the mesh layer takes of this configuration.
    pub(crate) fn mesh(&self) -> MeshConfig {
        let mut mesh = MeshConfig::new(self.listen_addr());
        mesh.hidden = self.hidden;
        mesh.seeds.clone_from(&self.seeds);
        mesh.heartbeat = self.heartbeat;
        mesh.reconnect = self.reconnect;
        mesh.handshake_timeout = self.handshake_timeout;
        mesh.max_frame = self.max_frame;
        mesh.leaf_validity = self.leaf_validity;
        mesh.shutdown_timeout = self.shutdown_timeout;
        mesh.max_peers = self.max_peers;
        mesh.max_dials = self.max_dials;
        mesh.bulk_path = self.bulk_path;
        mesh
    }

    /// The listen address in force: `listen`, or the default described there.
    pub fn listen_addr(&self) -> SocketAddr {
        if let Some(a) = self.listen {
            return a;
        }
        let ip = self
            .name
            .as_ref()
            .and_then(|n| n.host().trim_matches(|c| c == '[' || c == ']').parse().ok())
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        SocketAddr::new(ip, quicmesh_wire::DEFAULT_PORT)
    }
}

mod defaults {
    use std::time::Duration;

    use quicmesh_mesh::MeshConfig;

    pub(super) fn handshake_timeout() -> Duration {
        MeshConfig::DEFAULT_HANDSHAKE_TIMEOUT
    }
    pub(super) fn max_frame() -> usize {
        MeshConfig::DEFAULT_MAX_FRAME
    }
    pub(super) fn leaf_validity() -> Duration {
        MeshConfig::DEFAULT_LEAF_VALIDITY
    }
    pub(super) fn shutdown_timeout() -> Duration {
        MeshConfig::DEFAULT_SHUTDOWN_TIMEOUT
    }
    pub(super) fn max_peers() -> usize {
        MeshConfig::DEFAULT_MAX_PEERS
    }
    pub(super) fn max_dials() -> usize {
        MeshConfig::DEFAULT_MAX_DIALS
    }
    pub(super) fn bulk_path() -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn toml_round_trip_and_defaults() {
        let cfg = NodeConfig::from_toml(
            r#"
            name = "a@127.0.0.1"
            seeds = ["b@127.0.0.1:4371"]
            [heartbeat]
            interval = "250ms"
            timeout = "2s"
            [identity]
            mode = "certificate"
            ca = "certs/ca.pem"
            cert = "certs/a.pem"
            key = "certs/a.key"
            "#,
        )
        .unwrap();
        cfg.validate().unwrap();
        assert_eq!(cfg.heartbeat.interval, Duration::from_millis(250));
        assert_eq!(cfg.listen_addr(), "127.0.0.1:4370".parse().unwrap());
        assert_eq!(cfg.seeds[0].port, 4371);
        assert!(matches!(cfg.identity, IdentityConfig::Certificate { .. }));
        let back = NodeConfig::from_toml(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
    }

    #[test]
    fn bad_configs_name_the_problem() {
        let e =
            NodeConfig::from_toml("name = \"a@h\"\nhandshake_timeout = \"5 parsecs\"").unwrap_err();
        assert!(e.to_string().contains("unit must be"), "{e}");
        let e = NodeConfig::from_toml("name = \"a@h\"\nlisten_port = 3").unwrap_err();
        assert!(e.to_string().contains("listen_port"), "{e}");
        let e = NodeConfig::from_toml("name = \"nope\"").unwrap_err();
        assert!(e.to_string().contains("name@host"), "{e}");
        let mut cfg = NodeConfig {
            name: Some("a@h".parse().unwrap()),
            ..Default::default()
        };
        cfg.heartbeat.timeout = Duration::from_millis(600);
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::HeartbeatTimeoutTooShort { .. })
        ));
        assert_eq!(
            NodeConfig::default().validate(),
            Err(ConfigError::MissingName)
        );
        assert_eq!(
            cfg.listen_addr(),
            "0.0.0.0:4370".parse().unwrap(),
            "a DNS host listens on all addresses"
        );
    }

    #[test]
    fn consensus_mode_needs_its_section_and_global_stays_the_default() {
        let global = NodeConfig::from_toml("name = \"a@h\"").unwrap();
        assert_eq!(global.coordination, Coordination::Global);
        assert_eq!(global.consensus, None);
        assert!(!toml::to_string(&global).unwrap().contains("[consensus]"));
        let e = NodeConfig::from_toml("name = \"a@h\"\ncoordination = \"consensus\"");
        assert_eq!(e.unwrap().validate(), Err(ConfigError::MissingConsensus));
        let cfg = NodeConfig::from_toml(
            r#"
            name = "a@h"
            coordination = "consensus"
            [consensus]
            voters = ["a@h", "b@h", "c@h"]
            data_dir = "/var/lib/quicmesh"
            session_ttl = "4s"
            "#,
        )
        .unwrap();
        let c = cfg.consensus.as_ref().unwrap();
        assert_eq!(c.voters.len(), 3);
        assert_eq!(c.session_ttl, Duration::from_secs(4));
        assert_eq!(cfg.validate(), Ok(()));
        let back = NodeConfig::from_toml(&toml::to_string(&cfg).unwrap()).unwrap();
        assert_eq!(back, cfg);
        let e = NodeConfig::from_toml(
            "name = \"a@h\"\ncoordination = \"consensus\"\n[consensus]\nvoters = []",
        );
        let e = e.unwrap().validate();
        assert!(matches!(e, Err(ConfigError::Consensus(_))), "{e:?}");
    }

    #[test]
    fn limits_that_cannot_work_are_refused_with_their_values() {
        let named = || NodeConfig {
            name: Some("a@h".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(named().validate(), Ok(()));
        let mut cfg = named();
        cfg.max_peers = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::ZeroLimit("max_peers")));
        let mut cfg = named();
        cfg.max_dials = 0;
        assert_eq!(cfg.validate(), Err(ConfigError::ZeroLimit("max_dials")));
        let mut cfg = named();
        cfg.rpc.max_buffered_per_peer = cfg.rpc.max_message - 1;
        let e = cfg.validate().unwrap_err();
        assert!(matches!(e, ConfigError::RpcBuffers { .. }), "{e}");
        assert!(e.to_string().contains("rpc.max_buffered_per_peer"), "{e}");
        let mut cfg = named();
        cfg.rpc.max_buffered = cfg.rpc.max_buffered_per_peer - 1;
        assert!(matches!(
            cfg.validate(),
            Err(ConfigError::RpcBuffers { .. })
        ));
        let cfg = NodeConfig::from_toml(
            "name = \"a@h\"\nmax_peers = 16\n[rpc]\nmax_buffered = 1073741824",
        )
        .unwrap();
        assert_eq!((cfg.max_peers, cfg.rpc.max_buffered), (16, 1 << 30));
        assert_eq!(cfg.validate(), Ok(()));
    }
}
