//! Messages on a connection's control stream and ping streams.
//!
//! The dialler opens the control stream and sends [`Control::Hello`]; the
//! listener answers [`Control::Welcome`] (the peer is up) or
//! [`Control::Refuse`]. After that either side may send
//! [`Control::Peers`] when nodes come up, so the mesh closes transitively.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::NodeName;

/// A control-stream message. Append-only: new variants go at the end.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Control {
    /// The dialler introduces itself (first frame on the stream).
    Hello(Hello),
    /// The listener accepts and introduces itself.
    Welcome(Hello),
    /// The listener refuses this connection.
    Refuse(Refusal),
    /// Nodes the sender has connected to since its last message; the
    /// receiver dials those it is not connected to, for as long as a peer
    /// that told of them stays up and does not say they are gone.
    Peers(Vec<PeerInfo>),
    /// Nodes that went down at the sender (not restarts): the receiver no
    /// longer dials them on the sender's word.
    Gone(Vec<NodeName>),
    /// The sender's bulk-path port (sent once, right after the handshake,
    /// to a peer whose `Hello` has [`FEATURE_BULK_PATH`]): large calls to
    /// the sender may go on a connection of their own to this port, at
    /// the IP address of this connection.
    BulkPath {
        /// The UDP port of the sender's bulk endpoint.
        port: u16,
    },
}

/// `Hello::features` bit: the sender takes bulk-path connections and
/// understands [`Control::BulkPath`] (protocol minor 1).
pub const FEATURE_BULK_PATH: u64 = 1;

/// A node's introduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello {
    /// [`crate::PROTOCOL_MAJOR`] of the sender.
    pub major: u16,
    /// [`crate::PROTOCOL_MINOR`] of the sender.
    pub minor: u16,
    /// Optional features the sender supports: a set of `FEATURE_*` bits
    /// ([`FEATURE_BULK_PATH`]); unknown bits are ignored.
    pub features: u64,
    /// The sender's name; must equal the name in its certificate.
    pub name: NodeName,
    /// Changes every time the node starts, so a restart is told apart from
    /// a reconnect.
    pub incarnation: u64,
    /// Where the sender listens. An unspecified IP (`0.0.0.0`) means "the
    /// address you see me at".
    pub listen: Vec<SocketAddr>,
    /// A hidden node is never told to other nodes.
    pub hidden: bool,
    /// The non-hidden nodes the sender is connected to.
    pub peers: Vec<PeerInfo>,
}

/// A node another node can dial.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerInfo {
    /// Its name.
    pub name: NodeName,
    /// Where it listens.
    pub addrs: Vec<SocketAddr>,
}

/// Why a listener refused a connection. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Refusal {
    /// The two nodes are already connected, or the listener's own dial
    /// to the dialler wins the simultaneous-dial tie-break.
    Duplicate,
    /// The `Hello` name differs from the certificate's.
    NameMismatch {
        /// The name in the certificate.
        certificate: NodeName,
        /// The name in `Hello`.
        claimed: NodeName,
    },
    /// The listener is shutting down.
    ShuttingDown,
    /// A node may not connect to itself.
    SelfConnect,
    /// Another node with this name is connected and alive (heard from
    /// within two heartbeat intervals): one node per name. A restarted
    /// node gets in once its old connection has gone quiet.
    NameInUse {
        /// Where the live node with the name listens.
        live: Vec<SocketAddr>,
    },
}

/// One ping payload; the responder echoes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ping {
    /// Chosen by the sender, echoed unchanged.
    pub nonce: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn hello() -> Hello {
        Hello {
            major: 1,
            minor: 0,
            features: 0,
            name: "a@127.0.0.1".parse().unwrap(),
            incarnation: 42,
            listen: vec!["127.0.0.1:4370".parse().unwrap()],
            hidden: false,
            peers: vec![PeerInfo {
                name: "b@h".parse().unwrap(),
                addrs: vec![],
            }],
        }
    }

    #[test]
    fn control_round_trips() {
        let msgs = [
            Control::Hello(hello()),
            Control::Welcome(hello()),
            Control::Refuse(Refusal::Duplicate),
            Control::Refuse(Refusal::NameMismatch {
                certificate: "a@h".parse().unwrap(),
                claimed: "b@h".parse().unwrap(),
            }),
            Control::Refuse(Refusal::NameInUse {
                live: vec!["127.0.0.1:4370".parse().unwrap()],
            }),
            Control::Peers(vec![]),
            Control::Gone(vec!["c@h".parse().unwrap()]),
        ];
        for m in msgs {
            let f = frame::encode(&m, 1 << 16).unwrap();
            let (back, used): (Control, usize) = frame::decode_from(&f, 1 << 16).unwrap().unwrap();
            assert_eq!((back, used), (m, f.len()));
        }
    }

    #[test]
    fn golden_bytes() {
        // Format drift fails here: these bytes are what version 1.0 sends.
        let f = frame::encode(&Control::Hello(hello()), 1 << 16).unwrap();
        let hex: String = f.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "00000020000100000b61403132372e302e302e312a0100\
             7f000001922200010362406800"
        );
        let f = frame::encode(&Control::Refuse(Refusal::Duplicate), 64).unwrap();
        assert_eq!(f, [0, 0, 0, 2, 2, 0]);
        // Appended after `SelfConnect`: variant 4.
        let f = frame::encode(&Control::Refuse(Refusal::NameInUse { live: vec![] }), 64).unwrap();
        assert_eq!(f, [0, 0, 0, 3, 2, 4, 0]);
        // Appended after `Peers`: variant 4.
        let f = frame::encode(&Control::Gone(vec![]), 64).unwrap();
        assert_eq!(f, [0, 0, 0, 2, 4, 0]);
    }

    #[test]
    fn unknown_variant_and_bad_name_are_malformed() {
        assert!(matches!(
            frame::decode::<Control>(&[9]),
            Err(crate::FrameError::Malformed(_))
        ));
        // A Peers list naming "x" (no '@') does not decode.
        assert!(frame::decode::<Control>(&[3, 1, 1, b'x', 0]).is_err());
    }
}
