//! The callee's side: what serving RPC and application streams needs.

use std::sync::Arc;
use std::time::Duration;

use quicmesh_mesh::Tasks;
use tokio::sync::Semaphore;

use crate::app::Protocols;
use crate::connections::Connections;
use crate::service::Services;

/// Everything the handlers of RPC's stream kinds share. Holds no handle
/// to the mesh, so the router that holds the handlers keeps no cycle.
#[derive(Debug)]
pub(crate) struct Callee {
    pub(crate) services: Services,
    pub(crate) protocols: Protocols,
    pub(crate) conns: Arc<Connections>,
    /// Bytes of request bodies buffered at once, node-wide (permits are
    /// bytes; `rpc.max_buffered`).
    pub(crate) buffered: Arc<Semaphore>,
    /// Largest request or response body.
    pub(crate) max_message: usize,
    /// Longest wait for a stream's header.
    pub(crate) patience: Duration,
    pub(crate) tasks: Tasks,
    /// Calls made and refused, for the metrics.
    pub(crate) stats: crate::metrics::Stats,
}
