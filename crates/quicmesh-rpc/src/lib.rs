//! The RPC layer of quicmesh: typed services, `call`, `cast`,
//! `multicall`, streaming calls, and application protocols (raw streams
//! by name), all on the mesh's connections.
//!
//! [`Rpc`] is the handle: it looks peers up through the mesh
//! ([`quicmesh_mesh::Mesh::peer`]) and keeps its own state per
//! connection (the caller's lane, the callee's call permits). Its stream
//! kinds (`Rpc`, `RpcLane`, `RpcReply`, `App`) are served by handlers it
//! adds to the mesh's router ([`Rpc::route`]).
//!
//! A call whose request is small (up to [`quicmesh_wire::LANE_MAX_BODY`])
//! travels on its caller's lane to that peer, a long-lived stream shared by
//! calls and tagged with call ids (see `lane`); a larger call runs on a
//! bidirectional QUIC stream of its own, as do streaming calls. Large
//! messages never share a stream with small ones, and small streams are
//! sent first, so a large call in flight never delays a small one behind
//! it (no head-of-line blocking between calls). Cancelling a call resets
//! its stream or sends a `Cancel` on the lane. The request carries the
//! caller's timeout; the callee drops the handler's future when the caller
//! cancels or the deadline passes.
//!
//! ```text
//! caller                                   callee (per connection: a semaphore of
//!   open stream ─ RpcHeader + body ──▶      rpc.max_inbound_per_peer permits)
//!                                           service? permit? body ≤ max_message?
//!                                           spawn handler (panics caught)
//!   ◀── RpcStatus (+ body) ──────────────   select: handler | caller stopped | deadline
//! ```

mod app;
mod budget;
mod callee;
mod client;
mod codec;
mod config;
mod connections;
mod error;
mod handlers;
mod lane;
mod metrics;
mod rpc;
mod server;
mod service;
mod stream;

use quicmesh_wire::NodeName;

pub use app::{IncomingStream, OpenError, ProtocolListener, is_unknown_protocol};
pub use config::RpcConfig;
pub use error::{RegisterError, RpcError, Side};
pub use metrics::{MAX_SERVICES, OTHER_SERVICE, OUTCOMES, RpcMetrics, ServiceCalls};
pub use rpc::{RESERVED_PREFIX, Rpc};
pub use stream::{Requests, Responses, StreamingCall};

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallContext {
    /// The calling node, as its certificate names it.
    pub from: NodeName,
    /// The service called.
    pub service: String,
    /// When the caller stops waiting; the handler's future is dropped then.
    pub deadline: tokio::time::Instant,
}

/// Messages up to this size are "small": their streams are sent before
/// the data of larger ones, so a 64-byte call never waits behind a 1 MiB
/// one on the same connection.
const SMALL_MESSAGE: usize = 64 * 1024;

/// The QUIC send priority for a message of `len` bytes (higher goes
/// first): small messages above bulk data.
pub(crate) fn priority_for(len: usize) -> i32 {
    if len <= SMALL_MESSAGE { 1 } else { 0 }
}

/// Longest service or protocol name, in bytes.
const MAX_NAME: usize = 255;

pub(crate) fn check_name(name: &str) -> Result<(), RegisterError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(RegisterError::BadName(name.to_owned()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    /// Handles cross tasks and threads: they must stay `Send + Sync`.
    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
        send_sync::<super::Rpc>();
        send_sync::<super::CallContext>();
        send_sync::<super::RpcConfig>();
    }
}
