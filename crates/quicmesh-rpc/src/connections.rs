//! What RPC keeps per connection: the caller's lane to the peer and the
//! permits that bound the calls the peer has in progress here. An entry
//! lives as long as its connection; a reconnect starts a fresh one.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, RwLock, Weak};

use quicmesh_mesh::{Peer, Tasks};
use tokio::sync::{OnceCell, Semaphore};

use crate::lane::Lane;

/// RPC's state for one connection.
#[derive(Debug)]
pub(crate) struct ConnState {
    /// This side's lane on the connection, opened by the first small call.
    pub(crate) lane: OnceCell<Arc<Lane>>,
    /// Calls from the peer served at once on this connection.
    pub(crate) permits: Arc<Semaphore>,
    /// Bytes of this peer's request bodies buffered at once (permits are
    /// bytes).
    pub(crate) buffered: Arc<Semaphore>,
}

/// The state of every live connection, by connection id. Bounded by the
/// connections the mesh keeps: each entry goes when its connection ends.
/// Read on every call, so behind a read-write lock and keyed by a cheap
/// hash (the ids are the mesh's own, not a peer's).
#[derive(Debug)]
pub(crate) struct Connections {
    states: RwLock<HashMap<usize, Arc<ConnState>, BuildHasherDefault<IdHasher>>>,
    permits_per_peer: usize,
    buffered_per_peer: usize,
    tasks: Tasks,
}

impl Connections {
    pub(crate) fn new(
        permits_per_peer: usize,
        buffered_per_peer: usize,
        tasks: Tasks,
    ) -> Arc<Self> {
        Arc::new(Self {
            states: RwLock::default(),
            permits_per_peer,
            buffered_per_peer,
            tasks,
        })
    }

    /// The state of `peer`'s connection, made on first use.
    pub(crate) fn of(self: &Arc<Self>, peer: &Peer) -> Arc<ConnState> {
        let id = peer.connection_id();
        let known = self.states.read().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = known.get(&id) {
            return state.clone();
        }
        drop(known);
        let mut states = self.states.write().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = states.get(&id) {
            return state.clone();
        }
        let state = Arc::new(ConnState {
            lane: OnceCell::new(),
            permits: Arc::new(Semaphore::new(self.permits_per_peer)),
            buffered: Arc::new(Semaphore::new(self.buffered_per_peer)),
        });
        states.insert(id, state.clone());
        drop(states);
        let (weak, peer): (Weak<Self>, Peer) = (Arc::downgrade(self), peer.clone());
        self.tasks.spawn(async move {
            peer.closed().await;
            if let Some(conns) = weak.upgrade() {
                let mut states = conns.states.write().unwrap_or_else(|e| e.into_inner());
                states.remove(&peer.connection_id());
            }
        });
        state
    }
}

/// Hashes a connection id with one multiplication (Fibonacci hashing): the
/// ids are distinct numbers the mesh hands out (addresses, in quinn), not
/// chosen by a peer, so a keyed hash buys nothing; the multiplication
/// spreads their aligned low bits over the whole word.
#[derive(Debug, Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | u64::from(b);
        }
    }

    fn write_usize(&mut self, id: usize) {
        self.0 = (id as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}
