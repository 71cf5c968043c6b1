//! The handlers the mesh's router hands RPC's stream kinds to.

use std::sync::Arc;

use quicmesh_mesh::{HandlerFuture, Peer, StreamHandler, io};
use quinn::{RecvStream, SendStream};

use crate::callee::Callee;
use crate::{lane, server};

/// `Rpc` streams: one call each.
pub(crate) struct CallStreams {
    pub(crate) callee: Arc<Callee>,
}

impl StreamHandler for CallStreams {
    fn bi(&self, peer: Peer, send: SendStream, recv: RecvStream) -> HandlerFuture {
        Box::pin(server::serve(self.callee.clone(), peer, send, recv))
    }
}

/// `RpcLane` streams: a caller's small calls.
pub(crate) struct Lanes {
    pub(crate) callee: Arc<Callee>,
}

impl StreamHandler for Lanes {
    fn bi(&self, peer: Peer, send: SendStream, recv: RecvStream) -> HandlerFuture {
        Box::pin(lane::serve_lane(self.callee.clone(), peer, send, recv))
    }
}

/// `RpcReply` streams: large replies to this node's lane calls.
pub(crate) struct LaneReplies {
    pub(crate) callee: Arc<Callee>,
}

impl StreamHandler for LaneReplies {
    fn uni(&self, peer: Peer, recv: RecvStream) -> HandlerFuture {
        let lane = self.callee.conns.of(&peer).lane.get().cloned();
        let patience = self.callee.patience;
        Box::pin(async move {
            io::within(patience, lane::receive_reply(lane, recv))
                .await
                .unwrap_or(Ok(()))
        })
    }
}

/// `App` streams: handed to the listener of their protocol.
pub(crate) struct AppStreams {
    pub(crate) callee: Arc<Callee>,
}

impl StreamHandler for AppStreams {
    fn bi(&self, peer: Peer, send: SendStream, recv: RecvStream) -> HandlerFuture {
        let callee = self.callee.clone();
        Box::pin(async move {
            let from = peer.name().clone();
            callee
                .protocols
                .dispatch(from, Some(send), recv, callee.patience)
                .await
        })
    }

    fn uni(&self, peer: Peer, recv: RecvStream) -> HandlerFuture {
        let callee = self.callee.clone();
        Box::pin(async move {
            let from = peer.name().clone();
            callee
                .protocols
                .dispatch(from, None, recv, callee.patience)
                .await
        })
    }
}
