//! A connected peer, as the layers above the mesh see it.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use quicmesh_wire::{CloseCode, Control, NodeName};
use tokio::sync::mpsc;
use tracing::warn;

use crate::event::DownReason;
use crate::status::Counters;
use crate::transport;

/// What a connected peer is: its verified name, the QUIC connection, the
/// queue to its control stream, and the reason this side closed it (if
/// it did), which the `NodeDown` event reports.
#[derive(Debug)]
struct Connected {
    name: NodeName,
    conn: quinn::Connection,
    control: mpsc::Sender<Control>,
    closing: OnceLock<DownReason>,
    counters: Arc<Counters>,
    /// When the connection was installed, and when a packet from the peer
    /// last arrived, in milliseconds after that (the link task sets it).
    since: Instant,
    heard_ms: AtomicU64,
    /// Its bulk path, for a main connection.
    bulk: Mutex<BulkState>,
}

/// A connected peer: its verified name and its connection. Cheap to
/// clone (one reference count), as the peer table and every call hold
/// one; it stays valid after the connection ends (then opening streams
/// fails).
#[derive(Debug, Clone)]
pub struct Peer {
    connected: Arc<Connected>,
}

impl crate::membership::table::Link for Peer {
    fn id(&self) -> usize {
        self.connected.conn.stable_id()
    }
}

impl Peer {
    pub(crate) fn new(
        name: NodeName,
        conn: quinn::Connection,
        control: mpsc::Sender<Control>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            connected: Arc::new(Connected {
                name,
                conn,
                control,
                closing: OnceLock::new(),
                counters,
                since: Instant::now(),
                heard_ms: AtomicU64::new(0),
                bulk: Mutex::default(),
            }),
        }
    }

    /// The peer's name, as its certificate says.
    pub fn name(&self) -> &NodeName {
        &self.connected.name
    }

    /// The QUIC connection to it.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connected.conn
    }

    /// Identifies this connection among all of this node's connections
    /// (a reconnect gets another).
    pub fn connection_id(&self) -> usize {
        self.connected.conn.stable_id()
    }

    /// The peer broke a protocol: drop it (only it) with
    /// `ProtocolViolation`, count it and log it once.
    pub fn violation(&self, violation: Violation) {
        self.connected
            .counters
            .protocol_violations
            .fetch_add(1, Ordering::Relaxed);
        let detail = violation.detail;
        warn!(peer = %self.name(), "protocol violation, dropping the peer: {detail}");
        self.close(
            CloseCode::ProtocolViolation,
            DownReason::ProtocolViolation {
                detail: detail.clone(),
            },
            &detail,
        );
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.connected.conn.closed().await;
    }

    /// The queue to the peer's control stream.
    pub(crate) fn control(&self) -> &mpsc::Sender<Control> {
        &self.connected.control
    }

    /// Closes the connection, remembering why for the `NodeDown` event.
    pub(crate) fn close(&self, code: CloseCode, reason: DownReason, text: &str) {
        let _ = self.connected.closing.set(reason);
        transport::close(&self.connected.conn, code, text);
    }

    /// What this main connection knows of its bulk path.
    pub(crate) fn bulk(&self) -> MutexGuard<'_, BulkState> {
        self.connected
            .bulk
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// A packet from the peer arrived just now.
    pub(crate) fn heard(&self) {
        let ms = self.connected.since.elapsed().as_millis();
        let ms = u64::try_from(ms).unwrap_or(u64::MAX);
        self.connected.heard_ms.store(ms, Ordering::Relaxed);
    }

    /// Whether a packet from the peer arrived within `window`.
    pub(crate) fn heard_within(&self, window: Duration) -> bool {
        let heard = Duration::from_millis(self.connected.heard_ms.load(Ordering::Relaxed));
        self.connected.since.elapsed().saturating_sub(heard) < window
    }

    /// Why this side closed the connection, if it did.
    pub(crate) fn closed_by_us(&self) -> Option<DownReason> {
        self.connected.closing.get().cloned()
    }
}

/// A peer broke a protocol on a stream; the detail says what it did. The
/// mesh then drops that peer (only it) with `ProtocolViolation`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{detail}")]
pub struct Violation {
    /// What the peer did.
    pub detail: String,
}

impl Violation {
    /// A violation described by `detail`.
    pub fn new(detail: impl Into<String>) -> Self {
        Self {
            detail: detail.into(),
        }
    }
}

/// Longest wait before a failed bulk dial is tried again.
const MAX_BULK_BACKOFF: Duration = Duration::from_secs(60);

/// What a main connection knows of its bulk path, kept with its [`Peer`] (see [`crate::bulk`]).
#[derive(Debug, Default)]
pub(crate) struct BulkState {
    /// The peer's bulk port, once it said.
    pub(crate) port: Option<u16>,
    /// The bulk connection this node dialled, once up.
    pub(crate) dialled: Option<Peer>,
    /// A dial is in progress.
    pub(crate) dialling: bool,
    /// Dials that failed in a row, and when the next may start.
    pub(crate) failures: u32,
    pub(crate) not_before: Option<Instant>,
    /// The bulk connection the peer dialled to this node, if any.
    pub(crate) accepted: Option<quinn::Connection>,
}

impl BulkState {
    /// The dialled bulk connection if it is open; otherwise whether a dial
    /// should start now (and then it is marked as in progress).
    pub(crate) fn usable_or_start(&mut self, now: Instant) -> Result<Peer, bool> {
        if let Some(link) = &self.dialled {
            if link.connection().close_reason().is_none() {
                return Ok(link.clone());
            }
            self.dialled = None;
        }
        let start =
            self.port.is_some() && !self.dialling && self.not_before.is_none_or(|t| now >= t);
        if start {
            self.dialling = true;
        }
        Err(start)
    }

    /// A dial ended: with the connection, or failed (then the next one
    /// waits 1 s, doubling with each failure up to a minute).
    pub(crate) fn dialled(&mut self, outcome: Option<Peer>, now: Instant) {
        self.dialling = false;
        match outcome {
            Some(link) => {
                self.dialled = Some(link);
                self.failures = 0;
                self.not_before = None;
            }
            None => {
                self.failures = self.failures.saturating_add(1);
                let doublings = self.failures.saturating_sub(1).min(6);
                let wait = Duration::from_secs(1 << doublings).min(MAX_BULK_BACKOFF);
                self.not_before = Some(now + wait);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_dial_backs_off_and_a_success_resets_it() {
        let now = Instant::now();
        let mut s = BulkState::default();
        assert_eq!(s.usable_or_start(now).err(), Some(false), "no port yet");
        s.port = Some(9);
        assert_eq!(s.usable_or_start(now).err(), Some(true));
        assert_eq!(
            s.usable_or_start(now).err(),
            Some(false),
            "one dial at a time"
        );
        s.dialled(None, now);
        assert_eq!(s.usable_or_start(now).err(), Some(false), "backing off");
        let later = now + Duration::from_secs(1);
        assert_eq!(s.usable_or_start(later).err(), Some(true));
        s.dialled(None, later);
        assert_eq!(
            s.usable_or_start(later + Duration::from_secs(1)).err(),
            Some(false),
            "the second failure waits 2 s"
        );
        for _ in 0..20 {
            s.dialled(None, later);
        }
        assert_eq!(s.not_before, Some(later + MAX_BULK_BACKOFF));
    }
}
