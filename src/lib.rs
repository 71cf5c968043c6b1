//! quicmesh: what Erlang/Elixir clusters get from the BEAM, for Rust
//! services, over QUIC.
//!
//! Named nodes (`app1@host`) form a mutually authenticated QUIC mesh
//! (TLS 1.3, client certificates required, a peer's name taken from its
//! verified certificate), keep track of each other with heartbeats, and
//! report `NodeUp` / `NodeDown` events.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use std::time::Duration;
//! use quicmesh::{Node, NodeEvent};
//!
//! let node = Node::builder()
//!     .name("app1@127.0.0.1")
//!     .listen("127.0.0.1:4370".parse()?)
//!     .cookie("secret cookie") // or QUICMESH_COOKIE / ~/.quicmesh.cookie
//!     .seed("app2@127.0.0.1:4371".parse()?)
//!     .start()
//!     .await?;
//! let mut events = node.events();
//! while let Ok(event) = events.recv().await {
//!     match event {
//!         NodeEvent::NodeUp { node, .. } => println!("{node} is up"),
//!         NodeEvent::NodeDown { node, reason } => println!("{node} is down: {reason}"),
//!         _ => {}
//!     }
//! }
//! # Ok(()) }
//! ```
//!
//! # Layers
//!
//! This crate is the one users depend on: the [`Node`] facade, its
//! [`Builder`] and [`NodeConfig`], and the types of every layer below,
//! re-exported. Each layer is a crate of its own and knows only the ones
//! below it:
//!
//! ```text
//! quicmesh            Node, Builder, NodeConfig: wires the layers together
//! quicmesh-coord      locks, global registry, groups, elections, local registry
//! quicmesh-rpc        services, calls, lanes, streaming calls, application protocols
//! quicmesh-discovery  strategies (static, DNS, Kubernetes DNS, mDNS), topologies
//! quicmesh-mesh       QUIC transport, membership, stream router, events, status
//! quicmesh-identity   names, cookies, the cookie-derived CA, certificates, rustls configs
//! quicmesh-wire       every message on the wire, framing, codes (no I/O)
//! ```
//!
//! The streams of [`Node::open_bi`] / [`Node::open_uni`] and
//! [`IncomingStream`] are quinn's ([`SendStream`], [`RecvStream`]),
//! re-exported with the errors of their methods ([`ReadError`],
//! [`WriteError`], …) and [`VarInt`], the type of their reset codes.

mod config;
mod error;
mod node;

/// Discovery: topologies whose strategies report candidate peers, which
/// the node dials and keeps.
///
/// A topology polls its [`Strategy`](discovery::Strategy) every polling
/// interval. Each candidate becomes a seed: dialled, and re-dialled with
/// backoff whenever it is down, whether or not later polls report it
/// again. A poll that misses a peer changes nothing; only a topology with
/// `prune_after` forgets a candidate, and only once no poll has reported
/// it for that long (then the node stops re-dialling it and disconnects
/// it, unless another topology or the static `seeds` still name it). A
/// strategy that fails (a DNS server down or answering garbage) is logged
/// and retried at the next interval; the mesh stays as it is.
pub mod discovery {
    pub use quicmesh_discovery::{
        Candidate, CandidatesFuture, DiscoveryError, DnsPoll, DnsSrv, LocalNode, Mdns, MdnsOptions,
        SERVICE_TYPE, SignalFuture, StaticNodes, Strategy, TopologyConfig,
    };
}

pub use config::{ConfigError, IdentityConfig, NodeConfig};
pub use error::StartError;
pub use node::{Builder, Node};
pub use quicmesh_coord::{
    AlreadyRegistered, CoordCounters, Election, GroupEvent, Groups, Hlc, Keep, Keys, LeaderChange,
    Leadership, LocalRegistry, LockError, LockGuard, LockOptions, MAX_CLOCK_DRIFT, Member,
    Registered, Registration, Registry, RegistryError, RegistryEvent, Token,
};
pub use quicmesh_identity as identity;
pub use quicmesh_identity::{AuthFailure, CertFiles, Cookie};
pub use quicmesh_mesh::{
    ConnectError, CounterSnapshot, DownReason, EventError, EventStream, HeartbeatConfig, NodeEvent,
    PeerState, PeerStatus, PingError, ReconnectConfig, Status, WaitError,
};
pub use quicmesh_rpc::{
    CallContext, IncomingStream, OpenError, ProtocolListener, RegisterError, Requests, Responses,
    RpcConfig, RpcError, Side, StreamingCall, is_unknown_protocol,
};
pub use quicmesh_wire::{DEFAULT_PORT, NameError, NodeAddr, NodeName};
pub use quinn::{
    ClosedStream, ReadError, ReadExactError, ReadToEndError, RecvStream, SendStream, StoppedError,
    VarInt, WriteError,
};
