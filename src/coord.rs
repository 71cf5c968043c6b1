//! Cluster coordination, as the BEAM's `:global` and `pg` give it: cluster
//! locks with fencing tokens, a global name registry, process groups and
//! leader elections.
//!
//! Each is a protocol of its own between nodes, carried by RPC services
//! whose names start with `quicmesh.` (reserved: applications cannot
//! register them). A peer may only speak for itself: a node accepts a
//! registration, group membership or leadership claim only from the node it
//! names, as its certificate says.
//!
//! There is no consensus here. Like `:global`, each operation involves the
//! nodes connected at the time; on each side of a network partition the
//! nodes go on alone, and when the partition heals, conflicting
//! registrations are resolved by a deterministic rule (see [`Registry`]).
//! Fencing tokens let a resource refuse a holder whose lock was given away
//! meanwhile.

use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use quicmesh_wire::{NodeName, RpcMode};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tracing::{Instrument, debug, info_span};

use crate::NodeEvent;
use crate::membership::Membership;
use crate::rpc::{CallContext, ENCODE_START, RpcError, Side};

mod election;
mod groups;
mod lock;
mod registry;

pub use election::{Election, LeaderChange, Leadership};
pub use groups::{GroupEvent, Groups, Member};
pub(crate) use lock::lock as lock_resource;
pub use lock::{LockError, LockGuard, LockOptions};
pub use registry::{Hlc, Keep, Registration, Registry, RegistryError, RegistryEvent};

/// Services reserved for coordination start with this.
pub(crate) const RESERVED_PREFIX: &str = "quicmesh.";

/// The coordination state of one node.
pub(crate) struct Coord {
    pub(crate) m: Arc<Membership>,
    locks: Mutex<lock::Table>,
    registry: registry::State,
    groups: groups::State,
    elections: election::State,
}

impl std::fmt::Debug for Coord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Coord")
            .field("node", &self.m.me)
            .finish_non_exhaustive()
    }
}

/// Locks a mutex, whether or not a panicking thread poisoned it.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Coord {
    /// Registers the coordination services and follows nodes coming up and
    /// going down.
    pub(crate) fn start(m: &Arc<Membership>) -> Arc<Self> {
        let coord = Arc::new(Self {
            m: m.clone(),
            locks: Mutex::new(lock::Table::default()),
            registry: registry::State::new(),
            groups: groups::State::new(),
            elections: election::State::new(),
        });
        lock::serve(&coord);
        registry::serve(&coord);
        groups::serve(&coord);
        election::serve(&coord);
        let events = m.subscribe();
        let weak = Arc::downgrade(&coord);
        let span = info_span!("coord", node = %m.me);
        m.tracker
            .spawn(follow_nodes(weak, events, m.token.clone()).instrument(span));
        coord
    }

    /// The connected nodes, sorted (hidden ones take no part).
    pub(crate) fn peers(&self) -> Vec<NodeName> {
        let mut peers = self.m.nodes();
        peers.sort();
        peers
    }

    /// Calls a coordination service on `peer`.
    pub(crate) async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &self,
        peer: &NodeName,
        service: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError> {
        let body = postcard::to_extend(request, Vec::with_capacity(ENCODE_START)).map_err(|e| {
            RpcError::Decode {
                side: Side::Request,
                service: service.to_owned(),
                detail: e.to_string(),
            }
        })?;
        let reply = self
            .m
            .call_raw(peer, service, body.into(), timeout, RpcMode::Call)
            .await?;
        quicmesh_wire::frame::decode(&reply).map_err(|e| RpcError::Decode {
            side: Side::Response,
            service: service.to_owned(),
            detail: e.to_string(),
        })
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
        let timeout = self.message_timeout();
        let results = lock::futures_join_all(peers.iter().map(|peer| async move {
            let r: Result<(), RpcError> = self.call(peer, service, request, timeout).await;
            (peer, r)
        }))
        .await;
        for (peer, r) in results {
            if let Err(e) = r {
                tracing::warn!(peer = %peer, "could not {what}: {e}");
            }
        }
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
        self.m.tracker.spawn(async move {
            let timeout = coord.message_timeout();
            if let Err(e) = coord.call::<_, ()>(&peer, service, &request, timeout).await {
                tracing::warn!(peer = %peer, "could not {what}: {e}");
            }
        });
    }

    /// The timeout of one coordination message.
    pub(crate) fn message_timeout(&self) -> Duration {
        self.m.config.rpc.timeout
    }
}

/// Serves a coordination service: `f` gets the coordination state (while
/// the node lives) and the request, and answers at once.
pub(crate) fn serve<Req, Resp>(
    coord: &Arc<Coord>,
    service: &str,
    f: fn(&Coord, &CallContext, Req) -> Resp,
) where
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
{
    let weak: Weak<Coord> = Arc::downgrade(coord);
    let registered = coord
        .m
        .services
        .register(service, move |ctx: CallContext, req: Req| {
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
        if node != coord.m.me && !peers.contains(&node) {
            lock::node_down(coord, &node);
            registry::node_down(coord, &node);
            groups::node_down(coord, &node);
            election::node_down(coord, &node);
        }
    }
    for peer in &peers {
        registry::node_up(coord, peer);
        groups::node_up(coord, peer);
        election::node_up(coord, peer);
    }
}

async fn follow_nodes(
    coord: Weak<Coord>,
    mut events: broadcast::Receiver<NodeEvent>,
    token: tokio_util::sync::CancellationToken,
) {
    loop {
        let event = tokio::select! {
            _ = token.cancelled() => return,
            e = events.recv() => e,
        };
        let Some(coord) = coord.upgrade() else { return };
        match event {
            Ok(NodeEvent::NodeUp { node, .. }) => {
                registry::node_up(&coord, &node);
                groups::node_up(&coord, &node);
                election::node_up(&coord, &node);
            }
            Ok(NodeEvent::NodeDown { node, reason }) => {
                debug!(peer = %node, %reason, "releasing what the node held");
                lock::node_down(&coord, &node);
                registry::node_down(&coord, &node);
                groups::node_down(&coord, &node);
                election::node_down(&coord, &node);
            }
            Err(broadcast::error::RecvError::Lagged(n)) => {
                tracing::warn!("coordination missed {n} node events; resynchronising");
                reconcile(&coord);
            }
            Err(broadcast::error::RecvError::Closed) => return,
        }
    }
}
