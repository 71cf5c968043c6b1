//! Errors of the mesh layer, one enum per operation.

use std::time::Duration;

use quicmesh_identity::{AuthFailure, IdentityError};
use quicmesh_wire::NodeName;

/// Why the node's endpoint could not be bound.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// The identity could not produce a TLS configuration.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// The UDP socket could not be bound (address in use?).
    #[error("cannot listen on {addr}: {source}")]
    Io {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// Why a dial did not produce a connected peer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The address could not be resolved or no packet could be sent:
    /// check the host name and the network.
    #[error("{addr} is unreachable: {detail}")]
    Unreachable {
        /// The address dialled.
        addr: String,
        /// What failed.
        detail: String,
    },
    /// No complete handshake within the timeout: the node may be down,
    /// firewalled, or not a quicmesh node.
    #[error("no handshake with {peer} at {addr} within {after:?}: is it running and reachable?")]
    HandshakeTimeout {
        /// The node dialled.
        peer: NodeName,
        /// Where.
        addr: String,
        /// The timeout.
        after: Duration,
    },
    /// The TLS handshake failed on identity: another cookie or CA, a
    /// certificate naming another node, an expired certificate, or the peer
    /// refused ours. Fix the identity; retrying will not help.
    #[error("authentication with {peer} failed: {reason}")]
    AuthenticationFailed {
        /// The node dialled.
        peer: NodeName,
        /// What was wrong.
        reason: AuthFailure,
    },
    /// The peer answered but refused the connection (it is shutting down,
    /// or it is this node).
    #[error("{peer} refused the connection: {reason}")]
    Refused {
        /// The node dialled.
        peer: NodeName,
        /// Its reason.
        reason: String,
    },
    /// The peer holds a live connection to another node with this node's
    /// name (one node per name, like Erlang's "name in use"): give this
    /// node another name, or stop the other one. Retrying succeeds once
    /// the other is gone (a restarted node gets in once its old
    /// connection has gone quiet).
    #[error(
        "{peer} refused this node: its name is in use by a live node at {live:?}; \
         is another node running with this name?"
    )]
    NameInUse {
        /// The node dialled.
        peer: NodeName,
        /// Where the node that has the name listens.
        live: Vec<std::net::SocketAddr>,
    },
    /// The connection broke during the handshake; retrying may help.
    #[error("connection to {peer} lost during the handshake: {detail}")]
    ConnectionLost {
        /// The node dialled.
        peer: NodeName,
        /// The transport's reason.
        detail: String,
    },
    /// The peer broke the protocol during the handshake (another version,
    /// or not a quicmesh node).
    #[error("{peer} broke the protocol during the handshake: {detail}")]
    ProtocolViolation {
        /// The node dialled.
        peer: NodeName,
        /// What it did.
        detail: String,
    },
    /// This node is shutting down.
    #[error("this node is shutting down")]
    ShuttingDown,
}

impl ConnectError {
    /// Whether retrying later may succeed without a configuration change.
    pub fn is_transient(&self) -> bool {
        !matches!(self, Self::AuthenticationFailed { .. } | Self::ShuttingDown)
    }
}

/// Why a ping failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PingError {
    /// No connection to that node: `connect` first.
    #[error("not connected to {0}")]
    NotConnected(NodeName),
    /// No answer within the timeout.
    #[error("no pong from {peer} within {after:?}")]
    Timeout {
        /// The node pinged.
        peer: NodeName,
        /// The timeout.
        after: Duration,
    },
    /// The connection went down while waiting.
    #[error("{peer} went down during the ping: {detail}")]
    NodeDown {
        /// The node pinged.
        peer: NodeName,
        /// The transport's reason.
        detail: String,
    },
    /// The answer was not a valid pong.
    #[error("{peer} answered the ping with an invalid reply")]
    BadReply {
        /// The node pinged.
        peer: NodeName,
    },
}

/// `wait_for_nodes` gave up.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("only {connected} of {wanted} nodes connected after {after:?}")]
#[non_exhaustive]
pub struct WaitError {
    /// Nodes connected at the deadline.
    pub connected: usize,
    /// Nodes wanted.
    pub wanted: usize,
    /// The timeout.
    pub after: Duration,
}
