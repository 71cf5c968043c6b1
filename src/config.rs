//! Node configuration: one serde struct, so the builder, a TOML file and
//! the CLI all set the same fields. Every field documents its default.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use quicmesh_wire::{NodeAddr, NodeName};
use serde::{Deserialize, Serialize};

use crate::discovery::TopologyConfig;

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
        /// The cookie file (mode 0600, created if missing). Default
        /// `~/.quicmesh.cookie`; `QUICMESH_COOKIE` wins over it.
        #[serde(default)]
        cookie_file: Option<PathBuf>,
    },
    /// Certificates issued by `quicmesh certs` (or any CA): PEM files.
    Certificate {
        /// The CA certificate to trust.
        ca: PathBuf,
        /// This node's certificate (its URI SAN must name the node).
        cert: PathBuf,
        /// This node's private key.
        key: PathBuf,
    },
}

impl Default for IdentityConfig {
    fn default() -> Self {
        Self::Cookie {
            cookie: None,
            cookie_file: None,
        }
    }
}

/// Failure detection: every `interval` a node sends a heartbeat datagram
/// to each peer; a peer from which *nothing* (heartbeat or any other
/// packet) arrived for `timeout` is declared down. Bulk traffic therefore
/// never causes a false `NodeDown`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeartbeatConfig {
    /// Default 500 ms.
    #[serde(default = "defaults::hb_interval", with = "duration")]
    pub interval: Duration,
    /// Default 3 s: a SIGKILLed peer is detected in about 3 s.
    #[serde(default = "defaults::hb_timeout", with = "duration")]
    pub timeout: Duration,
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        Self {
            interval: defaults::hb_interval(),
            timeout: defaults::hb_timeout(),
        }
    }
}

/// Capped exponential backoff with jitter for re-dialling seeds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconnectConfig {
    /// First delay after a failed dial. Default 200 ms.
    #[serde(default = "defaults::backoff_initial", with = "duration")]
    pub initial: Duration,
    /// Largest delay. Default 10 s.
    #[serde(default = "defaults::backoff_max", with = "duration")]
    pub max: Duration,
}

impl Default for ReconnectConfig {
    fn default() -> Self {
        Self {
            initial: defaults::backoff_initial(),
            max: defaults::backoff_max(),
        }
    }
}

impl ReconnectConfig {
    /// The delay before retry number `attempt` (0-based): `initial * 2^n`
    /// capped at `max`, then scaled by a random factor in [0.5, 1.0) so
    /// nodes that failed together do not retry together.
    pub fn delay(&self, attempt: u32, jitter: f64) -> Duration {
        let exp = self
            .initial
            .saturating_mul(1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX));
        exp.min(self.max)
            .mul_f64(0.5 + jitter.clamp(0.0, 1.0) / 2.0)
    }
}

/// Limits and defaults of RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// Timeout of `call` and `cast` when none is given. Default 5 s.
    #[serde(default = "defaults::rpc_timeout", with = "duration")]
    pub timeout: Duration,
    /// Largest request or response body accepted or sent, in bytes; larger
    /// ones fail with `TooLarge`. Default 16 MiB.
    #[serde(default = "defaults::max_message")]
    pub max_message: usize,
    /// Calls from one peer served at once; more are refused with
    /// `Overloaded`. Bounds the memory one peer can make this node hold
    /// (about this many times `max_message`). Default 256.
    #[serde(default = "defaults::max_inbound")]
    pub max_inbound_per_peer: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            timeout: defaults::rpc_timeout(),
            max_message: defaults::max_message(),
            max_inbound_per_peer: defaults::max_inbound(),
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
        for (topology, t) in &self.topologies {
            t.validate().map_err(|detail| ConfigError::Topology {
                topology: topology.clone(),
                detail,
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
        if self.leaf_validity < Duration::from_secs(600) {
            return Err(ConfigError::LeafValidityTooShort(self.leaf_validity));
        }
        Ok(())
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
    pub(super) fn handshake_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn max_frame() -> usize {
        1 << 20
    }
    pub(super) fn leaf_validity() -> Duration {
        Duration::from_secs(24 * 3600)
    }
    pub(super) fn shutdown_timeout() -> Duration {
        Duration::from_secs(2)
    }
    pub(super) fn hb_interval() -> Duration {
        Duration::from_millis(500)
    }
    pub(super) fn hb_timeout() -> Duration {
        Duration::from_secs(3)
    }
    pub(super) fn backoff_initial() -> Duration {
        Duration::from_millis(200)
    }
    pub(super) fn backoff_max() -> Duration {
        Duration::from_secs(10)
    }
    pub(super) fn rpc_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn max_message() -> usize {
        16 << 20
    }
    pub(super) fn max_inbound() -> usize {
        256
    }
}

/// Durations as strings with a unit: `"250ms"`, `"5s"`, `"2m"`, `"1h"`.
pub(crate) mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(crate) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// `Option<Duration>` as an optional duration string.
    pub(crate) mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        pub(crate) fn serialize<S: Serializer>(
            d: &Option<Duration>,
            s: S,
        ) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
            d: D,
        ) -> Result<Option<Duration>, D::Error> {
            let s = String::deserialize(d)?;
            super::parse(&s).map(Some).map_err(serde::de::Error::custom)
        }
    }

    /// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`.
    pub(crate) fn parse(s: &str) -> Result<Duration, String> {
        let s = s.trim();
        let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
        let (num, unit) = s.split_at(split);
        let n: u64 = num
            .parse()
            .map_err(|_| format!("invalid duration {s:?}: write e.g. \"500ms\", \"5s\", \"2m\""))?;
        let unit_ms = match unit {
            "ms" => 1,
            "s" => 1000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => {
                return Err(format!(
                    "invalid duration {s:?}: the unit must be ms, s, m or h"
                ));
            }
        };
        Ok(Duration::from_millis(n.saturating_mul(unit_ms)))
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
    fn backoff_grows_caps_and_jitters() {
        let rc = ReconnectConfig::default();
        assert_eq!(rc.delay(0, 1.0), Duration::from_millis(200));
        assert_eq!(rc.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(rc.delay(3, 1.0), Duration::from_millis(1600));
        assert_eq!(rc.delay(40, 1.0), Duration::from_secs(10));
    }
}
