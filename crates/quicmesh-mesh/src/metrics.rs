//! What the mesh measures for a metrics endpoint, beyond the counters of
//! [`Status`](crate::Status): node ups and downs by reason, refused
//! identities by reason, the heartbeat RTT, bytes and streams.
//!
//! Everything here is read at scrape time by `Mesh::metrics`; nothing
//! is kept per scrape, and the only label values are the fixed names of
//! [`DownReason::kind`] and [`auth_failure_kind`], so a peer cannot make
//! the label sets grow.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use quicmesh_identity::AuthFailure;

use crate::event::DownReason;
use crate::histogram::{Histogram, HistogramSnapshot};
use crate::status::CounterSnapshot;

/// The live measurements of one node (beside its counters).
#[derive(Debug, Default)]
pub(crate) struct Stats {
    pub(crate) handshakes_accepted: AtomicU64,
    pub(crate) nodes_up: AtomicU64,
    /// Rare events (a node down, a refused identity): a mutex is fine.
    nodes_down: Mutex<BTreeMap<&'static str, u64>>,
    auth_failures: Mutex<BTreeMap<&'static str, u64>>,
    pub(crate) heartbeat_rtt: Histogram,
    pub(crate) streams_bi: AtomicU64,
    pub(crate) streams_uni: AtomicU64,
    /// Bytes of connections that ended, added once they left the table.
    ended_sent: AtomicU64,
    ended_received: AtomicU64,
    /// The largest totals reported so far: a connection that left the
    /// table but is not yet added to `ended_*` must not make a total dip.
    reported_sent: AtomicU64,
    reported_received: AtomicU64,
}

fn bump(map: &Mutex<BTreeMap<&'static str, u64>>, key: &'static str) {
    let mut m = map.lock().unwrap_or_else(|e| e.into_inner());
    *m.entry(key).or_default() += 1;
}

fn read(map: &Mutex<BTreeMap<&'static str, u64>>) -> Vec<(&'static str, u64)> {
    let m = map.lock().unwrap_or_else(|e| e.into_inner());
    m.iter().map(|(k, v)| (*k, *v)).collect()
}

impl Stats {
    pub(crate) fn node_down(&self, reason: &DownReason) {
        bump(&self.nodes_down, reason.kind());
    }

    pub(crate) fn auth_failure(&self, reason: &AuthFailure) {
        bump(&self.auth_failures, auth_failure_kind(reason));
    }

    /// A connection ended and left the peer table: its bytes move from
    /// the live sum to the ended totals.
    pub(crate) fn connection_ended(&self, conn: &quinn::Connection) {
        let s = conn.stats();
        self.ended_sent.fetch_add(s.udp_tx.bytes, Ordering::Relaxed);
        self.ended_received
            .fetch_add(s.udp_rx.bytes, Ordering::Relaxed);
    }

    /// Bytes sent and received: the ended connections' plus `live`'s,
    /// never less than reported before.
    fn bytes(&self, live: (u64, u64)) -> (u64, u64) {
        let total = |ended: &AtomicU64, live: u64, reported: &AtomicU64| {
            let now = ended.load(Ordering::Relaxed) + live;
            reported.fetch_max(now, Ordering::Relaxed).max(now)
        };
        (
            total(&self.ended_sent, live.0, &self.reported_sent),
            total(&self.ended_received, live.1, &self.reported_received),
        )
    }

    pub(crate) fn snapshot(
        &self,
        peers: PeerCounts,
        connections: usize,
        counters: CounterSnapshot,
        live_bytes: (u64, u64),
    ) -> MeshMetrics {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        let (bytes_sent, bytes_received) = self.bytes(live_bytes);
        MeshMetrics {
            peers,
            connections,
            counters,
            handshakes_accepted: get(&self.handshakes_accepted),
            nodes_up: get(&self.nodes_up),
            nodes_down: read(&self.nodes_down),
            auth_failures: read(&self.auth_failures),
            heartbeat_rtt: self.heartbeat_rtt.snapshot(),
            bytes_sent,
            bytes_received,
            streams_bi: get(&self.streams_bi),
            streams_uni: get(&self.streams_uni),
        }
    }
}

/// A short, fixed name for each kind of [`AuthFailure`], for a metric
/// label: `unknown_issuer`, `name_mismatch`, `no_node_name`, `expired`,
/// `not_yet_valid`, `bad_certificate`, `refused_by_peer`, else `other`.
pub fn auth_failure_kind(reason: &AuthFailure) -> &'static str {
    match reason {
        AuthFailure::UnknownIssuer => "unknown_issuer",
        AuthFailure::NameMismatch { .. } => "name_mismatch",
        AuthFailure::NoNodeName => "no_node_name",
        AuthFailure::Expired => "expired",
        AuthFailure::NotYetValid => "not_yet_valid",
        AuthFailure::BadCertificate(_) => "bad_certificate",
        AuthFailure::RefusedByPeer(_) => "refused_by_peer",
        AuthFailure::Revoked => "revoked",
        _ => "other",
    }
}

/// Known peers by state.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PeerCounts {
    /// Connected.
    pub up: usize,
    /// A dial in progress.
    pub connecting: usize,
    /// Known, not connected.
    pub down: usize,
}

/// What the mesh measured, at one moment (`Mesh::metrics`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct MeshMetrics {
    /// Known peers by state.
    pub peers: PeerCounts,
    /// Open QUIC connections of the endpoint (including handshakes).
    pub connections: usize,
    /// The counters [`Status`](crate::Status) reports.
    pub counters: CounterSnapshot,
    /// Incoming handshakes that ended with the peer installed.
    pub handshakes_accepted: u64,
    /// `NodeUp` events (dialled or accepted).
    pub nodes_up: u64,
    /// `NodeDown` events by [`DownReason::kind`], sorted by kind.
    pub nodes_down: Vec<(&'static str, u64)>,
    /// Refused identities by [`auth_failure_kind`], sorted by kind.
    pub auth_failures: Vec<(&'static str, u64)>,
    /// The QUIC round-trip estimate of every up peer's connection,
    /// sampled once per heartbeat interval by its link.
    pub heartbeat_rtt: HistogramSnapshot,
    /// UDP payload bytes sent to installed peers (ended and live
    /// connections).
    pub bytes_sent: u64,
    /// UDP payload bytes received from installed peers.
    pub bytes_received: u64,
    /// Bidirectional streams installed peers opened to this node.
    pub streams_bi: u64,
    /// Unidirectional streams installed peers opened to this node.
    pub streams_uni: u64,
}
