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
    /// `Overloaded`. Bounds the memory one peer can make this node hold
    /// (about this many times `max_message`). Default 256.
    #[serde(default = "defaults::max_inbound")]
    pub max_inbound_per_peer: usize,
}

impl Default for RpcConfig {
    fn default() -> Self {
        Self {
            timeout: defaults::timeout(),
            max_message: defaults::max_message(),
            max_inbound_per_peer: defaults::max_inbound(),
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
}
