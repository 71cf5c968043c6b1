//! A connected peer, as the layers above the mesh see it.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};

use quicmesh_wire::{CloseCode, Control, NodeName};
use tokio::sync::mpsc;
use tracing::warn;

use crate::event::DownReason;
use crate::status::Counters;
use crate::transport;

/// A connection installed in the peer table: the QUIC connection, the
/// queue to its control stream, and the reason this side closed it (if it
/// did), which the `NodeDown` event reports.
#[derive(Debug, Clone)]
pub(crate) struct Link {
    pub(crate) conn: quinn::Connection,
    pub(crate) control: mpsc::Sender<Control>,
    closing: Arc<OnceLock<DownReason>>,
    counters: Arc<Counters>,
}

impl crate::membership::table::Link for Link {
    fn id(&self) -> usize {
        self.conn.stable_id()
    }
}

impl Link {
    pub(crate) fn new(
        conn: quinn::Connection,
        control: mpsc::Sender<Control>,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            conn,
            control,
            closing: Arc::default(),
            counters,
        }
    }

    /// Closes the connection, remembering why for the `NodeDown` event.
    pub(crate) fn close(&self, code: CloseCode, reason: DownReason, text: &str) {
        let _ = self.closing.set(reason);
        transport::close(&self.conn, code, text);
    }

    /// Why this side closed the connection, if it did.
    pub(crate) fn closed_by_us(&self) -> Option<DownReason> {
        self.closing.get().cloned()
    }
}

/// A connected peer: its verified name and its connection. Cheap to
/// clone; it stays valid after the connection ends (then opening streams
/// fails).
#[derive(Debug, Clone)]
pub struct Peer {
    name: NodeName,
    link: Link,
}

impl Peer {
    pub(crate) fn new(name: NodeName, link: Link) -> Self {
        Self { name, link }
    }

    /// The peer's name, as its certificate says.
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// The QUIC connection to it.
    pub fn connection(&self) -> &quinn::Connection {
        &self.link.conn
    }

    /// Identifies this connection among all of this node's connections
    /// (a reconnect gets another).
    pub fn connection_id(&self) -> usize {
        self.link.conn.stable_id()
    }

    /// The peer broke a protocol: drop it (only it) with
    /// `ProtocolViolation`, count it and log it once.
    pub fn violation(&self, violation: Violation) {
        self.link
            .counters
            .protocol_violations
            .fetch_add(1, Ordering::Relaxed);
        let detail = violation.detail;
        warn!(peer = %self.name, "protocol violation, dropping the peer: {detail}");
        self.link.close(
            CloseCode::ProtocolViolation,
            DownReason::ProtocolViolation {
                detail: detail.clone(),
            },
            &detail,
        );
    }

    /// Resolves when the connection has ended.
    pub async fn closed(&self) {
        self.link.conn.closed().await;
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
