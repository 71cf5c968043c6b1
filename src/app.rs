//! Application protocols: raw, authenticated QUIC streams by name.
//!
//! An application registers a protocol name and accepts the streams peers
//! open for it, each with the peer's verified name; it opens streams to any
//! connected peer with [`crate::Node::open_bi`] / [`crate::Node::open_uni`].
//! Such a stream starts with an [`quicmesh_wire::AppHeader`] the node writes
//! and reads; the rest belongs to the application. A stream for a protocol
//! nobody registered is reset with [`quicmesh_wire::CloseCode::UnknownProtocol`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use quicmesh_wire::{AppHeader, CloseCode, MAX_HEADER_FRAME, NodeName};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::mpsc;
use tracing::debug;

use crate::rpc::{RegisterError, check_name};
use crate::transport::{self, StreamError};

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
    ) -> Result<(), String> {
        let header =
            transport::within(patience, transport::read_frame(&mut recv, MAX_HEADER_FRAME));
        let header: AppHeader = match header.await {
            Some(Ok(Some(h))) => h,
            Some(Ok(None)) => return Err("application stream ended before its header".to_owned()),
            Some(Err(StreamError::Bad(e))) => {
                return Err(format!("application stream header: {e}"));
            }
            Some(Err(StreamError::Transport(_))) => return Ok(()),
            None => {
                let _ = recv.stop(VarInt::from_u32(CloseCode::HandshakeTimeout.code()));
                return Ok(());
            }
        };
        let queue = self
            .queues
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&header.protocol)
            .map(|(_, tx)| tx.clone());
        let refuse = |code: CloseCode, send: &mut Option<SendStream>, recv: &mut RecvStream| {
            let code = VarInt::from_u32(code.code());
            if let Some(s) = send.as_mut() {
                let _ = s.reset(code);
            }
            let _ = recv.stop(code);
        };
        let Some(queue) = queue else {
            debug!(%peer, protocol = %header.protocol, "refused a stream for an unknown protocol");
            refuse(CloseCode::UnknownProtocol, &mut send, &mut recv);
            return Ok(());
        };
        match queue.try_send(IncomingStream { peer, send, recv }) {
            Ok(()) => {}
            Err(mpsc::error::TrySendError::Full(mut s)) => {
                refuse(CloseCode::Overloaded, &mut s.send, &mut s.recv);
            }
            Err(mpsc::error::TrySendError::Closed(mut s)) => {
                refuse(CloseCode::UnknownProtocol, &mut s.send, &mut s.recv);
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
