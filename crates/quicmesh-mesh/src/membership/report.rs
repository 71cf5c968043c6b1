//! What the table says, read out: waiting for peers to come up or go,
//! and the status report.

use std::net::SocketAddr;
use std::time::Duration;

use quicmesh_wire::NodeName;

use super::{Inner, table};
use crate::error::WaitError;
use crate::metrics::{MeshMetrics, PeerCounts};
use crate::peer::Peer;
use crate::status::{PeerState, PeerStatus, Status};

impl Inner {
    /// Waits until `n` nodes are up or `timeout` passes.
    pub(super) async fn wait_for_nodes(
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
    pub(super) async fn wait_up(&self, name: &NodeName, deadline: tokio::time::Instant) -> bool {
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
    pub(super) async fn wait_down(&self, name: &NodeName) {
        let mut rx = self.changed.subscribe();
        while self.is_up(name) {
            tokio::select! {
                biased;
                _ = self.tasks.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// Peers by state and the bytes of live connections, read under one
    /// short hold of the table; the rest from the counters.
    pub(super) fn metrics(&self) -> MeshMetrics {
        let (mut peers, mut live) = (PeerCounts::default(), (0, 0));
        for (_, p) in self.table().iter() {
            match state(p) {
                PeerState::Up => peers.up += 1,
                PeerState::Connecting => peers.connecting += 1,
                PeerState::Down => peers.down += 1,
            }
            if let Some(u) = &p.up {
                let s = u.link.connection().stats();
                live.0 += s.udp_tx.bytes;
                live.1 += s.udp_rx.bytes;
            }
        }
        let connections = self.endpoint.open_connections();
        let counters = self.counters.snapshot();
        self.stats.snapshot(peers, connections, counters, live)
    }

    pub(super) fn status(&self) -> Status {
        let t = self.table();
        let mut peers: Vec<PeerStatus> = t
            .iter()
            .map(|(name, p)| PeerStatus {
                node: name.clone(),
                state: state(p),
                rtt: p.up.as_ref().map(|u| u.link.connection().rtt()),
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
            ca_fingerprint: self.identity.ca_fingerprint(),
            hidden: self.config.hidden,
            connections: self.endpoint.open_connections(),
            bulk_listen: self
                .bulk
                .as_ref()
                .map(|b| SocketAddr::new(self.local_addr.ip(), b.port())),
            bulk_connections: self.bulk.as_ref().map_or(0, |b| b.open_connections()),
            peers,
            counters: self.counters.snapshot(),
        }
    }
}

/// Up, connecting (a dial running or queued) or down.
fn state(p: &table::Peer<Peer>) -> PeerState {
    if p.up.is_some() {
        PeerState::Up
    } else if p.dialing > 0 || p.queued {
        PeerState::Connecting
    } else {
        PeerState::Down
    }
}
