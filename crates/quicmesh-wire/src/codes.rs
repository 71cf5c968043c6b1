//! QUIC application error codes used by quicmesh.
//!
//! One registry for connection-close and stream-reset codes; values are
//! never reused (0x102 is reserved: it was never sent). A peer that receives a code it does not know reports it
//! as [`CloseCode::Unknown`].

/// Why a connection was closed or a stream reset, as sent on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum CloseCode {
    /// The node is shutting down on purpose.
    Shutdown,
    /// The application called `disconnect` for this peer.
    Disconnected,
    /// A connection between the same two nodes already exists; this one is
    /// the duplicate.
    Duplicate,
    /// The peer sent something that breaks the protocol (malformed or
    /// oversized frame, unexpected message).
    ProtocolViolation,
    /// No packet arrived from the peer within the failure-detection
    /// timeout.
    HeartbeatTimeout,
    /// The peer's certificate verified but names no quicmesh node.
    NotAuthenticated,
    /// The handshake did not complete in time.
    HandshakeTimeout,
    /// The peer's certificate was revoked (its CA's revocation list names
    /// it): the connection is dropped and new ones are refused.
    Revoked,
    /// A bulk-path connection came from a node that has no mesh
    /// connection to this one: bulk connections only follow a link.
    NotAPeer,
    /// A stream's header named a kind this node does not serve.
    UnknownStreamKind,
    /// The caller gave up on the call (dropped it or timed out).
    Cancelled,
    /// An application stream named a protocol this node does not serve.
    UnknownProtocol,
    /// The application's listener for that protocol is not keeping up.
    Overloaded,
    /// A code this version does not know.
    Unknown(u32),
}

impl CloseCode {
    /// The numeric value sent on the wire.
    pub const fn code(self) -> u32 {
        match self {
            Self::Shutdown => 0x01,
            Self::Disconnected => 0x02,
            Self::Duplicate => 0x03,
            Self::ProtocolViolation => 0x04,
            Self::HeartbeatTimeout => 0x05,
            Self::NotAuthenticated => 0x06,
            Self::HandshakeTimeout => 0x07,
            Self::Revoked => 0x08,
            Self::NotAPeer => 0x09,
            Self::UnknownStreamKind => 0x101,
            Self::Cancelled => 0x103,
            Self::UnknownProtocol => 0x104,
            Self::Overloaded => 0x105,
            Self::Unknown(c) => c,
        }
    }

    /// The code for a numeric value.
    pub const fn from_code(code: u64) -> Self {
        match code {
            0x01 => Self::Shutdown,
            0x02 => Self::Disconnected,
            0x03 => Self::Duplicate,
            0x04 => Self::ProtocolViolation,
            0x05 => Self::HeartbeatTimeout,
            0x06 => Self::NotAuthenticated,
            0x07 => Self::HandshakeTimeout,
            0x08 => Self::Revoked,
            0x09 => Self::NotAPeer,
            0x101 => Self::UnknownStreamKind,
            0x103 => Self::Cancelled,
            0x104 => Self::UnknownProtocol,
            0x105 => Self::Overloaded,
            c if c <= u32::MAX as u64 => Self::Unknown(c as u32),
            _ => Self::Unknown(u32::MAX),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_round_trip() {
        for c in [
            CloseCode::Shutdown,
            CloseCode::Disconnected,
            CloseCode::Duplicate,
            CloseCode::ProtocolViolation,
            CloseCode::HeartbeatTimeout,
            CloseCode::NotAuthenticated,
            CloseCode::HandshakeTimeout,
            CloseCode::Revoked,
            CloseCode::NotAPeer,
            CloseCode::UnknownStreamKind,
            CloseCode::Cancelled,
            CloseCode::UnknownProtocol,
            CloseCode::Overloaded,
            CloseCode::Unknown(0x9999),
        ] {
            assert_eq!(CloseCode::from_code(c.code().into()), c);
        }
    }
}
