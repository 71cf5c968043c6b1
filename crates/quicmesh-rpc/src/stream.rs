//! Streaming calls: after the initial request, items flow both ways as
//! frames, each direction flow-controlled by QUIC, so a handler can send
//! 100 MB without either side holding more than a few items.

use std::marker::PhantomData;
use std::sync::Arc;

use quicmesh_wire::{
    CloseCode, FrameError, Item, NodeName, RpcFailure, decode_item, encode_item, frame,
};
use quinn::{RecvStream, SendStream, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Mutex;

use crate::{RpcError, Side};

/// Reads one item frame; `Ok(None)` at the end of the stream.
async fn read_item(recv: &mut RecvStream, max: usize) -> Result<Option<Vec<u8>>, ItemError> {
    let mut prefix = [0u8; frame::PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(_)) => {
            return Err(ItemError::Bad(FrameError::Malformed(
                "stream ended inside an item".into(),
            )));
        }
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(ItemError::Transport(e.to_string()));
        }
    }
    let len = frame::body_len(prefix, max).map_err(ItemError::Bad)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => {
            ItemError::Bad(FrameError::Malformed("stream ended inside an item".into()))
        }
        quinn::ReadExactError::ReadError(e) => ItemError::Transport(e.to_string()),
    })?;
    Ok(Some(body))
}

enum ItemError {
    Bad(FrameError),
    Transport(String),
}

/// Where a streaming call's errors are attributed.
#[derive(Clone)]
struct CallInfo {
    peer: NodeName,
    service: String,
    max: usize,
}

impl CallInfo {
    fn decode<T: DeserializeOwned>(&self, side: Side, body: &[u8]) -> Result<T, RpcError> {
        frame::decode(body).map_err(|e| RpcError::Decode {
            side,
            service: self.service.clone(),
            detail: e.to_string(),
        })
    }

    fn encode<T: Serialize + ?Sized>(&self, side: Side, item: &T) -> Result<Vec<u8>, RpcError> {
        encode_item(item, self.max).map_err(|e| match e {
            FrameError::TooLarge { .. } => RpcError::TooLarge {
                side,
                service: self.service.clone(),
                limit: self.max as u64,
            },
            other => RpcError::Decode {
                side,
                service: self.service.clone(),
                detail: other.to_string(),
            },
        })
    }

    fn down(&self, detail: String) -> RpcError {
        RpcError::NodeDown {
            peer: self.peer.clone(),
            detail,
        }
    }

    fn protocol(&self, e: &FrameError) -> RpcError {
        RpcError::Protocol {
            peer: self.peer.clone(),
            detail: format!("stream item: {e}"),
        }
    }
}

/// The caller's end of a streaming call, from
/// [`Rpc::call_stream`](crate::Rpc::call_stream): send items with
/// [`StreamingCall::send`], end them with [`StreamingCall::finish`], read
/// the callee's items with [`StreamingCall::next`]. Dropping it before the
/// callee finished cancels the call.
#[must_use = "a streaming call is cancelled when dropped"]
pub struct StreamingCall<In, Out> {
    send: SendStream,
    recv: RecvStream,
    info: CallInfo,
    done: bool,
    _types: PhantomData<fn(In) -> Out>,
}

impl<In, Out> std::fmt::Debug for StreamingCall<In, Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StreamingCall")
            .field("peer", &self.info.peer)
            .field("service", &self.info.service)
            .finish_non_exhaustive()
    }
}

impl<In: Serialize, Out: DeserializeOwned> StreamingCall<In, Out> {
    pub(crate) fn new(
        send: SendStream,
        recv: RecvStream,
        peer: NodeName,
        service: String,
        max: usize,
    ) -> Self {
        Self {
            send,
            recv,
            info: CallInfo { peer, service, max },
            done: false,
            _types: PhantomData,
        }
    }

    /// Sends one item to the handler; waits while the callee is not
    /// reading (flow control).
    pub async fn send(&mut self, item: &In) -> Result<(), RpcError> {
        let bytes = self.info.encode(Side::Request, item)?;
        self.send
            .write_all(&bytes)
            .await
            .map_err(|e| self.info.down(e.to_string()))
    }

    /// Tells the handler no more items come.
    pub fn finish(&mut self) {
        let _ = self.send.finish();
    }

    /// The next item from the handler; `None` when it finished.
    pub async fn next(&mut self) -> Option<Result<Out, RpcError>> {
        if self.done {
            return None;
        }
        let result = match read_item(&mut self.recv, self.info.max).await {
            Ok(None) => {
                self.done = true;
                return None;
            }
            Ok(Some(body)) => match decode_item(&body) {
                Ok(Item::Value(v)) => return Some(self.info.decode(Side::Response, v)),
                Ok(Item::Failed(f)) => Err(crate::client::failure(
                    &self.info.peer,
                    &self.info.service,
                    std::time::Duration::ZERO,
                    f,
                )),
                Ok(_) => Err(self
                    .info
                    .protocol(&FrameError::Malformed("unknown item".into()))),
                Err(e) => Err(self.info.protocol(&e)),
            },
            Err(ItemError::Bad(FrameError::TooLarge { .. })) => Err(RpcError::TooLarge {
                side: Side::Response,
                service: self.info.service.clone(),
                limit: self.info.max as u64,
            }),
            Err(ItemError::Bad(e)) => Err(self.info.protocol(&e)),
            Err(ItemError::Transport(e)) => Err(self.info.down(e)),
        };
        self.done = true;
        Some(result)
    }
}

impl<In, Out> Drop for StreamingCall<In, Out> {
    fn drop(&mut self) {
        if !self.done {
            let code = VarInt::from_u32(CloseCode::Cancelled.code());
            let _ = self.send.reset(code);
            let _ = self.recv.stop(code);
        }
    }
}

/// The items a caller sends to a streaming handler.
pub struct Requests<In> {
    recv: RecvStream,
    info: CallInfo,
    _types: PhantomData<fn() -> In>,
}

impl<In> std::fmt::Debug for Requests<In> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Requests")
            .field("from", &self.info.peer)
            .finish_non_exhaustive()
    }
}

impl<In: DeserializeOwned> Requests<In> {
    /// The next item; `None` when the caller finished sending.
    pub async fn next(&mut self) -> Option<Result<In, RpcError>> {
        match read_item(&mut self.recv, self.info.max).await {
            Ok(None) => None,
            Ok(Some(body)) => Some(match decode_item(&body) {
                Ok(Item::Value(v)) => self.info.decode(Side::Request, v),
                Ok(_) | Err(_) => Err(self.info.protocol(&FrameError::Malformed(
                    "the caller sent a non-value item".into(),
                ))),
            }),
            Err(ItemError::Bad(FrameError::TooLarge { .. })) => Some(Err(RpcError::TooLarge {
                side: Side::Request,
                service: self.info.service.clone(),
                limit: self.info.max as u64,
            })),
            Err(ItemError::Bad(e)) => Some(Err(self.info.protocol(&e))),
            Err(ItemError::Transport(e)) => Some(Err(self.info.down(e))),
        }
    }
}

/// Where a streaming handler sends its items.
pub struct Responses<Out> {
    send: Arc<Mutex<SendStream>>,
    info: CallInfo,
    _types: PhantomData<fn(Out)>,
}

impl<Out> std::fmt::Debug for Responses<Out> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Responses")
            .field("to", &self.info.peer)
            .finish_non_exhaustive()
    }
}

impl<Out: Serialize> Responses<Out> {
    /// Sends one item; waits while the caller is not reading (flow
    /// control). Fails when the caller went away.
    pub async fn send(&mut self, item: &Out) -> Result<(), RpcError> {
        let bytes = self.info.encode(Side::Response, item)?;
        self.send
            .lock()
            .await
            .write_all(&bytes)
            .await
            .map_err(|e| self.info.down(e.to_string()))
    }
}

/// The typed views a streaming handler gets, built by the server side.
pub(crate) fn handler_ends<In, Out>(
    recv: RecvStream,
    send: Arc<Mutex<SendStream>>,
    peer: NodeName,
    service: String,
    max: usize,
) -> (Requests<In>, Responses<Out>) {
    let info = CallInfo { peer, service, max };
    (
        Requests {
            recv,
            info: info.clone(),
            _types: PhantomData,
        },
        Responses {
            send,
            info,
            _types: PhantomData,
        },
    )
}

/// Reads the caller's first item (the request) on the callee's side.
pub(crate) async fn read_request(recv: &mut RecvStream, max: usize) -> Result<Vec<u8>, RpcFailure> {
    match read_item(recv, max).await {
        Ok(Some(body)) => match decode_item(&body) {
            Ok(Item::Value(v)) => Ok(v.to_vec()),
            _ => Err(RpcFailure::BadRequest(
                "the request is not a value item".into(),
            )),
        },
        Ok(None) => Err(RpcFailure::BadRequest("no request item".into())),
        Err(ItemError::Bad(FrameError::TooLarge { .. })) => Err(RpcFailure::TooLarge {
            limit: max as u64,
            response: false,
        }),
        Err(ItemError::Bad(e)) => Err(RpcFailure::BadRequest(e.to_string())),
        Err(ItemError::Transport(e)) => Err(RpcFailure::Remote(e)),
    }
}
