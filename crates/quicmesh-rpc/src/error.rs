//! RPC errors, classified by what the caller can do next.

use std::time::Duration;

use quicmesh_wire::NodeName;

/// Which side of a call a decoding or size problem is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The request (the handler did not run).
    Request,
    /// The response (the handler ran).
    Response,
}

/// Why a call, cast or multicall entry failed.
///
/// [`RpcError::may_have_run`] tells whether the handler may have run, so a
/// caller knows whether retrying could do the work twice.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RpcError {
    /// No reply within the timeout. The handler may have run (or may still
    /// be running until it notices the deadline).
    #[error("{service} on {peer}: no reply within {after:?}")]
    Timeout {
        /// The node called.
        peer: NodeName,
        /// The service.
        service: String,
        /// The timeout.
        after: Duration,
    },
    /// The connection to the peer went away during the call. The handler
    /// may have run.
    #[error("{peer} went down during the call: {detail}")]
    NodeDown {
        /// The node called.
        peer: NodeName,
        /// The transport's reason.
        detail: String,
    },
    /// This node is not connected to the peer: `connect` first. Nothing ran.
    #[error("not connected to {peer}")]
    NotConnected {
        /// The node named.
        peer: NodeName,
    },
    /// The peer serves no such service. Nothing ran.
    #[error("{peer} has no service {service:?}")]
    NoSuchService {
        /// The node called.
        peer: NodeName,
        /// The service.
        service: String,
    },
    /// The handler ran and returned an error.
    #[error("{service} on {peer} failed: {message}")]
    Remote {
        /// The node called.
        peer: NodeName,
        /// The service.
        service: String,
        /// The handler's error, as text.
        message: String,
    },
    /// The handler panicked; the peer caught it and goes on serving.
    #[error("{service} on {peer} panicked: {message}")]
    Panicked {
        /// The node called.
        peer: NodeName,
        /// The service.
        service: String,
        /// The panic message.
        message: String,
    },
    /// A request or response did not encode or decode as the expected
    /// type: the two sides disagree on the service's types.
    #[error("{side:?} of {service} did not decode: {detail}")]
    Decode {
        /// Which side.
        side: Side,
        /// The service.
        service: String,
        /// The decoder's message.
        detail: String,
    },
    /// A request or response exceeded a message size limit (`rpc.max_message`
    /// on the side that refused it); use a streaming call for large data.
    #[error("{side:?} of {service} is larger than the limit of {limit} bytes")]
    TooLarge {
        /// Which side.
        side: Side,
        /// The service.
        service: String,
        /// The limit, in bytes.
        limit: u64,
    },
    /// The peer has too many calls from this node in progress; back off
    /// and retry. Nothing ran.
    #[error("{peer} is overloaded with calls from this node")]
    Overloaded {
        /// The node called.
        peer: NodeName,
    },
    /// The peer broke the RPC protocol (a bug, or versions that disagree).
    #[error("{peer} broke the RPC protocol: {detail}")]
    Protocol {
        /// The node called.
        peer: NodeName,
        /// What it did.
        detail: String,
    },
}

impl RpcError {
    /// Whether the handler may have run (and so whether a retry could do
    /// the work twice): `true` for `Timeout`, `NodeDown`, `Remote`,
    /// `Panicked`, a response-side `Decode`/`TooLarge` and `Protocol`.
    pub fn may_have_run(&self) -> bool {
        match self {
            Self::Timeout { .. }
            | Self::NodeDown { .. }
            | Self::Remote { .. }
            | Self::Panicked { .. }
            | Self::Protocol { .. } => true,
            Self::Decode { side, .. } | Self::TooLarge { side, .. } => *side == Side::Response,
            Self::NotConnected { .. } | Self::NoSuchService { .. } | Self::Overloaded { .. } => {
                false
            }
        }
    }
}

/// Why a service or protocol could not be registered.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegisterError {
    /// That name is taken: unregister it first.
    #[error("{0:?} is already registered")]
    AlreadyRegistered(String),
    /// Names are 1 to 255 bytes.
    #[error("invalid name {0:?}: names are 1 to 255 bytes")]
    BadName(String),
    /// Service names starting with `quicmesh.` belong to the node itself.
    #[error("{0:?} is reserved: service names starting with `quicmesh.` are the node's own")]
    Reserved(String),
}
