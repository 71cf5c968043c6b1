//! What `Node::status` reports.

use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use quicmesh_wire::NodeName;

use crate::event::DownReason;

/// A snapshot of a node and its peers.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct Status {
    /// This node.
    pub node: NodeName,
    /// This node's incarnation.
    pub incarnation: u64,
    /// Where it listens.
    pub listen: SocketAddr,
    /// Fingerprint of the CA it trusts (equal on every node of a cluster).
    pub ca_fingerprint: String,
    /// Whether this node is hidden.
    pub hidden: bool,
    /// Open QUIC connections of the endpoint (including ones still
    /// handshaking or closing); equals the number of up peers when idle.
    pub connections: usize,
    /// Where its bulk path listens (`None` with `bulk_path` off).
    pub bulk_listen: Option<SocketAddr>,
    /// Open connections of the bulk path, dialled and accepted: at most
    /// one each way per up peer, and none before a large call.
    pub bulk_connections: usize,
    /// Every node it knows, sorted by name.
    pub peers: Vec<PeerStatus>,
    /// Handshake and protocol counters.
    pub counters: CounterSnapshot,
}

/// One peer in a [`Status`].
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct PeerStatus {
    /// The peer.
    pub node: NodeName,
    /// Up, connecting, or down.
    pub state: PeerState,
    /// Smoothed round-trip time, while up.
    pub rtt: Option<Duration>,
    /// When the current connection came up.
    pub connected_since: Option<SystemTime>,
    /// Its incarnation, once known.
    pub incarnation: Option<u64>,
    /// Whether it is hidden.
    pub hidden: bool,
    /// Whether it is a seed (kept connected).
    pub seed: bool,
    /// Where it listens.
    pub addrs: Vec<SocketAddr>,
    /// Why and when it last went down.
    pub last_down: Option<(DownReason, SystemTime)>,
    /// Why the last dial to it failed, if it did.
    pub last_dial_error: Option<String>,
}

/// A peer's connection state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PeerState {
    /// Connected.
    Up,
    /// A dial is in progress.
    Connecting,
    /// Not connected.
    Down,
}

impl fmt::Display for PeerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "up",
            Self::Connecting => "connecting",
            Self::Down => "down",
        })
    }
}

/// Counters kept by a node.
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) auth_failures: AtomicU64,
    pub(crate) handshake_failures: AtomicU64,
    pub(crate) protocol_violations: AtomicU64,
    pub(crate) duplicates: AtomicU64,
    pub(crate) peers_refused: AtomicU64,
    pub(crate) names_in_use: AtomicU64,
    pub(crate) handshakes_retried: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) handshakes_refused_per_source: AtomicU64,
    pub(crate) revoked: AtomicU64,
    pub(crate) bulk_accepted: AtomicU64,
    pub(crate) bulk_refused: AtomicU64,
}

/// The counters' values at one moment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CounterSnapshot {
    /// Incoming connections refused on identity (other cookie or CA, no
    /// client certificate, no node name) or refused by the peer's check
    /// of this node.
    pub auth_failures: u64,
    /// Incoming handshakes that failed or timed out for other reasons.
    pub handshake_failures: u64,
    /// Peers dropped for breaking the protocol.
    pub protocol_violations: u64,
    /// Duplicate connections resolved by the tie-break.
    pub duplicates: u64,
    /// Names peers told of that were not taken in: the table was full
    /// (`max_peers`).
    pub peers_refused: u64,
    /// Connections refused because a live node already has the name (a
    /// second node started with a name in use).
    pub names_in_use: u64,
    /// Incoming handshakes answered with a QUIC Retry (many handshakes
    /// were in progress and the sender had not proved its address).
    pub handshakes_retried: u64,
    /// Incoming handshakes refused because 256 were in progress.
    pub handshakes_refused: u64,
    /// Incoming handshakes refused because their sender's IP address had
    /// [`MAX_HANDSHAKES_PER_SOURCE`](crate::MAX_HANDSHAKES_PER_SOURCE) in
    /// progress already.
    pub handshakes_refused_per_source: u64,
    /// Peers dropped or refused because their certificate is revoked, and
    /// connections a peer refused or dropped because it found this node's
    /// certificate revoked.
    pub revoked: u64,
    /// Bulk-path connections peers opened to this node and it took.
    pub bulk_accepted: u64,
    /// Bulk-path connections refused: no main connection from that node,
    /// no valid identity, or too many bulk handshakes at once.
    pub bulk_refused: u64,
}

impl CounterSnapshot {
    /// Every counter with its field's name, in declaration order (what
    /// `quicmesh status` lists).
    pub fn named(&self) -> [(&'static str, u64); 12] {
        // Destructured whole: a new counter does not compile until named.
        let Self {
            auth_failures,
            handshake_failures,
            protocol_violations,
            duplicates,
            peers_refused,
            names_in_use,
            handshakes_retried,
            handshakes_refused,
            handshakes_refused_per_source,
            revoked,
            bulk_accepted,
            bulk_refused,
        } = *self;
        [
            ("auth_failures", auth_failures),
            ("handshake_failures", handshake_failures),
            ("protocol_violations", protocol_violations),
            ("duplicates", duplicates),
            ("peers_refused", peers_refused),
            ("names_in_use", names_in_use),
            ("handshakes_retried", handshakes_retried),
            ("handshakes_refused", handshakes_refused),
            (
                "handshakes_refused_per_source",
                handshakes_refused_per_source,
            ),
            ("revoked", revoked),
            ("bulk_accepted", bulk_accepted),
            ("bulk_refused", bulk_refused),
        ]
    }
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CounterSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CounterSnapshot {
            auth_failures: get(&self.auth_failures),
            handshake_failures: get(&self.handshake_failures),
            protocol_violations: get(&self.protocol_violations),
            duplicates: get(&self.duplicates),
            peers_refused: get(&self.peers_refused),
            names_in_use: get(&self.names_in_use),
            handshakes_retried: get(&self.handshakes_retried),
            handshakes_refused: get(&self.handshakes_refused),
            handshakes_refused_per_source: get(&self.handshakes_refused_per_source),
            revoked: get(&self.revoked),
            bulk_accepted: get(&self.bulk_accepted),
            bulk_refused: get(&self.bulk_refused),
        }
    }
}

impl fmt::Display for Status {
    /// A table: one line per peer.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "node {} (listening on {}, CA {}{})",
            self.node,
            self.listen,
            self.ca_fingerprint,
            if self.hidden { ", hidden" } else { "" }
        )?;
        writeln!(
            f,
            "  {:<28} {:<10} {:>9} {:>10}  LAST DOWN",
            "PEER", "STATE", "RTT", "UP FOR"
        )?;
        let now = SystemTime::now();
        for p in &self.peers {
            let rtt = p.rtt.map_or_else(
                || String::from("-"),
                |d| format!("{:.2}ms", d.as_secs_f64() * 1e3),
            );
            let up_for = p
                .connected_since
                .and_then(|s| now.duration_since(s).ok())
                .map_or_else(|| String::from("-"), |d| format!("{:.1}s", d.as_secs_f64()));
            let down = p
                .last_down
                .as_ref()
                .map(|(r, _)| r.to_string())
                .or_else(|| p.last_dial_error.clone())
                .unwrap_or_else(|| "-".to_owned());
            writeln!(
                f,
                "  {:<28} {:<10} {:>9} {:>10}  {}",
                p.node.as_str(),
                p.state.to_string(),
                rtt,
                up_for,
                down
            )?;
        }
        Ok(())
    }
}
