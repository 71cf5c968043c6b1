//! quicmesh: what Erlang/Elixir clusters get from the BEAM, for Rust
//! services, over QUIC.
//!
//! Named nodes (`app1@host`) form a mutually authenticated QUIC mesh
//! (TLS 1.3, client certificates required, a peer's name taken from its
//! verified certificate), keep track of each other with heartbeats, report
//! `NodeUp` / `NodeDown` events, and share typed RPC, a global name
//! registry, process groups, cluster locks with fencing tokens and leader
//! elections.
//!
//! This page is the user guide; the README of the repository has the
//! same material with the measurements, and `examples/` has programs to
//! copy from (`cargo run --example typed_rpc`, `coordination`,
//! `config_file`, `two_nodes`, `certificate_mode`, `app_protocol`).
//! Every example on this page is compiled as a test, and those that need
//! only loopback are run too.
//!
//! # Quick start
//!
//! Two nodes in one process, on free ports of 127.0.0.1, sharing a
//! cookie: `b` is told about `a` and keeps it connected.
//!
//! ```
//! use std::time::Duration;
//! use quicmesh::{Node, NodeEvent};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let a = Node::builder()
//!     .name("a@127.0.0.1")
//!     .listen("127.0.0.1:0".parse()?)   // port 0: any free port
//!     .cookie("secret cookie")          // or QUICMESH_COOKIE / ~/.quicmesh.cookie
//!     .start()
//!     .await?;
//! let mut events = a.events();
//! let b = Node::builder()
//!     .name("b@127.0.0.1")
//!     .listen("127.0.0.1:0".parse()?)
//!     .cookie("secret cookie")
//!     .seed(a.addr())                   // dialled now, re-dialled while down
//!     .start()
//!     .await?;
//!
//! b.wait_for_nodes(1, Duration::from_secs(10)).await?;   // start-up gating
//! let rtt = b.ping(a.name(), Duration::from_secs(1)).await?;
//! println!("{rtt:?}\n{}", b.status());                    // a table of peers
//!
//! b.shutdown().await;                   // a sees NodeDown { reason: Shutdown } at once
//! while let Ok(event) = events.recv().await {
//!     match event {
//!         NodeEvent::NodeUp { node, .. } => println!("{node} up"),
//!         NodeEvent::NodeDown { node, reason } => {
//!             println!("{node} down: {reason}");
//!             break;
//!         }
//!         _ => {}
//!     }
//! }
//! a.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Nodes, names and identities
//!
//! A node's name is `name@host` ([`NodeName`]): 1–64 characters of
//! `A-Z a-z 0-9 _ - .` starting with a letter or a digit, then a DNS name,
//! an IPv4 address or a bracketed IPv6 address. A dial address
//! ([`NodeAddr`]) adds `:port` (default [`DEFAULT_PORT`], 4370). One name
//! is one node: a second node starting under a live node's name is refused
//! ([`ConnectError::NameInUse`]).
//!
//! Nodes prove who they are in one of two ways:
//!
//! - **Cookie mode** (the default, like Erlang's cookie):
//!   [`Builder::cookie`], else a cookie file, else `QUICMESH_COOKIE`, else
//!   `~/.quicmesh.cookie` (created with 256 random bits and mode 0600 when
//!   missing). The cookie is stretched with argon2id into the key of a
//!   cluster CA that every node derives alike ([`Node::ca_fingerprint`] is
//!   the same on all of them); each node mints its own short-lived leaf
//!   certificate and trusts only that CA. Anyone who holds the cookie can
//!   mint a certificate for any name, so every holder is fully trusted.
//! - **Certificate mode** ([`Builder::certificates`] with [`CertFiles`]):
//!   a CA the operator holds issues one certificate per node name
//!   (`quicmesh certs`); a node holds only its own key.
//!
//! A node that fails to authenticate is refused with
//! [`ConnectError::AuthenticationFailed`] and an [`AuthFailure`] saying
//! why (unknown issuer, name mismatch, expired, …).
//!
//! [`Node::reload_identity`] (`SIGHUP` for `quicmesh node`) reads the
//! identity again while the node runs: a renewed certificate, a CA bundle
//! during a CA rotation, a revocation list (connected peers it revokes go
//! down with [`DownReason::Revoked`]), or in cookie mode a new cookie with
//! the previous one still trusted. New connections use it at once; a bad
//! file is refused with an [`IdentityError`] naming it and changes nothing.
//!
//! Membership: [`Node::connect`] dials once (`Node.connect/1`),
//! [`Node::add_seed`] and [`Builder::seed`] keep a node connected, nodes a
//! peer knows are dialled too (a full mesh), and [`Builder::hidden`] makes
//! a node that is never told to others. [`Node::events`] streams
//! [`NodeEvent::NodeUp`] and [`NodeEvent::NodeDown`] with a
//! [`DownReason`]; [`Node::status`] is a table of the peers and their
//! counters.
//!
//! # Configuration: `NodeConfig`
//!
//! Every setting lives in one serde struct, [`NodeConfig`], with a
//! documented default; the [`Builder`] methods, a TOML file
//! (`quicmesh node --config FILE`) and the command-line flags all set its
//! fields. [`NodeConfig::from_toml`] parses a file (an unknown key or a
//! bad duration is refused with its name), [`NodeConfig::validate`] checks
//! the values against each other (also done by [`Builder::start`]), and
//! [`Builder::from_config`] starts from it:
//!
//! ```
//! use std::time::Duration;
//! use quicmesh::{Builder, ConfigError, NodeConfig};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = NodeConfig::from_toml(r#"
//!     name = "a@127.0.0.1"
//!     listen = "127.0.0.1:0"
//!     seeds = []                  # e.g. ["b@127.0.0.1:4371"]
//!
//!     [identity]
//!     mode = "cookie"             # cookie_file = "/etc/quicmesh/cookie" for real
//!     cookie = "secret cookie"
//!
//!     [heartbeat]
//!     interval = "250ms"
//!     timeout = "2s"              # a killed peer is declared down after ~2 s
//!
//!     [rpc]
//!     timeout = "1s"              # default timeout of call and cast
//! "#)?;
//! assert_eq!(config.heartbeat.interval, Duration::from_millis(250));
//! assert_eq!(config.max_peers, 1024);           // a default
//! config.validate()?;
//!
//! // Values that cannot work are refused with the values named.
//! let mut bad = config.clone();
//! bad.heartbeat.timeout = Duration::from_millis(300);
//! assert!(matches!(bad.validate(), Err(ConfigError::HeartbeatTimeoutTooShort { .. })));
//! assert!(NodeConfig::from_toml("name = \"a@h\"\nlisten_port = 1").is_err());
//!
//! // Start from the file, and change more in code if need be.
//! let node = Builder::from_config(config)
//!     .configure(|c| c.shutdown_timeout = Duration::from_millis(500))
//!     .start()
//!     .await?;
//! assert_eq!(node.name().as_str(), "a@127.0.0.1");
//! node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! The keys of the file are the fields of [`NodeConfig`] and of the
//! structs it holds ([`IdentityConfig`], [`HeartbeatConfig`],
//! [`ReconnectConfig`], [`RpcConfig`], [`discovery::TopologyConfig`]);
//! durations are written `"500ms"`, `"3s"`, `"24h"`.
//!
//! # RPC: `register`, `call`, `cast`, `multicall`
//!
//! A node serves named services: a handler is an async function from a
//! serde-typed request to a `Result` of a serde-typed response (postcard
//! on the wire). [`CallContext::from`] is the caller's verified name.
//!
//! ```
//! use std::time::Duration;
//! use quicmesh::{Node, RpcError};
//! use serde::{Deserialize, Serialize};
//!
//! #[derive(Serialize, Deserialize)]
//! struct Add { x: i64, y: i64 }
//!
//! # async fn node(name: &str, seed: Option<&Node>) -> Node {
//! #     let mut b = Node::builder().name(name).listen("127.0.0.1:0".parse().unwrap()).cookie("doc");
//! #     if let Some(s) = seed { b = b.seed(s.addr()); }
//! #     b.start().await.unwrap()
//! # }
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let b = node("b@127.0.0.1", None).await;
//! # let a = node("a@127.0.0.1", Some(&b)).await;
//! # a.wait_for_nodes(1, Duration::from_secs(10)).await?;
//! // On b: serve "add" (a name is registered once; add and remove at run time).
//! b.register("add", |ctx, req: Add| async move {
//!     println!("called by {}", ctx.from);
//!     req.x.checked_add(req.y).ok_or("overflow")  // an Err becomes RpcError::Remote
//! })?;
//! b.register("sleep", |_ctx, ms: u64| async move {
//!     tokio::time::sleep(Duration::from_millis(ms)).await;
//!     Ok::<_, String>(())
//! })?;
//!
//! // On a:
//! let sum: i64 = a.call(b.name(), "add", &Add { x: 40, y: 2 }).await?;  // rpc.timeout (5 s)
//! assert_eq!(sum, 42);
//! let e = a.call::<_, i64>(b.name(), "add", &Add { x: i64::MAX, y: 1 }).await.unwrap_err();
//! assert!(matches!(e, RpcError::Remote { ref message, .. } if message == "overflow"));
//!
//! let e = a
//!     .call_timeout::<_, ()>(b.name(), "sleep", &5_000u64, Duration::from_millis(50))
//!     .await
//!     .unwrap_err();
//! assert!(matches!(e, RpcError::Timeout { .. }));
//! assert!(e.may_have_run());            // a retry could do the work twice
//!
//! a.cast(b.name(), "sleep", &1u64).await?;                     // fire and forget
//! for (node, result) in a.multicall::<_, i64>(&a.nodes(), "add", &Add { x: 1, y: 1 }, Duration::from_secs(1)).await {
//!     println!("{node}: {result:?}");                          // one result per node
//! }
//! # a.shutdown().await; b.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! [`RpcError`] says what the caller can do next; `may_have_run()` says
//! whether the handler may have run:
//!
//! | variant | meaning | handler ran? |
//! |---|---|---|
//! | `Timeout` | no reply in time; the callee drops the handler at the same deadline | maybe |
//! | `NodeDown` | the connection went away mid-call | maybe |
//! | `NotConnected` | no connection to that node (refused locally, also for `cast`) | no |
//! | `NoSuchService` | the peer serves no such name | no |
//! | `Remote { message }` | the handler returned an error | yes |
//! | `Panicked { message }` | the handler panicked; the callee caught it and keeps serving | yes |
//! | `Decode { side }` | request or response does not decode as the expected type | no (request) / yes (response) |
//! | `TooLarge { side, limit }` | a message exceeds `rpc.max_message` of the side that refused it | no (request) / yes (response) |
//! | `Overloaded` | the callee serves as many calls or holds as many request bytes from this node as it allows | no |
//! | `Protocol` | the peer broke the RPC protocol | maybe |
//!
//! Dropping a call's future cancels it, and the callee drops the handler's
//! future. Streaming calls ([`Node::register_stream`],
//! [`Node::call_stream`]) move data of any size under QUIC flow control;
//! application protocols ([`Node::protocol`], [`Node::open_bi`],
//! [`Node::open_uni`]) give raw authenticated QUIC streams.
//!
//! # Coordination
//!
//! What `:global`, `pg` and an etcd-style election give. In global mode,
//! the default, they are agreed among the nodes connected at the time, so
//! each side of a partition may grant its own lock or elect its own
//! leader; in consensus mode the same calls are agreed by a Raft group
//! (see [below](#consensus-mode-the-same-calls-agreed-by-raft)). What still holds is that
//! fencing tokens and terms ([`Token`]) are unique cluster-wide and grow
//! with every grant a holder could know of, and that a holder that lost
//! its grant while cut off is told when it meets the others again
//! ([`LockGuard::is_lost`], [`Leadership::lost`]). The README's
//! "Registry, groups, locks and elections" section states exactly what
//! is and is not promised.
//!
//! ## Global registry: `registry()`
//!
//! [`Registry::register`] gives a name one owner cluster-wide (it takes
//! the name's lock on every connected node and writes it to all of them:
//! of concurrent attempts exactly one succeeds); every node keeps the
//! whole table, so [`Registry::whereis`] answers locally. A node's names
//! go when it goes down or shuts down.
//!
//! ```
//! use std::time::Duration;
//! use quicmesh::{Node, RegistryError, RegistryEvent};
//!
//! # async fn node(name: &str, seed: Option<&Node>) -> Node {
//! #     let mut b = Node::builder().name(name).listen("127.0.0.1:0".parse().unwrap()).cookie("doc");
//! #     if let Some(s) = seed { b = b.seed(s.addr()); }
//! #     b.start().await.unwrap()
//! # }
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let a = node("a@127.0.0.1", None).await;
//! # let b = node("b@127.0.0.1", Some(&a)).await;
//! # b.wait_for_nodes(1, Duration::from_secs(10)).await?;
//! let mut events = b.registry().events();      // Registered, Unregistered, Conflict
//!
//! // On a: a service, and a global name for it.
//! a.register("cache", |_ctx, key: String| async move { Ok::<_, String>(key.len()) })?;
//! a.registry().register("cache_worker", "cache").await?;
//!
//! // On b: look it up (no network) and call it wherever it is.
//! let owner = b.registry().whereis("cache_worker").map(|r| r.owner);
//! assert_eq!(owner.as_ref(), Some(a.name()));
//! let n: usize = b.registry().call("cache_worker", &"colour".to_owned()).await?;
//! assert_eq!(n, 6);
//! assert!(matches!(
//!     b.registry().register("cache_worker", "cache").await,
//!     Err(RegistryError::AlreadyRegistered { .. })
//! ));
//! assert!(matches!(events.recv().await?, RegistryEvent::Registered(r) if r.name == "cache_worker"));
//!
//! assert!(a.registry().unregister("cache_worker").await);
//! assert_eq!(a.registry().registered_names(), Vec::<String>::new());
//! # a.shutdown().await; b.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! When two sides of a partition registered the same name, the owners
//! keep one by a rule every node applies alike (default: the earliest
//! registration; [`Registry::set_resolver`]) and every node sees
//! [`RegistryEvent::Conflict`]. [`Node::groups`] gives process groups
//! (`pg`: [`Groups::join`], [`Groups::members`]), and [`LocalRegistry`] is
//! Elixir's `Registry` for one process.
//!
//! ## Cluster locks: `lock`
//!
//! [`Node::lock`] takes a resource's lock on every connected node, all or
//! nothing, retrying for up to 30 s ([`Node::lock_with`] and
//! [`LockOptions`] change the nodes, retries and timeout). The lock is
//! released when its [`LockGuard`] is dropped (so when the task holding it
//! ends or panics), and by every node when the holder's node goes down.
//! Each grant carries a fencing token, a [`Token`]: hand it to the
//! resource you protect, and have the resource refuse tokens smaller than
//! the largest it has seen, so a holder that was cut off or paused while
//! its lock was given to another cannot write any more.
//!
//! ```
//! use std::time::Duration;
//! use quicmesh::{LockError, LockOptions, Node, Token};
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let node = Node::builder().name("a@127.0.0.1").listen("127.0.0.1:0".parse()?).cookie("doc").start().await?;
//! let guard = node.lock("invoices").await?;
//! let first: Token = guard.token();             // pass it to the resource
//! assert!(!guard.is_lost());                    // true once another holder won it while we were apart
//! // A second attempt while it is held gives up after its timeout.
//! let quick = LockOptions::default().retries(3).timeout(Duration::from_millis(100));
//! assert!(matches!(node.lock_with("invoices", &quick).await, Err(LockError::Timeout { .. })));
//! guard.release().await;                        // or drop it
//!
//! // trans: run work under the lock, with its token, then release.
//! let second = node.trans("invoices", |token| async move { token }).await?;
//! assert!(second > first);                      // later grants have larger tokens
//! println!("token {second} = {}", second.get());   // one u128
//! # node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! [`LockGuard::lost`] is a future that completes if the lock is lost:
//! race the work against it with `tokio::select!`, as for a leadership
//! below.
//!
//! ## Leader elections: `election`
//!
//! Leading [`Node::election`] is holding the election's lock, and the term
//! is its fencing token. [`Election::campaign`] waits until this node
//! leads; [`Election::leader`] is this node's view of who leads,
//! [`Election::observe`] streams the changes ([`LeaderChange`]) in term
//! order, [`Election::am_leader`] says whether this node leads. When the
//! leader's node goes down, the next campaigner leads within the failure
//! detection time plus a quarter of a second.
//!
//! ```
//! use std::time::Duration;
//! use quicmesh::{Node, Token};
//!
//! async fn run_scheduler(term: Token) {
//!     // ... do the leader's work, fenced with `term` ...
//! #   let _ = term;
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! # let node = Node::builder().name("a@127.0.0.1").listen("127.0.0.1:0".parse()?).cookie("doc").start().await?;
//! let election = node.election("scheduler");
//! let mut changes = election.observe();         // LeaderChange { leader, term }
//! let leadership = election.campaign().await?;  // waits until this node leads
//! assert!(election.am_leader());
//! assert_eq!(changes.recv().await?.leader.as_ref(), Some(node.name()));
//! tokio::select! {
//!     () = run_scheduler(leadership.term()) => {}   // the term is the fencing token
//!     () = leadership.lost() => {}                  // another leader won while we were apart
//! }
//! assert!(!leadership.is_lost());
//! leadership.resign().await;                    // or drop it
//! assert_eq!(election.leader().leader, None);
//! # node.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! ## Consensus mode: the same calls, agreed by Raft
//!
//! With `coordination = "consensus"` (or [`Builder::consensus`]) the node
//! runs a Raft group of the configured voters, or is a client of theirs,
//! and the same [`Node::lock`], [`Node::lock_with`], [`Node::trans`],
//! [`Node::election`] and [`Node::registry`] calls return the same types,
//! now agreed by the group: at most one holder or leader or owner at a
//! time, and on the minority side of a partition nothing is granted
//! (calls end in [`LockError::NoQuorum`] when their timeout ends). Tokens
//! are then the Raft log index of the grant ([`Token::log_index`]). What
//! differs, and [`Node::consensus`] for what only this mode has
//! (membership, status, stale reads), is in the README's "Consensus mode"
//! section and on [`Election`] and [`Registry`].
//!
//! ```
//! use std::time::Duration;
//! use quicmesh::{ConsensusConfig, LockError, LockOptions, Node, Token};
//!
//! /// The same code in either mode.
//! async fn work(node: &Node) -> Result<Token, LockError> {
//!     let quick = LockOptions::default().timeout(Duration::from_millis(200));
//!     let guard = node.lock("invoices").await?;
//!     assert!(matches!(node.lock_with("invoices", &quick).await, Err(LockError::Timeout { .. })));
//!     let first = guard.token();
//!     guard.release().await;
//!     let second = node.trans("invoices", |token| async move { token }).await?;
//!     assert!(second > first);
//!     let leadership = node.election("scheduler").campaign().await?;
//!     assert!(node.election("scheduler").am_leader());
//!     let term = leadership.term();
//!     leadership.resign().await;
//!     Ok(term)
//! }
//!
//! # #[tokio::main] async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let global = Node::builder()
//!     .name("a@127.0.0.1").listen("127.0.0.1:0".parse()?).cookie("doc")
//!     .start().await?;
//! let term = work(&global).await?;
//! assert!(term.log_index().is_none());          // a clock reading
//! global.shutdown().await;
//!
//! let dir = tempfile::tempdir()?;
//! let consensus = Node::builder()
//!     .name("b@127.0.0.1").listen("127.0.0.1:0".parse()?).cookie("doc")
//!     .consensus(ConsensusConfig {
//!         voters: vec!["b@127.0.0.1".parse()?],  // a group of one, for the example
//!         data_dir: Some(dir.path().into()),
//!         ..ConsensusConfig::default()
//!     })
//!     .start().await?;
//! let term = work(&consensus).await?;
//! assert!(term.log_index().is_some());          // a Raft log index
//! consensus.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! # Discovery
//!
//! Besides seeds, topologies find the nodes to connect to, like
//! libcluster's: static lists, DNS A/AAAA polling, Kubernetes headless
//! services (A or SRV records) and mDNS, from a config file's
//! `[topologies.NAME]` tables or from code ([`Builder::topology`] with
//! your own [`discovery::Strategy`]). See [`discovery`].
//!
//! # Metrics
//!
//! [`Node::register_metrics`] adds the node's Prometheus metrics (peers,
//! handshakes, authentication failures, node ups and downs by reason,
//! heartbeat RTT, bytes and streams, refusals by limit, RPC calls by
//! service and outcome with their latency, locks, registry size, leader
//! changes: every name starts with `quicmesh_`) to the application's own
//! [`prometheus_client`] registry; the library keeps none. They are read
//! from the node at each scrape. `quicmesh node --metrics ADDR` serves
//! them over HTTP; the README lists every family and its labels.
//!
//! # Errors
//!
//! Each layer has its own error enum with variants a caller can act on:
//! [`StartError`] (configuration, identity files, the socket),
//! [`ConnectError`], [`PingError`], [`WaitError`], [`RpcError`],
//! [`RegisterError`], [`OpenError`], [`LockError`], [`RegistryError`] and
//! [`ConfigError`].
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

pub mod admin;
mod config;
mod coordination;
mod error;
mod metrics;
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

pub use config::{ConfigError, Coordination, IdentityConfig, NodeConfig};
pub use coordination::{Election, Leadership, LockGuard, Registry, global};
pub use error::StartError;
pub use node::{Builder, Node, Reloaded};
/// The metrics library whose [`Registry`](prometheus_client::registry::Registry)
/// [`Node::register_metrics`] fills, re-exported so an application uses the
/// same version.
pub use prometheus_client;
/// Consensus mode's own handle and types, for what only that mode has
/// ([`Node::consensus`]); locks, elections and names go through the one
/// API of both modes.
pub use quicmesh_consensus::{
    Consensus, ConsensusConfig, ConsensusError, Leader as ConsensusLeader,
    LockGuard as ConsensusGuard, NameOwner as ConsensusNameOwner,
};
pub use quicmesh_coord::{
    AlreadyRegistered, CoordCounters, GroupEvent, Groups, Hlc, Keep, Keys, LeaderChange,
    LocalRegistry, LockError, LockOptions, MAX_CLOCK_DRIFT, Member, Registered, Registration,
    RegistryError, RegistryEvent, Token,
};
pub use quicmesh_identity as identity;
pub use quicmesh_identity::{AuthFailure, CertFiles, Cookie, IdentityError};
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
