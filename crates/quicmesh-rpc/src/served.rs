//! The callee's side: what serving RPC and application streams needs,
//! and the handlers the mesh's router hands those streams to.

use std::sync::Arc;
use std::time::Duration;

use quicmesh_mesh::{HandlerFuture, Peer, StreamHandler, Tasks, io};
use quinn::{RecvStream, SendStream};

use crate::app::Protocols;
use crate::connections::Connections;
use crate::service::Services;
use crate::{lane, server};

/// Everything the handlers of RPC's stream kinds share. Holds no handle
/// to the mesh, so the router that holds the handlers keeps no cycle.
#[derive(Debug)]
pub(crate) struct Served {
    pub(crate) services: Services,
    pub(crate) protocols: Protocols,
    pub(crate) conns: Arc<Connections>,
    /// Largest request or response body.
    pub(crate) max_message: usize,
    /// Longest wait for a stream's header.
    pub(crate) patience: Duration,
    pub(crate) tasks: Tasks,
}

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
