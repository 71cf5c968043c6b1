//! Limits and defaults of RPC.

use std::time::Duration;

use quicmesh_mesh::duration;
use serde::{Deserialize, Serialize};

/// Limits and defaults of RPC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RpcConfig {
    /// Timeout of `call` and `cast` when none is given. Default 5 s.
    #[serde(default = "defaults::timeout", with = "duration")]
    pub timeout: Duration,
    /// Largest request or response body accepted or sent, in bytes; larger
    /// ones fail with `TooLarge`. Default 16 MiB.
    #[serde(default = "defaults::max_message")]
    pub max_message: usize,
    /// Calls from one peer served at once; more are refused with
    /// `Overloaded`. Default 256. (The memory their bodies hold is bounded
    /// by `max_buffered_per_peer`.)
    #[serde(default = "defaults::max_inbound")]
    pub max_inbound_per_peer: usize,
    /// Bytes of one peer's request bodies buffered at once; a call whose
    /// body would pass it is refused with `Overloaded`. At least
    /// `max_message`. Default 64 MiB.
    #[serde(default = "defaults::max_buffered_per_peer")]
    pub max_buffered_per_peer: usize,
    /// Bytes of all peers' request bodies buffered at once. At least
    /// `max_buffered_per_peer`. Default 256 MiB.
    #[serde(default = "defaults::max_buffered")]
    pub max_buffered: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            timeout: defaults::timeout(),
            max_message: defaults::max_message(),
            max_inbound_per_peer: defaults::max_inbound(),
            max_buffered_per_peer: defaults::max_buffered_per_peer(),
            max_buffered: defaults::max_buffered(),
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub(super) fn timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn max_message() -> usize {
        16 << 20
    }
    pub(super) fn max_inbound() -> usize {
        256
    }
    pub(super) fn max_buffered_per_peer() -> usize {
        64 << 20
    }
    pub(super) fn max_buffered() -> usize {
        256 << 20
    }
}
