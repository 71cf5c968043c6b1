//! Membership: the peer table and everything that changes it.
//!
//! Message flow for one connection:
//!
//! ```text
//! dialler                                   listener
//!   QUIC + TLS 1.3 handshake (mutual certificates, names verified)
//!   open control stream: [Control] Hello ──▶ hello::judge (names, version)
//!                                             one node per name, tie-break
//!                                             (table::name_in_use, should_accept)
//!   install, NodeUp  ◀── Welcome / Refuse     install, NodeUp
//!   link task: heartbeats, control reader/writer, streams to the router
//!   Peers([new node]) ◀──▶ to every other up peer when a node comes up
//! ```
//!
//! One [`Mesh`] per node: a cheap handle on the state its tasks share;
//! the peer table sits behind a mutex that is never held across an
//! `.await`.

mod accept;
mod bulk_link;
mod dial;
mod gossip;
mod hello;
mod link;
mod liveness;
mod ping;
mod report;
mod revoked;
mod sources;
pub(crate) mod table;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use quicmesh_identity::Identity;
use quicmesh_wire::{
    CloseCode, Control, FEATURE_BULK_PATH, Hello, NodeAddr, NodeName, PeerInfo, Refusal, StreamKind,
};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tracing::{info, warn};

use crate::bulk::BulkEndpoint;
use crate::config::MeshConfig;
use crate::error::{BindError, ConnectError, PingError, WaitError};
use crate::event::{DownReason, EventStream, NodeEvent};
use crate::log_limit::LogLimit;
use crate::metrics::{MeshMetrics, Stats};
use crate::peer::Peer;
use crate::router::Router;
use crate::status::{Counters, Status};
use crate::tasks::Tasks;
use crate::{io, transport};
use table::{Installed, PeerTable, UpPeer};

/// Handshakes served at once; further incoming connections are refused
/// until one finishes.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// Handshakes in progress from one IP address (validated by a QUIC Retry
/// or not); further incoming connections from that address are refused
/// (`handshakes_refused_per_source`) until one of its handshakes ends, so
/// one sender cannot hold the node's handshake slots. Well above what one
/// host's nodes need at once: each dials a peer once, and a restart dials
/// again only after its old handshake ended.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 8;
/// Dials to a told-of node that was never up before it is given up (it
/// may be told of again).
const NEVER_UP_ATTEMPTS: u32 = 8;

/// Control messages queued per peer before announcements are dropped.
const CONTROL_QUEUE: usize = 1024;
/// Send priority of control and ping streams: above all application data.
pub(crate) const CONTROL_PRIORITY: i32 = 2;
/// Event queue per subscriber.
const EVENT_QUEUE: usize = 1024;

/// A node's place in the mesh: its endpoint, its peers, its events and
/// its tasks. Cheap to clone; every clone is the same node.
#[derive(Debug, Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

/// The state every task of one node shares.
struct Inner {
    me: NodeName,
    incarnation: u64,
    config: MeshConfig,
    identity: Identity,
    endpoint: quinn::Endpoint,
    transport: Arc<quinn::TransportConfig>,
    local_addr: SocketAddr,
    /// The bulk path's endpoint, unless `bulk_path` is off (or a hidden
    /// node: it makes no large calls worth one).
    bulk: Option<Arc<BulkEndpoint>>,
    table: Mutex<PeerTable<Peer>>,
    /// Bumped after every table change; waiters watch it.
    changed: watch::Sender<u64>,
    events: broadcast::Sender<NodeEvent>,
    counters: Arc<Counters>,
    /// What only the metrics report.
    stats: Stats,
    /// Set once by `start`; the link tasks route streams with it.
    router: OnceLock<Arc<Router>>,
    tasks: Tasks,
    handshakes: Arc<Semaphore>,
    /// The handshakes of `handshakes` per source address.
    handshakes_per_source: sources::PerSource,
    /// Dials to nodes peers told of, in progress at once (`max_dials`).
    dials: Arc<Semaphore>,
    /// Log lines about refused peers and failed dials, limited.
    refusals_logged: LogLimit,
    dial_failures_logged: LogLimit,
    names_in_use_logged: LogLimit,
    handshakes_refused_logged: LogLimit,
    handshakes_per_source_logged: LogLimit,
    shutting_down: AtomicBool,
    /// Addresses to dial a seed at instead of resolving its host (set by
    /// discovery strategies that resolve names themselves).
    dial_at: Mutex<HashMap<NodeName, Vec<SocketAddr>>>,
    /// Every link's liveness, watched by one task.
    liveness: Arc<liveness::Liveness>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("me", &self.me)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A connection whose `Hello` exchange completed, ready to install.
struct Handshake {
    name: NodeName,
    conn: quinn::Connection,
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    hello: Hello,
}

/// Which side of a connection installs it.
enum Role {
    /// The dialler: the listener already applied the tie-break.
    Dialler,
    /// The listener: applies the tie-break, then sends its welcome.
    Listener { welcome: Control },
}

impl Mesh {
    /// Binds the node's endpoint with `identity` (TLS 1.3, client
    /// certificates required). Nothing is accepted or dialled until
    /// [`Mesh::start`].
    pub fn bind(config: MeshConfig, identity: Identity) -> Result<Self, BindError> {
        let transport = transport::transport_config(&config);
        let endpoint = transport::bind(config.listen, &identity, transport.clone())?;
        let local_addr = endpoint.local_addr().map_err(|source| BindError::Io {
            addr: config.listen,
            source,
        })?;
        let bulk = if config.bulk_path && !config.hidden {
            let path = BulkEndpoint::bind(local_addr, &identity, transport.clone())?;
            Some(Arc::new(path))
        } else {
            None
        };
        let me = identity.name().clone();
        let max_dials = config.max_dials;
        let mut table = PeerTable::new(me.clone());
        for seed in &config.seeds {
            table.add_seed(seed.clone());
        }
        let inner = Inner {
            me,
            incarnation: fastrand::u64(1..),
            config,
            identity,
            endpoint,
            transport,
            local_addr,
            bulk,
            table: Mutex::new(table),
            changed: watch::Sender::new(0),
            events: broadcast::Sender::new(EVENT_QUEUE),
            counters: Arc::default(),
            stats: Stats::default(),
            router: OnceLock::new(),
            tasks: Tasks::default(),
            handshakes: Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES)),
            handshakes_per_source: sources::PerSource::new(MAX_HANDSHAKES_PER_SOURCE),
            dials: Arc::new(Semaphore::new(max_dials)),
            refusals_logged: LogLimit::default(),
            dial_failures_logged: LogLimit::default(),
            names_in_use_logged: LogLimit::default(),
            handshakes_refused_logged: LogLimit::default(),
            handshakes_per_source_logged: LogLimit::default(),
            shutting_down: AtomicBool::new(false),
            dial_at: Mutex::default(),
            liveness: Arc::default(),
        };
        Ok(Self {
            inner: Arc::new(inner),
        })
    }

    /// Starts serving: accepts connections, routes their streams with
    /// `router` (plus the mesh's own control and ping kinds), dials the
    /// seeds and, in cookie mode, renews the node's certificate. Only the
    /// first call does anything.
    pub fn start(&self, router: Router) {
        let router = router
            .route(StreamKind::Control, link::SecondControl)
            .route(
                StreamKind::Ping,
                ping::PingHandler::new(self.inner.config.handshake_timeout),
            );
        if self.inner.router.set(Arc::new(router)).is_err() {
            return;
        }
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { inner.accept_loop().await });
        self.inner.tasks.spawn(liveness::run(self.inner.clone()));
        if let Some(path) = self.inner.bulk.clone() {
            let (inner, handle) = (self.inner.clone(), path.handle());
            self.inner
                .tasks
                .spawn_on(async move { inner.accept_bulk_loop(path).await }, handle);
        }
        for seed in self.inner.config.seeds.clone() {
            self.inner.spawn_keeper(seed, None);
        }
        let inner = self.inner.clone();
        self.inner
            .tasks
            .spawn(async move { inner.renew_certificates().await });
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.inner.me
    }

    /// Changes every time a node starts.
    pub fn incarnation(&self) -> u64 {
        self.inner.incarnation
    }

    /// The address the node's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Who this node is and whom it trusts.
    pub fn identity(&self) -> &Identity {
        &self.inner.identity
    }

    /// The settings the mesh runs with.
    pub fn config(&self) -> &MeshConfig {
        &self.inner.config
    }

    /// Spawns and stops the node's tasks.
    pub fn tasks(&self) -> &Tasks {
        &self.inner.tasks
    }

    /// The connected peer called `name`, if it is up.
    pub fn peer(&self, name: &NodeName) -> Option<Peer> {
        self.inner.peer(name)
    }

    /// Whether `name` is connected.
    pub fn is_up(&self, name: &NodeName) -> bool {
        self.inner.is_up(name)
    }

    /// The nodes connected now, sorted.
    pub fn nodes(&self) -> Vec<NodeName> {
        self.inner.nodes()
    }

    /// The connected nodes that are not hidden, sorted.
    pub fn visible_nodes(&self) -> Vec<NodeName> {
        let mut v: Vec<_> = self
            .inner
            .table()
            .up()
            .filter(|(_, u)| !u.hidden)
            .map(|(n, _)| n.clone())
            .collect();
        v.sort();
        v
    }

    /// A stream of `NodeUp` / `NodeDown` events from now on.
    pub fn events(&self) -> EventStream {
        EventStream {
            rx: self.inner.events.subscribe(),
        }
    }

    /// Connects to `addr` once; `Ok` when the node is up, also if it
    /// already was. The nodes it knows are then connected too.
    pub async fn connect(&self, addr: &NodeAddr) -> Result<(), ConnectError> {
        self.inner.dial_addr(addr).await
    }

    /// Keeps `addr` connected: dialled now and re-dialled with backoff
    /// whenever it is down, until [`Mesh::disconnect`]; `via` names who
    /// asked, for the log. `true` if it was not a seed yet.
    pub fn add_seed(&self, addr: NodeAddr, via: Option<&str>) -> bool {
        let new = self.inner.update(|t| {
            let new = !t.is_seed(&addr.name);
            t.add_seed(addr.clone());
            new
        });
        if new {
            self.inner.spawn_keeper(addr, via);
        }
        new
    }

    /// Dials `name` at `addrs` instead of resolving its host (empty:
    /// resolve it again), from its next dial on; for discovery strategies
    /// that resolve names themselves. Forgotten on [`Mesh::disconnect`].
    pub fn set_dial_addrs(&self, name: &NodeName, addrs: Vec<SocketAddr>) {
        let mut dial_at = guard(&self.inner.dial_at);
        if addrs.is_empty() {
            dial_at.remove(name);
        } else {
            dial_at.insert(name.clone(), addrs);
        }
    }

    /// The bulk path to `peer` (its connection of its own for large calls;
    /// see the crate's `bulk` module), if it is open. If not, and the peer
    /// offers one, a dial starts in the background: the caller uses
    /// `peer`'s own connection meanwhile.
    pub fn bulk(&self, peer: &Peer) -> Option<Peer> {
        self.inner.bulk_link(peer)
    }

    /// The bulk path's runtime (its lower-priority threads), to run the
    /// transfer of a call on the bulk path beside its connection. `None`
    /// with `bulk_path` off.
    pub fn bulk_runtime(&self) -> Option<&'static tokio::runtime::Handle> {
        self.inner.bulk.as_ref().map(|b| b.handle())
    }

    /// Whether `name` is one of the seeds of the configuration.
    pub fn is_configured_seed(&self, name: &NodeName) -> bool {
        self.inner.config.seeds.iter().any(|s| s.name == *name)
    }

    /// Closes the connection to `name` (it sees `DisconnectedByPeer`) and
    /// stops re-dialling it. `false` if it was not up.
    pub fn disconnect(&self, name: &NodeName) -> bool {
        self.inner.disconnect(name)
    }

    /// After [`Identity::reload_files`] or [`Identity::reload_cookies`] on
    /// [`Mesh::identity`]: drops every up peer whose certificate, as it
    /// presented it, is revoked under the trust now in force (both sides
    /// see `NodeDown { Revoked }`), and returns their names. Other
    /// connections stay up.
    pub fn drop_revoked(&self) -> Vec<NodeName> {
        self.inner.drop_revoked()
    }

    /// Round trip of a ping over a fresh stream.
    pub async fn ping(&self, peer: &NodeName, timeout: Duration) -> Result<Duration, PingError> {
        let connected = self
            .inner
            .peer(peer)
            .ok_or_else(|| PingError::NotConnected(peer.clone()))?;
        ping::ping(connected.connection(), peer, timeout).await
    }

    /// Waits until at least `n` other nodes are up or `timeout` passes.
    pub async fn wait_for_nodes(&self, n: usize, timeout: Duration) -> Result<(), WaitError> {
        self.inner.wait_for_nodes(n, timeout).await
    }

    /// This node and every peer it knows.
    pub fn status(&self) -> Status {
        self.inner.status()
    }

    /// What the mesh measured, for a metrics endpoint: cheap enough to
    /// call on every scrape (one short hold of the peer table).
    pub fn metrics(&self) -> MeshMetrics {
        self.inner.metrics()
    }

    /// Closes every connection with `Shutdown` and tells the tasks to
    /// stop, without waiting (for a node dropped without `shutdown`).
    pub fn close(&self, reason: &str) {
        self.inner.close_all(reason);
    }

    /// Stops everything: peers see `NodeDown { Shutdown }` at once; then
    /// waits, bounded by the shutdown timeout, for the close to be
    /// delivered and the tasks to end. Idempotent; later calls wait for
    /// the first.
    pub async fn shutdown(&self) {
        self.inner.shutdown().await;
    }

    /// Whether [`Mesh::shutdown`] has been called.
    pub fn is_shutdown(&self) -> bool {
        self.inner.shutting_down.load(Ordering::Acquire)
    }
}

/// Locks a mutex, whether or not a panicking thread poisoned it.
fn guard<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Inner {
    fn table(&self) -> MutexGuard<'_, PeerTable<Peer>> {
        guard(&self.table)
    }

    /// Runs `f` on the table and tells waiters it may have changed.
    fn update<R>(&self, f: impl FnOnce(&mut PeerTable<Peer>) -> R) -> R {
        let r = f(&mut self.table());
        self.changed.send_modify(|v| *v += 1);
        r
    }

    fn emit(&self, event: NodeEvent) {
        let stats = &self.stats;
        match &event {
            NodeEvent::NodeUp { .. } => count(&stats.nodes_up),
            NodeEvent::NodeDown { reason, .. } => stats.node_down(reason),
        }
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    fn is_up(&self, name: &NodeName) -> bool {
        self.table().is_up(name)
    }

    fn nodes(&self) -> Vec<NodeName> {
        let mut v: Vec<_> = self.table().up().map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }

    fn peer(&self, name: &NodeName) -> Option<Peer> {
        self.table()
            .get(name)
            .and_then(|p| p.up.as_ref())
            .map(|u| u.link.clone())
    }

    fn router(&self) -> Option<&Arc<Router>> {
        self.router.get()
    }

    /// The `Hello` this node sends to `peer`.
    fn hello(&self, peer: &NodeName) -> Hello {
        hello::ours(
            &self.me,
            self.incarnation,
            self.local_addr,
            self.config.hidden,
            if self.bulk.is_some() {
                FEATURE_BULK_PATH
            } else {
                0
            },
            || self.table().shareable(peer),
        )
    }

    /// Installs a connection whose `Hello` exchange completed, starts its
    /// link task, emits events and tells the other peers. As the listener
    /// the table may refuse it (another live node has the name, or the
    /// tie-break): the send stream is handed back to write the refusal on.
    fn install(
        self: &Arc<Self>,
        hs: Handshake,
        role: Role,
    ) -> Result<(), (quinn::SendStream, Refusal)> {
        let Handshake {
            name,
            conn,
            send,
            recv,
            hello,
        } = hs;
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let peer = Peer::new(name.clone(), conn.clone(), tx, self.counters.clone());
        let addrs = hello::observed_addrs(&hello.listen, conn.remote_address());
        let up = UpPeer {
            link: peer.clone(),
            incarnation: hello.incarnation,
            hidden: hello.hidden,
            since: SystemTime::now(),
        };
        let (tie_break, first) = match role {
            Role::Dialler => (false, None),
            Role::Listener { welcome } => (true, Some(welcome)),
        };
        // Alive: heard from within four heartbeat intervals (one end of a
        // link sends one heartbeat an interval, so a lost one or two must
        // not make a live node look gone).
        let window = self.config.heartbeat.interval * 4;
        let decided = self.update(|t| {
            if tie_break {
                let alive = |old: &Peer| old.heard_within(window);
                if let Some(live) = t.name_in_use(&name, hello.incarnation, alive) {
                    return Err(Refusal::NameInUse { live });
                }
                if !t.should_accept(&name, hello.incarnation) {
                    return Err(Refusal::Duplicate);
                }
            }
            // A node some peer told this one of, coming up here for the
            // first time, is known to that peer's peers too: only a node
            // nobody told of, or one coming back (its vouchers may have said
            // it was gone), is news to pass on (so a cold start of N nodes
            // gossips N² entries, not N³).
            let told_of = t
                .get(&name)
                .is_some_and(|p| !p.vouchers.is_empty() && p.incarnation.is_none());
            let installed = t.install(&name, up, addrs.clone());
            let others: Vec<_> = t
                .up()
                .filter(|(n, u)| !told_of && **n != name && !u.hidden)
                .map(|(_, u)| u.link.control().clone())
                .collect();
            Ok((installed, others))
        });
        let (installed, others) = match decided {
            Ok(decided) => decided,
            Err(refusal) => return Err((send, refusal)),
        };
        if let Some(path) = &self.bulk
            && hello.features & FEATURE_BULK_PATH != 0
        {
            // The queue is empty yet: this is its first message.
            let _ = peer
                .control()
                .try_send(Control::BulkPath { port: path.port() });
        }
        link::spawn(
            self,
            peer,
            link::ControlStream {
                send,
                recv,
                queue: rx,
                first,
            },
        );
        if self.replaced(&name, installed) {
            info!(peer = %name, incarnation = hello.incarnation, hidden = hello.hidden, "node up");
            self.emit(NodeEvent::NodeUp {
                node: name.clone(),
                incarnation: hello.incarnation,
                hidden: hello.hidden,
            });
            if !hello.hidden {
                let news = Control::Peers(vec![PeerInfo {
                    name: name.clone(),
                    addrs,
                }]);
                for tx in others {
                    // A full queue means that peer is stuck; it learns the
                    // node from the next Hello instead.
                    let _ = tx.try_send(news.clone());
                }
            }
        }
        let _ = self.learn(&name, hello.peers);
        Ok(())
    }

    /// Closes the connection an install replaced; `true` if the peer is
    /// newly up (so `NodeUp` is due).
    fn replaced(&self, name: &NodeName, installed: Installed<Peer>) -> bool {
        match installed {
            Installed::NewlyUp => true,
            Installed::Replaced { old } => {
                self.counters.duplicates.fetch_add(1, Ordering::Relaxed);
                let why = "replaced by a newer connection";
                let reason = DownReason::ConnectionLost {
                    detail: why.to_owned(),
                };
                old.close(CloseCode::Duplicate, reason, why);
                false
            }
            Installed::Restarted { old } => {
                old.close(
                    CloseCode::Duplicate,
                    DownReason::Restarted,
                    "peer restarted",
                );
                self.emit(NodeEvent::NodeDown {
                    node: name.clone(),
                    reason: DownReason::Restarted,
                });
                true
            }
        }
    }

    /// A link task ended: update the table and emit `NodeDown` if that
    /// connection was the current one. Then the node vouches for nothing
    /// any more, the other peers are told it is gone (unless it
    /// restarted: its new incarnation is told of when it comes up), and it
    /// is dialled again if a peer still vouches for it.
    fn link_closed(self: &Arc<Self>, name: &NodeName, link_id: usize, reason: DownReason) {
        let now = SystemTime::now();
        let decided = self.update(|t| {
            if !t.link_closed(name, link_id, reason.clone(), now) {
                return None;
            }
            t.voucher_down(name);
            let redial = t.redial_after_down(name, &reason);
            let others: Vec<_> = t
                .up()
                .filter(|(_, u)| !u.hidden)
                .map(|(_, u)| u.link.control().clone())
                .collect();
            let addrs = t.get(name).map(|p| p.addrs.clone()).unwrap_or_default();
            Some((redial, others, addrs))
        });
        let Some((redial, others, addrs)) = decided else {
            return;
        };
        info!(peer = %name, %reason, "node down");
        self.emit(NodeEvent::NodeDown {
            node: name.clone(),
            reason: reason.clone(),
        });
        if !matches!(reason, DownReason::Restarted) {
            let gone = Control::Gone(vec![name.clone()]);
            for tx in others {
                // A full queue means that peer is stuck; it may dial the
                // node once more for nothing.
                let _ = tx.try_send(gone.clone());
            }
        }
        if redial {
            let (inner, p) = (
                self.clone(),
                PeerInfo {
                    name: name.clone(),
                    addrs,
                },
            );
            self.tasks.spawn(async move { inner.dial_learnt(p).await });
        }
    }

    /// Dials the nodes peer `from` told us about that we are not connected
    /// to, at most `max_dials` at once; past `max_peers` known peers, new
    /// names are refused and counted. Each is dialled for as long as a
    /// peer that told of it is up and has not said it is gone. Hidden
    /// nodes never dial transitively. `true` if any node told of was taken
    /// in (or the node is stopping, and judges nothing).
    fn learn(self: &Arc<Self>, from: &NodeName, peers: Vec<PeerInfo>) -> bool {
        if self.tasks.is_cancelled() {
            return true;
        }
        if self.config.hidden {
            return false;
        }
        let max = self.config.max_peers;
        let (to_dial, refused) = self.update(|t| t.learn(from, peers, max));
        if refused > 0 {
            self.counters
                .peers_refused
                .fetch_add(refused, Ordering::Relaxed);
            if let Some(earlier) = self.refusals_logged.allow() {
                warn!(
                    "refused {} peers a peer told of: this node knows {max} (max_peers){}",
                    refused,
                    earlier.since_last()
                );
            }
        }
        let taught = !to_dial.is_empty();
        for p in to_dial {
            let inner = self.clone();
            self.tasks.spawn(async move { inner.dial_learnt(p).await });
        }
        taught
    }

    /// `from` says `names` went down there.
    fn gone(&self, from: &NodeName, names: &[NodeName]) {
        self.update(|t| t.gone(from, names));
    }

    /// Dials a node a peer told of (queued in the table), when one of the
    /// `max_dials` permits is free, after a random wait of up to one
    /// heartbeat interval (so nodes told of each other at once do not all
    /// dial at once), a handshake timeout more if its name is smaller than
    /// this node's (it is likely dialling this node then). A failed dial (the node unreachable, busy, or the
    /// tie-break refusing a dial while the other side's did not arrive) is
    /// tried again with the reconnection backoff, for as long as the node
    /// is down and a peer vouches for it; then a name never up is
    /// forgotten (it may be told of again).
    async fn dial_learnt(self: Arc<Self>, p: PeerInfo) {
        // Two nodes told of each other would dial each other at once, and
        // the tie-break would throw one handshake away. The node with the
        // larger name waits a handshake timeout more, so the smaller one's
        // dial arrives first and this one's never starts, even when both
        // are so busy that a handshake takes seconds (a cold start of 100
        // nodes on 2 cores, where a head start of two intervals let 2,131 of
        // 10,000 handshakes end as duplicates); it dials only if the other
        // one cannot.
        let interval = self.config.heartbeat.interval;
        let head_start = if p.name < self.me {
            self.config.handshake_timeout
        } else {
            Duration::ZERO
        };
        let spread = head_start + interval.mul_f64(fastrand::f64());
        let mut attempt = 0u32;
        let mut wait = spread;
        loop {
            tokio::select! {
                biased;
                _ = self.tasks.cancelled() => {
                    self.update(|t| t.unqueue(&p.name));
                    return;
                }
                _ = tokio::time::sleep(wait) => {}
            }
            let permit = tokio::select! {
                biased;
                _ = self.tasks.cancelled() => None,
                permit = self.dials.clone().acquire_owned() => permit.ok(),
            };
            let Some(permit) = permit else {
                self.update(|t| t.unqueue(&p.name));
                return;
            };
            let go = self.update(|t| t.wanted(&p.name) && t.start_queued(&p.name));
            if !go {
                self.update(|t| {
                    t.unqueue(&p.name);
                    t.forget_stranger(&p.name);
                });
                return;
            }
            let addrs = self.update(|t| {
                t.get(&p.name)
                    .map(|known| known.addrs.clone())
                    .filter(|a| !a.is_empty())
            });
            let result = self
                .dial_started(&p.name, addrs.as_deref().unwrap_or(&p.addrs))
                .await;
            drop(permit);
            let e = match result {
                Ok(()) => return,
                Err(e) => e,
            };
            if self.tasks.is_cancelled() {
                return;
            }
            if !matches!(e, ConnectError::NameInUse { .. })
                && let Some(earlier) = self.dial_failures_logged.allow()
            {
                let (peer, more) = (&p.name, earlier.since_last());
                warn!(%peer, "could not connect to a node a peer knows (trying again while a peer vouches for it): {e}{more}");
            }
            if !self.update(|t| t.wanted(&p.name) && t.requeue(&p.name)) {
                self.update(|t| t.forget_stranger(&p.name));
                return;
            }
            // A name in use is a restarted node's old connection still
            // heard at the other end: it goes quiet within a few heartbeat
            // intervals, so try again after two rather than backing off.
            wait = if matches!(e, ConnectError::NameInUse { .. }) {
                interval * 2
            } else {
                self.config
                    .reconnect
                    .delay(attempt, fastrand::f64())
                    .max(Duration::from_millis(10))
            };
            attempt = attempt.saturating_add(1);
            if !matches!(e, ConnectError::NameInUse { .. })
                && attempt >= NEVER_UP_ATTEMPTS
                && self.update(|t| t.give_up_if_never_up(&p.name))
            {
                return;
            }
        }
    }

    /// Addresses to dial `name` at instead of resolving its host, if any.
    fn dial_at(&self, name: &NodeName) -> Vec<SocketAddr> {
        guard(&self.dial_at).get(name).cloned().unwrap_or_default()
    }

    fn disconnect(&self, name: &NodeName) -> bool {
        guard(&self.dial_at).remove(name);
        let link = self.update(|t| {
            t.remove_seed(name);
            t.get(name)
                .and_then(|p| p.up.as_ref())
                .map(|u| u.link.clone())
        });
        match link {
            Some(l) => {
                l.close(
                    CloseCode::Disconnected,
                    DownReason::DisconnectedByUs,
                    "disconnected",
                );
                true
            }
            None => false,
        }
    }

    /// Closes every connection with `Shutdown`, then stops the tasks.
    ///
    /// The order matters. A task that ends drops its handles to its
    /// connection, and quinn closes a connection whose last handle is
    /// dropped with code 0 at once, while `Endpoint::close` only queues its
    /// close to each connection's driver. So the live connections are
    /// closed directly first; the endpoint close covers those still
    /// handshaking.
    fn close_all(&self, reason: &str) {
        let links: Vec<Peer> = self.table().up().map(|(_, u)| u.link.clone()).collect();
        for link in links {
            link.close(CloseCode::Shutdown, DownReason::LocalShutdown, reason);
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(CloseCode::Shutdown.code()),
            reason.as_bytes(),
        );
        if let Some(path) = &self.bulk {
            path.close();
        }
        self.tasks.cancel();
    }

    /// See [`Mesh::shutdown`] and [`Inner::close_all`].
    async fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            self.tasks.wait().await;
            return;
        }
        info!(node = %self.me, "shutting down");
        self.close_all("node shutting down");
        let deadline = self.config.shutdown_timeout;
        let _ = io::within(deadline, self.endpoint.wait_idle()).await;
        let _ = io::within(deadline, self.tasks.wait()).await;
    }

    /// Cookie mode: renews this node's certificate before it expires.
    async fn renew_certificates(self: Arc<Self>) {
        let every = (self.config.leaf_validity / 20).min(Duration::from_secs(300));
        loop {
            tokio::select! {
                biased;
                _ = self.tasks.cancelled() => return,
                _ = tokio::time::sleep(every) => {}
            }
            match self.identity.renew_if_due(SystemTime::now()) {
                Ok(true) => info!("renewed this node's certificate"),
                Ok(false) => {}
                Err(e) => warn!("could not renew this node's certificate: {e}"),
            }
        }
    }
}

/// Counts one event of `counter` (for status and tests).
fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
