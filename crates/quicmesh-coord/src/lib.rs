//! The coordination layer of quicmesh, as the BEAM's `:global` and `pg`
//! give it: cluster locks with fencing tokens, a global name registry,
//! process groups and leader elections; and [`LocalRegistry`], Elixir's
//! `Registry` for one process.
//!
//! Each is a protocol of its own between nodes, carried by RPC services
//! whose names start with `quicmesh.` (reserved: applications cannot
//! register them). A peer may only speak for itself: a node accepts a
//! registration, group membership or leadership claim only from the node it
//! names, as its certificate says. Hidden nodes take no part: nothing is
//! synchronised with them and no grant is asked of them.
//!
//! There is no consensus here. Like `:global`, each operation involves the
//! nodes connected at the time; on each side of a network partition the
//! nodes go on alone. When the sides meet again, conflicting registrations
//! are resolved by deterministic rules (see [`Registry`]), and of two
//! holders of one lock (or two leaders of one election) the larger token
//! keeps it while the other's guard reports the loss ([`LockGuard::lost`]).
//! Tokens ([`Token`]) are hybrid-logical-clock readings with the node as
//! tie-break: unique, and larger for every later grant, across partitions,
//! pauses and restarts of the whole cluster, so a resource can refuse a
//! holder whose lock was given away meanwhile.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use quicmesh_mesh::{EventError, EventStream, Mesh, NodeEvent};
use quicmesh_rpc::{CallContext, Rpc, RpcError};
use quicmesh_wire::NodeName;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info_span};

mod clock;
mod counters;
mod election;
mod groups;
mod local_registry;
mod lock;
mod registry;
mod token;

pub use counters::{CoordCounters, CoordMetrics};
pub use election::{Election, LeaderChange, Leadership};
pub use groups::{GroupEvent, Groups, Member};
pub use local_registry::{AlreadyRegistered, Keys, LocalRegistry, Registered};
pub use lock::{HeldLock, LockError, LockGuard, LockOptions};
pub use quicmesh_wire::coord::{Hlc, Registration};
pub use registry::{Keep, Registry, RegistryError, RegistryEvent};
pub use token::Token;

/// How far ahead of a node's wall clock a peer's clock reading may be
/// before the node refuses it (and the message that carries it).
pub const MAX_CLOCK_DRIFT: Duration = clock::MAX_DRIFT;

/// The coordination state of one node: its lock tables, registry, groups
/// and elections, kept in step with every connected node over RPC.
pub struct Coord {
    rpc: Rpc,
    clock: clock::Clock,
    counters: counters::Counters,
    locks: Mutex<lock::Table>,
    held: Mutex<lock::Held>,
    registry: registry::State,
    groups: groups::State,
    elections: election::State,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord")
            .field("node", self.me())
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, whether or not a panicking thread poisoned it.
fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Coord {
    /// Registers the coordination services and follows nodes coming up and
    /// going down.
    pub fn start(rpc: &Rpc) -> Arc<Self> {
        let coord = Arc::new(Self {
            rpc: rpc.clone(),
            clock: clock::Clock::default(),
            counters: counters::Counters::default(),
            locks: Mutex::new(lock::Table::default()),
            held: Mutex::new(lock::Held::default()),
            registry: registry::State::new(),
            groups: groups::State::new(),
            elections: election::State::new(),
        });
        lock::serve(&coord);
        registry::serve(&coord);
        groups::serve(&coord);
        election::serve(&coord);
        let mesh = rpc.mesh();
        let events = mesh.events();
        let weak = Arc::downgrade(&coord);
        let span = info_span!("coord", node = %mesh.name());
        let tasks = mesh.tasks().clone();
        mesh.tasks()
            .spawn(async move { follow_nodes(weak, events, tasks).await }.instrument(span));
        coord
    }

    /// The global name registry; `node`, if given, is kept alive as long
    /// as the registry handle is (the facade passes the node itself, so a
    /// registry handle keeps its node running, as a `Node` clone would).
    pub fn registry(
        self: &Arc<Self>,
        node: Option<Arc<dyn std::any::Any + Send + Sync>>,
    ) -> Registry {
        Registry {
            coord: self.clone(),
            _node: node,
        }
    }

    /// The process groups.
    pub fn groups(self: &Arc<Self>) -> Groups {
        Groups {
            coord: self.clone(),
        }
    }

    /// The leader election called `name`.
    pub fn election(self: &Arc<Self>, name: &str) -> Election {
        Election {
            coord: self.clone(),
            name: name.to_owned(),
        }
    }

    /// Takes the cluster lock of `resource` with `options` (see
    /// [`LockGuard`]).
    pub async fn lock(
        self: &Arc<Self>,
        resource: &str,
        options: &LockOptions,
    ) -> Result<LockGuard, LockError> {
        let started = std::time::Instant::now();
        let taken = lock::acquire(self, resource, options).await;
        let waited = started.elapsed();
        self.counters.lock_attempt(taken.is_ok(), waited);
        taken
    }

    /// Every lock in this node's table (held by any node, this one
    /// included), sorted by resource.
    pub fn locks(&self) -> Vec<HeldLock> {
        lock::table(self)
    }

    /// Every election this node has heard of, sorted by name, with who
    /// leads it as this node knows.
    pub fn leaders(&self) -> Vec<(String, LeaderChange)> {
        election::known(self)
    }

    /// What coordination refused from peers, and what it lost.
    pub fn counters(&self) -> CoordCounters {
        self.counters.snapshot()
    }

    /// What coordination measured: its counters, lock attempts and waits,
    /// the sizes of the lock table and the registry, leader changes.
    pub fn metrics(&self) -> CoordMetrics {
        CoordMetrics {
            counters: self.counters.snapshot(),
            locks_acquired: self.counters.locks_acquired.load(Ordering::Relaxed),
            locks_failed: self.counters.locks_failed.load(Ordering::Relaxed),
            lock_wait: self.counters.lock_wait.snapshot(),
            locks_held: locked(&self.locks).len(),
            registry_names: self.registry.len(),
            leader_changes: self.elections.changes(),
        }
    }

    /// Moves the clock past `seen` from a peer (see [`clock::Clock::observe`]),
    /// counting a refusal.
    pub(crate) fn take_in(&self, seen: Hlc) -> Result<(), clock::Ahead> {
        let taken = self.clock.observe(seen);
        if taken.is_err() {
            counters::count(&self.counters.clocks_refused);
        }
        taken
    }

    /// One of this node's locks lost to another node's grant: what was
    /// built on it (a leadership) ends too.
    pub(crate) fn lock_lost(&self, resource: &str, token: Token) {
        election::lost(self, resource, token);
    }

    /// The mesh of this node.
    pub fn mesh(&self) -> &Mesh {
        self.rpc.mesh()
    }

    /// This node's name.
    pub(crate) fn me(&self) -> &NodeName {
        self.mesh().name()
    }

    /// The connected nodes that take part, sorted: hidden ones do not.
    pub(crate) fn peers(&self) -> Vec<NodeName> {
        self.mesh().visible_nodes()
    }

    /// Calls a coordination service on `peer`.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &NodeName,
        service: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        self.rpc.call(peer, service, request, timeout).await
    }

    /// Calls `service` (answered with `()`) on every node of `peers` at
    /// once; logs each failure as "could not {what}".
    pub(crate) async fn tell<Req: Serialize>(
        &self,
        peers: &[NodeName],
        service: &str,
        request: &Req,
        what: &str,
    ) {
        let results: Vec<(&NodeName, Result<(), RpcError>)> =
            self.ask_each(peers, service, request).await;
        for (peer, r) in results {
            if let Err(e) = r {
                tracing::warn!(peer = %peer, "could not {what}: {e}");
            }
        }
    }

    /// Calls `service` on every node of `peers` at once, with the message
    /// timeout; each node with its answer, in the order of `peers`.
    pub(crate) async fn ask_each<'p, Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peers: &'p [NodeName],
        service: &str,
        request: &Req,
    ) -> Vec<(&'p NodeName, Result<Resp, RpcError>)> {
        let timeout = self.message_timeout();
        join_all(
            peers.iter().map(|peer| async move {
                (peer, self.call(peer, service, request, timeout).await)
            }),
        )
        .await
    }

    /// Sends `request` to `service` on `peer` from a task of the node's;
    /// logs a failure as "could not {what}".
    pub(crate) fn send_in_background<Req: Serialize + Send + Sync + 'static>(
        self: &Arc<Self>,
        peer: &NodeName,
        service: &'static str,
        request: Req,
        what: &'static str,
    ) {
        let (coord, peer) = (self.clone(), peer.clone());
        self.mesh().tasks().spawn(async move {
            let timeout = coord.message_timeout();
            if let Err(e) = coord.call::<_, ()>(&peer, service, &request, timeout).await {
                tracing::warn!(peer = %peer, "could not {what}: {e}");
            }
        });
    }

    /// The timeout of one coordination message.
    pub(crate) fn message_timeout(&self) -> Duration {
        self.rpc.config().timeout
    }
}

/// Runs futures concurrently on this task, in order of the results.
async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (fut, slot) in pending.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// Serves a coordination service: `f` gets the coordination state (while
/// the node lives) and the request, and answers at once.
pub(crate) fn serve<Req, Resp>(
    coord: &Arc<Coord>,
    service: &str,
    f: fn(&Arc<Coord>, &CallContext, Req) -> Resp,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let weak: Weak<Coord> = Arc::downgrade(coord);
    let registered = coord
        .rpc
        .register_reserved(service, move |ctx: CallContext, req: Req| {
            let answer = weak
                .upgrade()
                .map(|coord| f(&coord, &ctx, req))
                .ok_or("the node is stopping");
            async move { answer }
        });
    // Names are fixed and registered once, before anything else can be.
    debug_assert!(registered.is_ok(), "{service} registered twice");
}

/// After missed node events: forgets what nodes no longer connected held,
/// and sends every connected node this node's state again.
fn reconcile(coord: &Arc<Coord>) {
    let peers = coord.peers();
    let mut known: Vec<NodeName> = lock::holders(coord);
    known.extend(registry::owners(coord));
    known.extend(groups::nodes(coord));
    known.sort();
    known.dedup();
    for node in known {
        if node != *coord.me() && !peers.contains(&node) {
            lock::node_down(coord, &node);
            registry::node_down(coord, &node);
            groups::node_down(coord, &node);
            election::node_down(coord, &node);
        }
    }
    if !coord.mesh().config().hidden {
        for peer in &peers {
            meet(coord, peer);
        }
    }
}

/// Tells a node that came up this node's state, from a task of the
/// node's: first the locks it holds (so the peer knows who holds an
/// election before it hears who leads it), then its names, group
/// memberships and leaderships.
fn meet(coord: &Arc<Coord>, peer: &NodeName) {
    let (coord, peer) = (coord.clone(), peer.clone());
    let tasks = coord.mesh().tasks().clone();
    tasks.spawn(async move {
        let held = lock::held_here(&coord);
        lock::sync_to(&coord, &peer, &held).await;
        registry::node_up(&coord, &peer);
        groups::node_up(&coord, &peer);
        election::node_up(&coord, &peer);
    });
}

async fn follow_nodes(coord: Weak<Coord>, mut events: EventStream, tasks: quicmesh_mesh::Tasks) {
    loop {
        let event = tokio::select! {
            _ = tasks.cancelled() => return,
            e = events.recv() => e,
        };
        let Some(coord) = coord.upgrade() else { return };
        match event {
            // Hidden nodes (an admin command, a remote shell) take no
            // part: nothing is synchronised with them, either way.
            Ok(NodeEvent::NodeUp { node, hidden, .. }) => {
                if !hidden && !coord.mesh().config().hidden {
                    meet(&coord, &node);
                }
            }
            Ok(NodeEvent::NodeDown { node, reason }) => {
                debug!(peer = %node, %reason, "releasing what the node held");
                lock::node_down(&coord, &node);
                registry::node_down(&coord, &node);
                groups::node_down(&coord, &node);
                election::node_down(&coord, &node);
            }
            Err(EventError::Lagged(n)) => {
                tracing::warn!("coordination missed {n} node events; resynchronising");
                reconcile(&coord);
            }
            Ok(_) => {}
            Err(_) => return,
        }
    }
}
