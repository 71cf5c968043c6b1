//! Application protocols: raw, authenticated QUIC streams by name.
//!
//! An application registers a protocol name and accepts the streams peers
//! open for it, each with the peer's verified name; it opens streams to any
//! connected peer with [`crate::Rpc::open_bi`] / [`crate::Rpc::open_uni`].
//! Such a stream starts with an [`quicmesh_wire::AppHeader`] the node writes
//! and reads; the rest belongs to the application. A stream for a protocol
//! nobody registered is reset with [`quicmesh_wire::CloseCode::UnknownProtocol`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use quicmesh_mesh::{Violation, io, refuse};
use quicmesh_wire::{AppHeader, CloseCode, MAX_HEADER_FRAME, NodeName};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::{RegisterError, check_name};

/// Streams waiting in a protocol's queue before new ones are refused with
/// `Overloaded`.
const ACCEPT_QUEUE: usize = 128;

/// A stream a peer opened for a registered protocol.
#[derive(Debug)]
#[non_exhaustive]
pub struct IncomingStream {
    /// The peer, as its certificate names it.
    pub peer: NodeName,
    /// The send half; `None` for a unidirectional stream.
    pub send: Option<SendStream>,
    /// The receive half.
    pub recv: RecvStream,
}

/// Each registration's queue, tagged with a registration number so a
/// dropped listener removes only its own entry.
type Queues = Mutex<HashMap<String, (u64, mpsc::Sender<IncomingStream>)>>;

/// The protocols a node serves.
#[derive(Debug, Default)]
pub(crate) struct Protocols {
    queues: Arc<Queues>,
    registrations: AtomicU64,
}

impl Protocols {
    pub(crate) fn register(&self, name: &str) -> Result<ProtocolListener, RegisterError> {
        check_name(name)?;
        let mut map = self.queues.lock().unwrap_or_else(|e| e.into_inner());
        if map.get(name).is_some_and(|(_, tx)| !tx.is_closed()) {
            return Err(RegisterError::AlreadyRegistered(name.to_owned()));
        }
        let (tx, rx) = mpsc::channel(ACCEPT_QUEUE);
        let id = self.registrations.fetch_add(1, Ordering::Relaxed);
        map.insert(name.to_owned(), (id, tx));
        Ok(ProtocolListener {
            name: name.to_owned(),
            id,
            rx,
            registry: Arc::downgrade(&self.queues),
        })
    }

    /// Hands an incoming stream to its protocol's listener, or refuses it.
    pub(crate) async fn dispatch(
        &self,
        peer: NodeName,
        mut send: Option<SendStream>,
        mut recv: RecvStream,
        patience: Duration,
    ) -> Result<(), Violation> {
        let header = io::read_header(&mut recv, MAX_HEADER_FRAME, patience, "application stream");
        let Some(header): Option<AppHeader> = header.await? else {
            return Ok(());
        };
        let queue = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&header.protocol)
            .map(|(_, tx)| tx.clone());
        let Some(queue) = queue else {
            debug!(%peer, protocol = %header.protocol, "refused a stream for an unknown protocol");
            refuse(send.as_mut(), &mut recv, CloseCode::UnknownProtocol);
            return Ok(());
        };
        match queue.try_send(IncomingStream { peer, send, recv }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(mut s)) => {
                refuse(s.send.as_mut(), &mut s.recv, CloseCode::Overloaded);
            }
            Err(mpsc::error::TrySendError::Closed(mut s)) => {
                refuse(s.send.as_mut(), &mut s.recv, CloseCode::UnknownProtocol);
            }
        }
        Ok(())
    }
}

/// Accepts the streams peers open for one protocol. Dropping it
/// unregisters the protocol.
#[derive(Debug)]
pub struct ProtocolListener {
    name: String,
    id: u64,
    rx: mpsc::Receiver<IncomingStream>,
    registry: Weak<Queues>,
}

impl ProtocolListener {
    /// The protocol's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The next incoming stream; `None` once the node has shut down.
    pub async fn accept(&mut self) -> Option<IncomingStream> {
        self.rx.recv().await
    }
}

impl Drop for ProtocolListener {
    fn drop(&mut self) {
        if let Some(registry) = self.registry.upgrade() {
            let mut map = registry.lock().unwrap_or_else(|e| e.into_inner());
            // Only remove our own queue, not a newer registration's.
            if map.get(&self.name).is_some_and(|(id, _)| *id == self.id) {
                map.remove(&self.name);
            }
        }
    }
}

/// Why a stream could not be opened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OpenError {
    /// This node is not connected to the peer.
    #[error("not connected to {0}")]
    NotConnected(NodeName),
    /// The connection failed while opening the stream.
    #[error("{peer} went down: {detail}")]
    NodeDown {
        /// The peer.
        peer: NodeName,
        /// The transport's reason.
        detail: String,
    },
    /// The protocol name is empty or longer than 255 bytes.
    #[error("invalid protocol name {0:?}")]
    BadName(String),
}

/// Whether a stream error means the peer serves no such protocol.
pub fn is_unknown_protocol(code: VarInt) -> bool {
    CloseCode::from_code(code.into_inner()) == CloseCode::UnknownProtocol
}
