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
//! - [`quicmesh_identity`]: names, cookies, the cookie-derived CA,
//!   certificate files, rustls configs;
//! - [`quicmesh_wire`]: every byte on the wire, without I/O;
//! - this crate: the QUIC transport, membership (handshake, tie-break of
//!   simultaneous dials, heartbeats, transitive mesh, reconnects),
//!   [`discovery`], RPC, application protocols and the [`Node`] facade.

mod app;
mod config;
mod coord;
pub mod discovery;
mod error;
mod event;
mod local_registry;
mod membership;
mod node;
mod rpc;
mod status;
mod transport;

pub use app::{IncomingStream, OpenError, ProtocolListener, is_unknown_protocol};
pub use config::{
    ConfigError, HeartbeatConfig, IdentityConfig, NodeConfig, ReconnectConfig, RpcConfig,
};
pub use coord::{
    Election, GroupEvent, Groups, Hlc, Keep, LeaderChange, Leadership, LockError, LockGuard,
    LockOptions, Member, Registration, Registry, RegistryError, RegistryEvent,
};
pub use error::{ConnectError, PingError, StartError, WaitError};
pub use event::{DownReason, EventError, EventStream, NodeEvent};
pub use local_registry::{AlreadyRegistered, Keys, LocalRegistry, Registered};
pub use node::{Builder, Node};
pub use quicmesh_identity as identity;
pub use quicmesh_identity::{AuthFailure, CertFiles, Cookie};
pub use quicmesh_wire as wire;
pub use quicmesh_wire::{DEFAULT_PORT, NameError, NodeAddr, NodeName};
pub use quinn;
pub use rpc::{CallContext, RegisterError, Requests, Responses, RpcError, Side, StreamingCall};
pub use status::{CounterSnapshot, PeerState, PeerStatus, Status};
