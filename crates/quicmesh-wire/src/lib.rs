//! The quicmesh wire protocol as data: no sockets, no runtime, no clock.
//!
//! Everything that crosses the network between two quicmesh nodes is
//! defined here, so it can be unit-tested byte for byte and fuzzed:
//!
//! - [`NodeName`] and [`NodeAddr`]: validated `name@host` identities and
//!   `name@host:port` dial addresses;
//! - [`frame`]: length-delimited postcard framing with a size limit checked
//!   before anything is allocated;
//! - [`StreamKind`]: the two-byte header that opens every QUIC stream and
//!   names the subsystem that handles it;
//! - [`Control`]: the control stream's messages (`Hello`, `Welcome`, …);
//! - [`Datagram`]: unreliable QUIC datagrams (heartbeats);
//! - [`RpcHeader`] / [`RpcStatus`]: the two ends of an RPC stream, and
//!   [`AppHeader`] for application protocols;
//! - [`coord`]: the messages of locks, the global registry, process
//!   groups and elections;
//! - [`admin`]: the admin service's questions and reports;
//! - [`CloseCode`]: the QUIC application error codes quicmesh closes
//!   connections and resets streams with.
//!
//! # Versioning
//!
//! The major version travels in the ALPN ([`ALPN`]): nodes of different
//! majors never complete a TLS handshake. The minor version and feature
//! bits travel in [`Hello`]. postcard is positional, so every enum here is
//! append-only: variants are never reordered or removed and fields are
//! never retyped; a decoder that meets an unknown variant fails cleanly
//! with [`FrameError::Malformed`].

pub mod admin;
mod codes;
mod control;
pub mod coord;
mod datagram;
pub mod frame;
mod name;
mod rpc;
mod stream;

pub use codes::CloseCode;
pub use control::{Control, FEATURE_BULK_PATH, Hello, PeerInfo, Ping, Refusal};
pub use datagram::Datagram;
pub use frame::FrameError;
pub use name::{DEFAULT_PORT, NameError, NodeAddr, NodeName};
pub use rpc::{
    AppHeader, Item, LANE_MAX_BODY, LANE_MAX_FRAME, LaneReply, LaneRequest, MAX_HEADER_FRAME,
    ReplyHead, RpcFailure, RpcHeader, RpcMode, RpcStatus, decode_item, encode_item,
    encode_item_failure,
};
pub use stream::StreamKind;

/// Major protocol version; it is part of the ALPN.
pub const PROTOCOL_MAJOR: u16 = 2;
/// Minor protocol version, sent in [`Hello`]; a higher minor only adds.
pub const PROTOCOL_MINOR: u16 = 1;
/// The TLS ALPN protocol identifier: `quicmesh/<major>`.
pub const ALPN: &[u8] = b"quicmesh/2";
