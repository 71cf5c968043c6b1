//! The header that opens every QUIC stream.
//!
//! A stream's first two bytes (big endian) name its kind; the subsystem
//! registered for that kind handles the rest. Values are never reused:
//!
//! | value | kind | direction | since |
//! |---|---|---|---|
//! | 0x0001 | control | bidirectional, one per connection, opened by the dialler | 1.0 |
//! | 0x0002 | ping | bidirectional, one per ping | 1.0 |
//! | 0x0003 | rpc | bidirectional, one per call ([`crate::RpcHeader`]) | 1.0 |
//! | 0x0004 | app | bidirectional or unidirectional, one per application stream ([`crate::AppHeader`]) | 1.0 |
//! | 0x0005 | rpc lane | bidirectional, long-lived, opened by a caller: small calls by id ([`crate::LaneRequest`]) | 1.0 |
//! | 0x0006 | rpc reply | unidirectional, opened by a callee: a large reply to a lane call ([`crate::ReplyHead`]) | 1.0 |
//!
//! Values 0x0100–0x7fff are reserved for built-in services, 0x8000 and up
//! for applications.

/// Bytes in a stream header.
pub(crate) const HEADER_LEN: usize = 2;

/// The subsystem a stream belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum StreamKind {
    /// The connection's control stream: handshake, peer lists.
    Control,
    /// An application-level ping: one [`crate::Ping`] each way.
    Ping,
    /// One RPC call: [`crate::RpcHeader`] and the request body, then
    /// [`crate::RpcStatus`] and the response body.
    Rpc,
    /// A stream of an application protocol registered by name:
    /// [`crate::AppHeader`], then the application's bytes.
    App,
    /// A caller's long-lived lane: small calls as [`crate::LaneRequest`]
    /// frames, answered by [`crate::LaneReply`] frames on the same stream.
    RpcLane,
    /// A lane call's reply too large for the lane: [`crate::ReplyHead`],
    /// then the response body.
    RpcReply,
}

impl StreamKind {
    /// The kind's registered number.
    pub const fn code(self) -> u16 {
        match self {
            Self::Control => 0x0001,
            Self::Ping => 0x0002,
            Self::Rpc => 0x0003,
            Self::App => 0x0004,
            Self::RpcLane => 0x0005,
            Self::RpcReply => 0x0006,
        }
    }

    /// The kind for a registered number; `None` for one this version does
    /// not know (refuse the stream with [`crate::CloseCode::UnknownStreamKind`]).
    pub const fn from_code(code: u16) -> Option<Self> {
        match code {
            0x0001 => Some(Self::Control),
            0x0002 => Some(Self::Ping),
            0x0003 => Some(Self::Rpc),
            0x0004 => Some(Self::App),
            0x0005 => Some(Self::RpcLane),
            0x0006 => Some(Self::RpcReply),
            _ => None,
        }
    }

    /// The header bytes for this kind.
    pub const fn header(self) -> [u8; HEADER_LEN] {
        self.code().to_be_bytes()
    }

    /// Reads a header: the kind, or the unknown number.
    pub const fn parse(header: [u8; HEADER_LEN]) -> Result<Self, u16> {
        let code = u16::from_be_bytes(header);
        match Self::from_code(code) {
            Some(kind) => Ok(kind),
            None => Err(code),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip() {
        for k in [
            StreamKind::Control,
            StreamKind::Ping,
            StreamKind::Rpc,
            StreamKind::App,
            StreamKind::RpcLane,
            StreamKind::RpcReply,
        ] {
            assert_eq!(StreamKind::parse(k.header()), Ok(k));
        }
        assert_eq!(StreamKind::Control.header(), [0, 1]);
        assert_eq!(StreamKind::parse([0xab, 0xcd]), Err(0xabcd));
    }
}
