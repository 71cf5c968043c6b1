//! What RPC keeps per connection: the caller's lane to the peer and the
//! permits that bound the calls the peer has in progress here. An entry
//! lives as long as its connection; a reconnect starts a fresh one.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

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
}

/// The state of every live connection, by connection id. Bounded by the
/// connections the mesh keeps: each entry goes when its connection ends.
#[derive(Debug)]
pub(crate) struct Connections {
    states: Mutex<HashMap<usize, Arc<ConnState>>>,
    permits_per_peer: usize,
    tasks: Tasks,
}

impl Connections {
    pub(crate) fn new(permits_per_peer: usize, tasks: Tasks) -> Arc<Self> {
        Arc::new(Self {
            states: Mutex::default(),
            permits_per_peer,
            tasks,
        })
    }

    /// The state of `peer`'s connection, made on first use.
    pub(crate) fn of(self: &Arc<Self>, peer: &Peer) -> Arc<ConnState> {
        let id = peer.connection_id();
        let mut states = self.states.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = states.get(&id) {
            return state.clone();
        }
        let state = Arc::new(ConnState {
            lane: OnceCell::new(),
            permits: Arc::new(Semaphore::new(self.permits_per_peer)),
        });
        states.insert(id, state.clone());
        drop(states);
        let (weak, peer): (Weak<Self>, Peer) = (Arc::downgrade(self), peer.clone());
        self.tasks.spawn(async move {
            peer.closed().await;
            if let Some(conns) = weak.upgrade() {
                let mut states = conns.states.lock().unwrap_or_else(|e| e.into_inner());
                states.remove(&peer.connection_id());
            }
        });
        state
    }
}
