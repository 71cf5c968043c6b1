//! The stream router: which subsystem serves a stream a peer opens.
//!
//! Every QUIC stream starts with a [`StreamKind`] header. The link task of
//! a connection reads it (under the handshake timeout) and hands the
//! stream, with the peer's verified name, to the [`StreamHandler`]
//! registered for that kind; the mesh knows no subsystem above it by name.
//! The mesh registers its own kinds (control, ping); RPC, application
//! protocols and coordination register theirs when the node is built. A
//! kind nobody registered, or one this version does not know, is refused
//! with [`CloseCode::UnknownStreamKind`].

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use quicmesh_wire::{CloseCode, StreamKind};
use quinn::{RecvStream, SendStream, VarInt};

use crate::peer::{Peer, Violation};

/// What serving one stream returns: `Err` when the peer broke the protocol.
pub type HandlerFuture = Pin<Box<dyn Future<Output = Result<(), Violation>> + Send>>;

/// Serves the streams of one [`StreamKind`]. Each call runs in the task of
/// that stream, which ends with the connection; a handler that returns
/// [`Violation`] gets the peer dropped. A direction a handler does not
/// implement is refused with `UnknownStreamKind`.
pub trait StreamHandler: Send + Sync + 'static {
    /// A bidirectional stream, its kind header read.
    fn bi(&self, peer: Peer, mut send: SendStream, mut recv: RecvStream) -> HandlerFuture {
        let _ = peer;
        refuse(Some(&mut send), &mut recv, CloseCode::UnknownStreamKind);
        Box::pin(std::future::ready(Ok(())))
    }

    /// A unidirectional stream, its kind header read.
    fn uni(&self, peer: Peer, mut recv: RecvStream) -> HandlerFuture {
        let _ = peer;
        refuse(None, &mut recv, CloseCode::UnknownStreamKind);
        Box::pin(std::future::ready(Ok(())))
    }
}

/// The handlers of a node, by stream kind; given to
/// [`Mesh::start`](crate::Mesh::start).
#[derive(Clone, Default)]
#[must_use = "a router serves nothing until given to Mesh::start"]
pub struct Router {
    handlers: HashMap<StreamKind, Arc<dyn StreamHandler>>,
}

impl fmt::Debug for Router {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut kinds: Vec<u16> = self.handlers.keys().map(|k| k.code()).collect();
        kinds.sort_unstable();
        f.debug_struct("Router").field("kinds", &kinds).finish()
    }
}

impl Router {
    /// Serves streams of `kind` with `handler`, in place of any earlier one.
    pub fn route(mut self, kind: StreamKind, handler: impl StreamHandler) -> Self {
        self.handlers.insert(kind, Arc::new(handler));
        self
    }

    /// The handler of `kind`, if one is registered.
    pub(crate) fn get(&self, kind: StreamKind) -> Option<&Arc<dyn StreamHandler>> {
        self.handlers.get(&kind)
    }
}

/// Refuses a stream: resets the send half (if any) and stops the receive
/// half with `code`.
pub fn refuse(send: Option<&mut SendStream>, recv: &mut RecvStream, code: CloseCode) {
    let code = VarInt::from_u32(code.code());
    if let Some(send) = send {
        let _ = send.reset(code);
    }
    let _ = recv.stop(code);
}
