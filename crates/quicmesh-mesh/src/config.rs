//! What the mesh needs to run: timeouts, limits, failure detection and
//! re-dialling. The node's own configuration (`quicmesh::NodeConfig`) is
//! the serde form users write; it fills this in.

use std::net::SocketAddr;
use std::time::Duration;

use quicmesh_wire::NodeAddr;
use serde::{Deserialize, Serialize};

/// The mesh layer's settings, from the node's configuration.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MeshConfig {
    /// The UDP address to bind.
    pub listen: SocketAddr,
    /// A hidden node is never propagated and dials no node its peers know.
    pub hidden: bool,
    /// Nodes kept connected from the start.
    pub seeds: Vec<NodeAddr>,
    /// Failure detection.
    pub heartbeat: HeartbeatConfig,
    /// Re-dialling of seeds.
    pub reconnect: ReconnectConfig,
    /// Longest wait for a handshake, the `Hello` exchange and a stream's
    /// header.
    pub handshake_timeout: Duration,
    /// Largest control-stream frame accepted from a peer, in bytes.
    pub max_frame: usize,
    /// Cookie mode: validity of the node's own leaf certificate.
    pub leaf_validity: Duration,
    /// How long `shutdown` waits for the close to reach peers and for the
    /// node's tasks to end.
    pub shutdown_timeout: Duration,
    /// Most peers the node keeps in its table: names peers tell of past
    /// this are refused (seeds and nodes that connect still count).
    pub max_peers: usize,
    /// Most dials to nodes peers told of in progress at once.
    pub max_dials: usize,
    /// Whether large RPC calls to peers that offer it go on a bulk path:
    /// a connection of their own, driven by lower-priority threads, so
    /// small calls never wait behind them (see the README's "Small calls
    /// beside bulk data"). Default on.
    pub bulk_path: bool,
}

impl MeshConfig {
    /// Default `handshake_timeout`: 5 s.
    pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
    /// Default `max_frame`: 1 MiB.
    pub const DEFAULT_MAX_FRAME: usize = 1 << 20;
    /// Default `leaf_validity`: 24 h.
    pub const DEFAULT_LEAF_VALIDITY: Duration = Duration::from_secs(24 * 3600);
    /// Default `shutdown_timeout`: 2 s.
    pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(2);
    /// Default `max_peers`: 1024, well above a full mesh's practical size.
    pub const DEFAULT_MAX_PEERS: usize = 1024;
    /// Default `max_dials`: 32.
    pub const DEFAULT_MAX_DIALS: usize = 32;

    /// Settings with the documented defaults, listening on `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        Self {
            listen,
            hidden: false,
            seeds: Vec::new(),
            heartbeat: HeartbeatConfig::default(),
            reconnect: ReconnectConfig::default(),
            handshake_timeout: Self::DEFAULT_HANDSHAKE_TIMEOUT,
            max_frame: Self::DEFAULT_MAX_FRAME,
            leaf_validity: Self::DEFAULT_LEAF_VALIDITY,
            shutdown_timeout: Self::DEFAULT_SHUTDOWN_TIMEOUT,
            max_peers: Self::DEFAULT_MAX_PEERS,
            max_dials: Self::DEFAULT_MAX_DIALS,
            bulk_path: true,
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

mod defaults {
    use std::time::Duration;
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
}

/// Durations in configuration files, as strings with a unit: `"250ms"`,
/// `"5s"`, `"2m"`, `"1h"` (for `#[serde(with = "duration")]`).
pub mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    /// Writes whole seconds as `"Ns"`, anything else as `"Nms"`.
    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        if d.subsec_nanos() == 0 {
            s.serialize_str(&format!("{}s", d.as_secs()))
        } else {
            s.serialize_str(&format!("{}ms", d.as_millis()))
        }
    }

    /// Reads a duration string (see [`parse`]).
    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(serde::de::Error::custom)
    }

    /// `Option<Duration>` as an optional duration string.
    pub mod option {
        use std::time::Duration;

        use serde::{Deserialize, Deserializer, Serializer};

        /// Writes `Some` as a duration string, `None` as nothing.
        pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
            match d {
                Some(d) => super::serialize(d, s),
                None => s.serialize_none(),
            }
        }

        /// Reads a duration string as `Some`.
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
            let s = String::deserialize(d)?;
            super::parse(&s).map(Some).map_err(serde::de::Error::custom)
        }
    }

    /// Parses `<number><unit>` with unit `ms`, `s`, `m` or `h`; the error
    /// says how to write one.
    pub fn parse(s: &str) -> Result<Duration, String> {
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
    fn backoff_grows_caps_and_jitters() {
        let rc = ReconnectConfig::default();
        assert_eq!(rc.delay(0, 1.0), Duration::from_millis(200));
        assert_eq!(rc.delay(0, 0.0), Duration::from_millis(100));
        assert_eq!(rc.delay(3, 1.0), Duration::from_millis(1600));
        assert_eq!(rc.delay(40, 1.0), Duration::from_secs(10));
    }

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(duration::parse("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(duration::parse(" 2m "), Ok(Duration::from_secs(120)));
        assert!(duration::parse("5").unwrap_err().contains("unit must be"));
        assert!(
            duration::parse("ms")
                .unwrap_err()
                .contains("invalid duration")
        );
    }
}
