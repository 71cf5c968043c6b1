//! The mesh layer of quicmesh: one QUIC endpoint per node, the peer table
//! and its handshake, failure detection, transitive mesh formation,
//! reconnects, node events and status, and the stream router that hands
//! each incoming stream to the subsystem registered for its kind.
//!
//! The layers above (discovery, RPC, coordination) see a [`Mesh`] handle:
//! look a peer up ([`Mesh::peer`] → [`Peer`]: its verified name and
//! connection, and [`Peer::violation`] to drop it for breaking a
//! protocol), keep a node connected ([`Mesh::add_seed`],
//! [`Mesh::disconnect`]), follow [`NodeEvent`]s, and spawn tasks that
//! shutdown waits for ([`Tasks`]). They serve streams by registering a
//! [`StreamHandler`] for their [`StreamKind`](quicmesh_wire::StreamKind)
//! in the [`Router`] given to [`Mesh::start`]; the mesh knows none of
//! them by name.
//!
//! ```text
//! quicmesh (Node) ─▶ coord ─▶ rpc ─▶ mesh ─▶ identity, wire
//!                  ╰▶ discovery ───╯
//! ```

mod bulk;
mod config;
mod error;
mod event;
mod histogram;
pub mod io;
mod log_limit;
mod membership;
mod metrics;
mod peer;
mod router;
mod status;
mod tasks;
mod transport;

pub use bulk::{BULK_NICE, MAX_BULK_HANDSHAKES};
pub use config::{HeartbeatConfig, MeshConfig, ReconnectConfig, duration};
pub use error::{BindError, ConnectError, PingError, WaitError};
pub use event::{DownReason, EventError, EventStream, NodeEvent};
pub use histogram::{Histogram, HistogramSnapshot, LATENCY_BUCKETS};
pub use membership::{MAX_HANDSHAKES_PER_SOURCE, Mesh};
pub use metrics::{MeshMetrics, PeerCounts, auth_failure_kind};
pub use peer::{Peer, Violation};
pub use router::{HandlerFuture, Router, StreamHandler, refuse};
pub use status::{CounterSnapshot, PeerState, PeerStatus, Status};
pub use tasks::Tasks;

#[cfg(test)]
mod tests {
    /// Handles cross tasks and threads: they must stay `Send + Sync`.
    #[test]
    fn handles_are_send_and_sync() {
        fn send_sync<T: Send + Sync + Clone + std::fmt::Debug>() {}
        send_sync::<super::Mesh>();
        send_sync::<super::Peer>();
        send_sync::<super::Tasks>();
        send_sync::<super::Router>();
    }
}
