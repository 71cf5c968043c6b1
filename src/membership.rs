//! Membership: the peer table and everything that changes it.
//!
//! Message flow for one connection:
//!
//! ```text
//! dialler                                   listener
//!   QUIC + TLS 1.3 handshake (mutual certificates, names verified)
//!   open control stream: [Control] Hello ──▶ certificate name == Hello name?
//!                                             tie-break (table::should_accept)
//!   install, NodeUp  ◀── Welcome / Refuse     install, NodeUp
//!   link task: heartbeats, control reader/writer, stream dispatcher
//!   Peers([new node]) ◀──▶ to every other up peer when a node comes up
//! ```
//!
//! One `Membership` per node, shared by its tasks through an `Arc`; the
//! peer table sits behind a mutex that is never held across an `.await`.

mod accept;
mod dial;
mod link;
pub(crate) mod table;

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant, SystemTime};

use quicmesh_identity::Identity;
use quicmesh_wire::{
    CloseCode, Control, Hello, NodeAddr, NodeName, PROTOCOL_MAJOR, PROTOCOL_MINOR, PeerInfo, Ping,
    StreamKind, frame,
};
use tokio::sync::{Semaphore, broadcast, mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};

use crate::config::NodeConfig;
use crate::discovery::Candidate;
use crate::error::{PingError, WaitError};
use crate::event::{DownReason, NodeEvent};
use crate::status::{Counters, PeerState, PeerStatus, Status};
use crate::transport::{self, StreamError};
use table::{Installed, PeerTable, UpPeer};

/// Handshakes served at once; further incoming connections are refused
/// until one finishes.
const MAX_CONCURRENT_HANDSHAKES: usize = 256;
/// Control messages queued per peer before announcements are dropped.
const CONTROL_QUEUE: usize = 64;
/// Send priority of control and ping streams: above all application data.
pub(crate) const CONTROL_PRIORITY: i32 = 2;
/// Event queue per subscriber.
const EVENT_QUEUE: usize = 1024;

/// One node's membership state, shared by all its tasks.
pub(crate) struct Membership {
    pub(crate) me: NodeName,
    pub(crate) incarnation: u64,
    pub(crate) config: NodeConfig,
    pub(crate) identity: Identity,
    pub(crate) endpoint: quinn::Endpoint,
    pub(crate) transport: Arc<quinn::TransportConfig>,
    pub(crate) local_addr: SocketAddr,
    table: Mutex<PeerTable<LinkHandle>>,
    /// Bumped after every table change; waiters watch it.
    changed: watch::Sender<u64>,
    events: broadcast::Sender<NodeEvent>,
    pub(crate) counters: Counters,
    /// The RPC services this node serves.
    pub(crate) services: crate::rpc::Services,
    /// The application protocols this node serves.
    pub(crate) protocols: crate::app::Protocols,
    pub(crate) token: CancellationToken,
    pub(crate) tracker: TaskTracker,
    handshakes: Arc<Semaphore>,
    shutting_down: AtomicBool,
    /// Candidates reported by discovery: where to dial them, and which
    /// topologies report them.
    discovered: Mutex<HashMap<NodeName, Discovered>>,
}

/// A peer that discovery reported.
#[derive(Debug, Default)]
struct Discovered {
    /// Addresses the strategy resolved; empty: resolve the name's host.
    addrs: Vec<SocketAddr>,
    /// The topologies that report it.
    by: BTreeSet<String>,
}

impl std::fmt::Debug for Membership {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Membership")
            .field("me", &self.me)
            .field("local_addr", &self.local_addr)
            .finish_non_exhaustive()
    }
}

/// A connection installed in the table, with the queue to its control
/// stream and the reason this side closed it (if it did).
#[derive(Debug, Clone)]
pub(crate) struct LinkHandle {
    pub(crate) conn: quinn::Connection,
    control: mpsc::Sender<Control>,
    closing: Arc<OnceLock<DownReason>>,
    /// This side's RPC lane on the connection, opened by the first small call.
    pub(crate) lane: Arc<tokio::sync::OnceCell<Arc<crate::rpc::Lane>>>,
}

impl table::Link for LinkHandle {
    fn id(&self) -> usize {
        self.conn.stable_id()
    }
}

impl LinkHandle {
    /// Closes the connection, remembering why for the `NodeDown` event.
    pub(crate) fn close(&self, code: CloseCode, reason: DownReason, text: &str) {
        let _ = self.closing.set(reason);
        transport::close(&self.conn, code, text);
    }
}

impl Membership {
    pub(crate) fn new(
        config: NodeConfig,
        identity: Identity,
        endpoint: quinn::Endpoint,
        transport: Arc<quinn::TransportConfig>,
    ) -> std::io::Result<Arc<Self>> {
        let me = identity.name().clone();
        let local_addr = endpoint.local_addr()?;
        let mut table = PeerTable::new(me.clone());
        for seed in &config.seeds {
            table.add_seed(seed.clone());
        }
        Ok(Arc::new(Self {
            me,
            incarnation: fastrand::u64(1..),
            config,
            identity,
            endpoint,
            transport,
            local_addr,
            table: Mutex::new(table),
            changed: watch::Sender::new(0),
            events: broadcast::Sender::new(EVENT_QUEUE),
            counters: Counters::default(),
            services: crate::rpc::Services::default(),
            protocols: crate::app::Protocols::default(),
            token: CancellationToken::new(),
            tracker: TaskTracker::new(),
            handshakes: Arc::new(Semaphore::new(MAX_CONCURRENT_HANDSHAKES)),
            shutting_down: AtomicBool::new(false),
            discovered: Mutex::default(),
        }))
    }

    /// Starts the accept loop and the seed keepers.
    pub(crate) fn start(self: &Arc<Self>) {
        let m = self.clone();
        self.tracker.spawn(async move { m.accept_loop().await });
        for seed in self.config.seeds.clone() {
            self.spawn_keeper(seed, None);
        }
        let m = self.clone();
        self.tracker
            .spawn(async move { m.renew_certificates().await });
    }

    fn table(&self) -> MutexGuard<'_, PeerTable<LinkHandle>> {
        self.table.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the table and tells waiters it may have changed.
    fn update<R>(&self, f: impl FnOnce(&mut PeerTable<LinkHandle>) -> R) -> R {
        let r = f(&mut self.table());
        self.changed.send_modify(|v| *v += 1);
        r
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<NodeEvent> {
        self.events.subscribe()
    }

    fn emit(&self, event: NodeEvent) {
        // No subscriber is fine: events are for whoever listens.
        let _ = self.events.send(event);
    }

    pub(crate) fn is_up(&self, name: &NodeName) -> bool {
        self.table().is_up(name)
    }

    pub(crate) fn nodes(&self) -> Vec<NodeName> {
        let mut v: Vec<_> = self.table().up().map(|(n, _)| n.clone()).collect();
        v.sort();
        v
    }

    pub(crate) fn link(&self, name: &NodeName) -> Option<LinkHandle> {
        self.table()
            .get(name)
            .and_then(|p| p.up.as_ref())
            .map(|u| u.link.clone())
    }

    /// The `Hello` this node sends to `peer`.
    fn hello(&self, peer: &NodeName) -> Hello {
        Hello {
            major: PROTOCOL_MAJOR,
            minor: PROTOCOL_MINOR,
            features: 0,
            name: self.me.clone(),
            incarnation: self.incarnation,
            listen: vec![self.local_addr],
            hidden: self.config.hidden,
            peers: if self.config.hidden {
                Vec::new()
            } else {
                self.table().shareable(peer)
            },
        }
    }

    /// Installs a connection whose `Hello` exchange completed, starts its
    /// link task, emits events and tells the other peers. With
    /// `tie_break` (the listener's side) the table may refuse it: the
    /// send stream is handed back to write the refusal on.
    #[allow(clippy::too_many_arguments)]
    fn install(
        self: &Arc<Self>,
        name: &NodeName,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
        hello: Hello,
        first: Option<Control>,
        tie_break: bool,
    ) -> Result<(), quinn::SendStream> {
        let (tx, rx) = mpsc::channel(CONTROL_QUEUE);
        let handle = LinkHandle {
            conn: conn.clone(),
            control: tx,
            closing: Arc::default(),
            lane: Arc::default(),
        };
        let addrs = observed_addrs(&hello.listen, conn.remote_address());
        let up = UpPeer {
            link: handle.clone(),
            incarnation: hello.incarnation,
            hidden: hello.hidden,
            since: SystemTime::now(),
        };
        let decided = self.update(|t| {
            if tie_break && !t.should_accept(name, hello.incarnation) {
                return None;
            }
            let installed = t.install(name, up, addrs.clone());
            let others: Vec<_> = t
                .up()
                .filter(|(n, u)| *n != name && !u.hidden)
                .map(|(_, u)| u.link.control.clone())
                .collect();
            Some((installed, others))
        });
        let Some((installed, others)) = decided else {
            return Err(send);
        };
        link::spawn(self, name.clone(), handle, send, recv, rx, first);
        let up_event = NodeEvent::NodeUp {
            node: name.clone(),
            incarnation: hello.incarnation,
            hidden: hello.hidden,
        };
        let newly_up = match installed {
            Installed::NewlyUp => true,
            Installed::Replaced { old } => {
                count(&self.counters.duplicates);
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
        };
        if newly_up {
            info!(peer = %name, incarnation = hello.incarnation, hidden = hello.hidden, "node up");
            self.emit(up_event);
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
        self.learn(hello.peers);
        Ok(())
    }

    /// A link task ended: update the table and emit `NodeDown` if that
    /// connection was the current one.
    fn link_closed(&self, name: &NodeName, link_id: usize, reason: DownReason) {
        let was_current =
            self.update(|t| t.link_closed(name, link_id, reason.clone(), SystemTime::now()));
        if was_current {
            info!(peer = %name, %reason, "node down");
            self.emit(NodeEvent::NodeDown {
                node: name.clone(),
                reason,
            });
        }
    }

    /// Dials the nodes a peer told us about that we do not know yet.
    /// Hidden nodes never dial transitively.
    fn learn(self: &Arc<Self>, peers: Vec<PeerInfo>) {
        if self.config.hidden || self.token.is_cancelled() {
            return;
        }
        for p in peers {
            if p.name == self.me || p.addrs.is_empty() {
                continue;
            }
            let started = self.update(|t| !t.is_known(&p.name) && t.begin_dial(&p.name));
            if started {
                let m = self.clone();
                self.tracker.spawn(async move {
                    let result = m.dial_started(&p.name, &p.addrs).await;
                    if let Err(e) = result
                        && !m.token.is_cancelled()
                    {
                        warn!(peer = %p.name, "could not connect to a node a peer knows: {e}");
                    }
                });
            }
        }
    }

    /// A peer broke the protocol: drop it (only it) with a named error.
    pub(crate) fn protocol_violation(&self, name: &NodeName, handle: &LinkHandle, detail: String) {
        count(&self.counters.protocol_violations);
        warn!(peer = %name, "protocol violation, dropping the peer: {detail}");
        handle.close(
            CloseCode::ProtocolViolation,
            DownReason::ProtocolViolation {
                detail: detail.clone(),
            },
            &detail,
        );
    }

    fn discovered_peers(&self) -> MutexGuard<'_, HashMap<NodeName, Discovered>> {
        self.discovered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Discovery reported `candidate` through `topology`: keep it connected.
    pub(crate) fn discovered(self: &Arc<Self>, topology: &str, candidate: Candidate) {
        {
            let mut found = self.discovered_peers();
            let entry = found.entry(candidate.node.name.clone()).or_default();
            entry.addrs = candidate.addrs;
            entry.by.insert(topology.to_owned());
        }
        if self.add_seed(candidate.node.clone()) {
            info!(peer = %candidate.node, %topology, "discovered");
            self.spawn_keeper(candidate.node, Some(topology));
        }
    }

    /// `topology` pruned `name`: unless something else still names it,
    /// stop re-dialling it and disconnect it.
    pub(crate) fn undiscovered(&self, topology: &str, name: &NodeName) {
        let forget = {
            let mut found = self.discovered_peers();
            match found.get_mut(name) {
                Some(entry) => {
                    entry.by.remove(topology);
                    let forget = entry.by.is_empty();
                    if forget {
                        found.remove(name);
                    }
                    forget
                }
                None => false,
            }
        };
        if forget && !self.config.seeds.iter().any(|s| s.name == *name) {
            info!(peer = %name, %topology, "pruned: no longer discovered");
            self.disconnect(name);
        }
    }

    /// Addresses discovery resolved for `name`, if any.
    pub(crate) fn discovered_addrs(&self, name: &NodeName) -> Vec<SocketAddr> {
        self.discovered_peers()
            .get(name)
            .map(|d| d.addrs.clone())
            .unwrap_or_default()
    }

    /// Marks `addr` as a seed; `true` if it was not one (start a keeper).
    pub(crate) fn add_seed(&self, addr: NodeAddr) -> bool {
        self.update(|t| {
            let new = !t.is_seed(&addr.name);
            t.add_seed(addr);
            new
        })
    }

    pub(crate) fn disconnect(&self, name: &NodeName) -> bool {
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

    pub(crate) async fn ping(
        &self,
        peer: &NodeName,
        timeout: Duration,
    ) -> Result<Duration, PingError> {
        let link = self
            .link(peer)
            .ok_or_else(|| PingError::NotConnected(peer.clone()))?;
        let down = |e: &dyn std::fmt::Display| PingError::NodeDown {
            peer: peer.clone(),
            detail: e.to_string(),
        };
        let nonce = fastrand::u64(..);
        let start = Instant::now();
        let exchange = async {
            let (mut send, mut recv) = link.conn.open_bi().await.map_err(|e| down(&e))?;
            let _ = send.set_priority(CONTROL_PRIORITY);
            let mut buf = StreamKind::Ping.header().to_vec();
            buf.extend(frame::encode(&Ping { nonce }, 64).map_err(|e| down(&e))?);
            send.write_all(&buf).await.map_err(|e| down(&e))?;
            let _ = send.finish();
            match transport::read_frame::<Ping>(&mut recv, 64).await {
                Ok(Some(p)) if p.nonce == nonce => Ok(start.elapsed()),
                Ok(_) | Err(StreamError::Bad(_)) => Err(PingError::BadReply { peer: peer.clone() }),
                Err(StreamError::Transport(e)) => Err(down(&e)),
            }
        };
        transport::within(timeout, exchange)
            .await
            .unwrap_or_else(|| {
                Err(PingError::Timeout {
                    peer: peer.clone(),
                    after: timeout,
                })
            })
    }

    /// Waits until `n` nodes are up or `timeout` passes.
    pub(crate) async fn wait_for_nodes(
        &self,
        n: usize,
        timeout: Duration,
    ) -> Result<(), WaitError> {
        let mut rx = self.changed.subscribe();
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let connected = self.table().up_count();
            if connected >= n {
                return Ok(());
            }
            let waited = tokio::time::timeout_at(deadline, rx.changed()).await;
            if !matches!(waited, Ok(Ok(()))) {
                return Err(WaitError {
                    connected: self.table().up_count(),
                    wanted: n,
                    after: timeout,
                });
            }
        }
    }

    /// Waits until `name` is up; `false` at the deadline.
    async fn wait_up(&self, name: &NodeName, deadline: tokio::time::Instant) -> bool {
        let mut rx = self.changed.subscribe();
        loop {
            if self.is_up(name) {
                return true;
            }
            if !matches!(
                tokio::time::timeout_at(deadline, rx.changed()).await,
                Ok(Ok(()))
            ) {
                return self.is_up(name);
            }
        }
    }

    /// Waits until `name` is not up, or the node stops.
    async fn wait_down(&self, name: &NodeName) {
        let mut rx = self.changed.subscribe();
        while self.is_up(name) {
            tokio::select! {
                biased;
                _ = self.token.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    pub(crate) fn status(&self) -> Status {
        let t = self.table();
        let mut peers: Vec<PeerStatus> = t
            .iter()
            .map(|(name, p)| PeerStatus {
                node: name.clone(),
                state: if p.up.is_some() {
                    PeerState::Up
                } else if p.dialing > 0 {
                    PeerState::Connecting
                } else {
                    PeerState::Down
                },
                rtt: p.up.as_ref().map(|u| u.link.conn.rtt()),
                connected_since: p.up.as_ref().map(|u| u.since),
                incarnation: p.incarnation,
                hidden: p.up.as_ref().is_some_and(|u| u.hidden),
                seed: p.seed.is_some(),
                addrs: p.addrs.clone(),
                last_down: p.last_down.clone(),
                last_dial_error: p.last_dial_error.clone(),
            })
            .collect();
        peers.sort_by(|a, b| a.node.cmp(&b.node));
        Status {
            node: self.me.clone(),
            incarnation: self.incarnation,
            listen: self.local_addr,
            ca_fingerprint: self.identity.ca_fingerprint().to_owned(),
            hidden: self.config.hidden,
            connections: self.endpoint.open_connections(),
            peers,
            counters: self.counters.snapshot(),
        }
    }

    pub(crate) fn is_shutdown(&self) -> bool {
        self.shutting_down.load(Ordering::Acquire)
    }

    /// Closes every connection with `Shutdown`, then stops the tasks.
    ///
    /// The order matters. A task that ends drops its handles to its
    /// connection, and quinn closes a connection whose last handle is
    /// dropped with code 0 at once, while `Endpoint::close` only queues its
    /// close to each connection's driver. So the live connections are
    /// closed directly first; the endpoint close covers those still
    /// handshaking.
    pub(crate) fn close_all(&self, reason: &str) {
        let links: Vec<LinkHandle> = self.table().up().map(|(_, u)| u.link.clone()).collect();
        for link in links {
            link.close(CloseCode::Shutdown, DownReason::LocalShutdown, reason);
        }
        self.endpoint.close(
            quinn::VarInt::from_u32(CloseCode::Shutdown.code()),
            reason.as_bytes(),
        );
        self.token.cancel();
    }

    /// Stops everything: peers see `NodeDown { Shutdown }` at once (see
    /// [`Membership::close_all`]); then waits, bounded, for the close to be
    /// delivered and the tasks to end.
    pub(crate) async fn shutdown(&self) {
        if self.shutting_down.swap(true, Ordering::AcqRel) {
            self.tracker.wait().await;
            return;
        }
        info!(node = %self.me, "shutting down");
        self.close_all("node shutting down");
        let deadline = self.config.shutdown_timeout;
        let _ = transport::within(deadline, self.endpoint.wait_idle()).await;
        self.tracker.close();
        let _ = transport::within(deadline, self.tracker.wait()).await;
    }

    /// Cookie mode: renews this node's certificate before it expires.
    async fn renew_certificates(self: Arc<Self>) {
        let every = (self.config.leaf_validity / 20).min(Duration::from_secs(300));
        loop {
            tokio::select! {
                biased;
                _ = self.token.cancelled() => return,
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

/// Where a peer listens, as this node can reach it: an unspecified listen
/// IP (`0.0.0.0`) becomes the IP the connection came from.
fn observed_addrs(listen: &[SocketAddr], remote: SocketAddr) -> Vec<SocketAddr> {
    listen
        .iter()
        .map(|a| {
            if a.ip().is_unspecified() {
                SocketAddr::new(remote.ip(), a.port())
            } else {
                *a
            }
        })
        .collect()
}

/// Counts this node's handshakes and refusals (for status and tests).
pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unspecified_listen_ip_becomes_the_observed_one() {
        let got = observed_addrs(
            &[
                "0.0.0.0:4370".parse().unwrap(),
                "10.1.1.1:5".parse().unwrap(),
            ],
            "127.0.0.3:999".parse().unwrap(),
        );
        assert_eq!(
            got,
            vec![
                "127.0.0.3:4370".parse().unwrap(),
                "10.1.1.1:5".parse().unwrap()
            ]
        );
    }
}
