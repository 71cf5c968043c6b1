//! The handlers the mesh's router hands RPC's stream kinds to.

use std::sync::Arc;

use quicmesh_mesh::{HandlerFuture, Peer, StreamHandler, io};
use quinn::{RecvStream, SendStream};

use crate::served::Served;
use crate::{lane, server};

/// `Rpc` streams: one call each.
pub(crate) struct CallStreams {
    pub(crate) served: Arc<Served>,
}

impl StreamHandler for CallStreams {
    fn bi(&self, peer: Peer, send: SendStream, recv: RecvStream) -> HandlerFuture {
        Box::pin(server::serve(self.served.clone(), peer, send, recv))
    }
}

/// `RpcLane` streams: a caller's small calls.
pub(crate) struct Lanes {
    pub(crate) served: Arc<Served>,
}

impl StreamHandler for Lanes {
    fn bi(&self, peer: Peer, send: SendStream, recv: RecvStream) -> HandlerFuture {
        Box::pin(lane::serve_lane(self.served.clone(), peer, send, recv))
    }
}

/// `RpcReply` streams: large replies to this node's lane calls.
pub(crate) struct LaneReplies {
    pub(crate) served: Arc<Served>,
}

impl StreamHandler for LaneReplies {
    fn uni(&self, peer: Peer, recv: RecvStream) -> HandlerFuture {
        let lane = self.served.conns.of(&peer).lane.get().cloned();
        let patience = self.served.patience;
        Box::pin(async move {
            io::within(patience, lane::receive_reply(lane, recv))
                .await
                .unwrap_or(Ok(()))
        })
    }
}

/// `App` streams: handed to the listener of their protocol.
pub(crate) struct AppStreams {
    pub(crate) served: Arc<Served>,
}

impl StreamHandler for AppStreams {
    fn bi(&self, peer: Peer, send: SendStream, recv: RecvStream) -> HandlerFuture {
        let served = self.served.clone();
        Box::pin(async move {
            let from = peer.name().clone();
            served
                .protocols
                .dispatch(from, Some(send), recv, served.patience)
                .await
        })
    }

    fn uni(&self, peer: Peer, recv: RecvStream) -> HandlerFuture {
        let served = self.served.clone();
        Box::pin(async move {
            let from = peer.name().clone();
            served
                .protocols
                .dispatch(from, None, recv, served.patience)
                .await
        })
    }
}
