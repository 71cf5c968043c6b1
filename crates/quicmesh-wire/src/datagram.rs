//! Unreliable QUIC datagrams.

use serde::{Deserialize, Serialize};

/// A QUIC datagram's payload (postcard, no length prefix: a datagram is
/// its own frame). Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Datagram {
    /// "I am alive": sent every heartbeat interval on an otherwise quiet
    /// connection, so the peer's failure detector always has traffic.
    Heartbeat {
        /// Counts up from 0 per connection.
        seq: u64,
    },
}

impl Datagram {
    /// The encoded bytes.
    pub fn encode(&self) -> Vec<u8> {
        // Encoding a plain enum into a Vec cannot fail.
        postcard::to_allocvec(self).unwrap_or_default()
    }

    /// Decodes a datagram; `None` if it is not one this version knows.
    pub fn decode(bytes: &[u8]) -> Option<Self> {
        crate::frame::decode(bytes).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heartbeat_bytes() {
        let d = Datagram::Heartbeat { seq: 300 };
        assert_eq!(d.encode(), [0, 0xac, 0x02]);
        assert_eq!(Datagram::decode(&d.encode()), Some(d));
        assert_eq!(Datagram::decode(&[9, 1]), None);
        assert_eq!(Datagram::decode(&[]), None);
    }
}
