//! Node events: `NodeUp` and `NodeDown`, like `:net_kernel.monitor_nodes`.

use quicmesh_wire::NodeName;
use tokio::sync::broadcast;

/// A change in the set of connected nodes.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum NodeEvent {
    /// A node connected (its `Hello` exchange completed).
    NodeUp {
        /// The node, as its certificate names it.
        node: NodeName,
        /// Its incarnation (changes when it restarts).
        incarnation: u64,
        /// Whether it is hidden.
        hidden: bool,
    },
    /// A connected node went away.
    NodeDown {
        /// The node.
        node: NodeName,
        /// Why.
        reason: DownReason,
    },
}

/// Why a node went down.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DownReason {
    /// Nothing arrived from it within the heartbeat timeout (killed,
    /// frozen, or the network is cut).
    HeartbeatTimeout,
    /// It shut down on purpose and said so.
    Shutdown,
    /// This node called `disconnect` for it.
    DisconnectedByUs,
    /// It called `disconnect` for this node.
    DisconnectedByPeer,
    /// It restarted: a connection from a new incarnation replaced the old.
    Restarted,
    /// It sent something that breaks the protocol; this node dropped it.
    ProtocolViolation {
        /// What it sent.
        detail: String,
    },
    /// It dropped this node for breaking the protocol (a bug, or versions
    /// that disagree).
    ClosedByPeer {
        /// The close code and reason it sent.
        detail: String,
    },
    /// The connection failed for another transport reason.
    ConnectionLost {
        /// The transport's reason.
        detail: String,
    },
    /// This node is shutting down.
    LocalShutdown,
    /// Its certificate was revoked: this node's reloaded revocation list
    /// names it, or the peer's names this node's certificate.
    Revoked,
}

impl DownReason {
    /// A short, fixed name for the reason, without its detail: a metric
    /// label (`quicmesh_node_down_total{reason}`) or a log key.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::HeartbeatTimeout => "heartbeat_timeout",
            Self::Shutdown => "shutdown",
            Self::DisconnectedByUs => "disconnected_by_us",
            Self::DisconnectedByPeer => "disconnected_by_peer",
            Self::Restarted => "restarted",
            Self::ProtocolViolation { .. } => "protocol_violation",
            Self::ClosedByPeer { .. } => "closed_by_peer",
            Self::ConnectionLost { .. } => "connection_lost",
            Self::LocalShutdown => "local_shutdown",
            Self::Revoked => "revoked",
        }
    }
}

impl std::fmt::Display for DownReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::HeartbeatTimeout => f.write_str("heartbeat timeout"),
            Self::Shutdown => f.write_str("peer shut down"),
            Self::DisconnectedByUs => f.write_str("disconnected by us"),
            Self::DisconnectedByPeer => f.write_str("disconnected by peer"),
            Self::Restarted => f.write_str("peer restarted"),
            Self::ProtocolViolation { detail } => write!(f, "protocol violation: {detail}"),
            Self::ClosedByPeer { detail } => write!(f, "closed by peer: {detail}"),
            Self::ConnectionLost { detail } => write!(f, "connection lost: {detail}"),
            Self::LocalShutdown => f.write_str("this node shut down"),
            Self::Revoked => f.write_str("certificate revoked"),
        }
    }
}

/// A stream of [`NodeEvent`]s from `quicmesh::Node::events`. Each stream
/// sees every event from its creation on, unless it falls more than 1024
/// events behind (see [`EventStream::recv`]).
#[derive(Debug)]
pub struct EventStream {
    pub(crate) rx: broadcast::Receiver<NodeEvent>,
}

/// Why [`EventStream::recv`] returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum EventError {
    /// This stream was too slow: `n` events were dropped for it. The next
    /// `recv` continues with the oldest event still kept; call
    /// `Node::status` to resynchronise.
    #[error("event stream lagged: {0} events missed")]
    Lagged(u64),
    /// The node has shut down.
    #[error("the node has shut down")]
    Closed,
}

impl EventStream {
    /// The next event if one is queued, without waiting.
    pub fn try_recv(&mut self) -> Option<Result<NodeEvent, EventError>> {
        match self.rx.try_recv() {
            Ok(e) => Some(Ok(e)),
            Err(broadcast::error::TryRecvError::Empty) => None,
            Err(broadcast::error::TryRecvError::Lagged(n)) => Some(Err(EventError::Lagged(n))),
            Err(broadcast::error::TryRecvError::Closed) => Some(Err(EventError::Closed)),
        }
    }

    /// The next event.
    pub async fn recv(&mut self) -> Result<NodeEvent, EventError> {
        self.rx.recv().await.map_err(|e| match e {
            broadcast::error::RecvError::Lagged(n) => EventError::Lagged(n),
            broadcast::error::RecvError::Closed => EventError::Closed,
        })
    }
}
