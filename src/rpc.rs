//! Typed RPC: named services, `call`, `cast`, `multicall`.
//!
//! A call whose request is small (up to [`quicmesh_wire::LANE_MAX_BODY`])
//! travels on its caller's lane to that peer, a long-lived stream shared by
//! calls and tagged with call ids (see `lane`); a larger call runs on a
//! bidirectional QUIC stream of its own, as do streaming calls. Large
//! messages never share a stream with small ones, and small streams are
//! sent first, so a large call in flight never delays a small one behind
//! it (no head-of-line blocking between calls). Cancelling a call resets
//! its stream or sends a `Cancel` on the lane. The request carries the
//! caller's timeout; the callee drops the handler's future when the caller
//! cancels or the deadline passes.
//!
//! ```text
//! caller                                   callee (per connection: a semaphore of
//!   open stream ─ RpcHeader + body ──▶      rpc.max_inbound_per_peer permits)
//!                                           service? permit? body ≤ max_message?
//!                                           spawn handler (panics caught)
//!   ◀── RpcStatus (+ body) ──────────────   select: handler | caller stopped | deadline
//! ```

mod client;
mod error;
mod lane;
mod server;
mod stream;

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use quicmesh_wire::{NodeName, RpcFailure};
use serde::Serialize;
use serde::de::DeserializeOwned;

pub use error::{RegisterError, RpcError, Side};
pub(crate) use lane::{Lane, receive_reply, serve_lane};
use server::panic_message;
pub(crate) use server::serve;
pub use stream::{Requests, Responses, StreamingCall};

/// What a handler knows about the call it serves.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CallContext {
    /// The calling node, as its certificate names it.
    pub from: NodeName,
    /// The service called.
    pub service: String,
    /// When the caller stops waiting; the handler's future is dropped then.
    pub deadline: tokio::time::Instant,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A service with its types erased: bytes in, bytes out.
pub(crate) trait Handler: Send + Sync {
    fn handle(&self, ctx: CallContext, body: Vec<u8>) -> BoxFuture<Result<Vec<u8>, RpcFailure>>;
}

/// Adapts a typed async function to [`Handler`].
struct Typed<F, Req, Resp, E> {
    f: F,
    _types: PhantomData<fn(Req) -> Result<Resp, E>>,
}

impl<F, Fut, Req, Resp, E> Handler for Typed<F, Req, Resp, E>
where
    F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Resp, E>> + Send + 'static,
    Req: DeserializeOwned + Send + 'static,
    Resp: Serialize + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    fn handle(&self, ctx: CallContext, body: Vec<u8>) -> BoxFuture<Result<Vec<u8>, RpcFailure>> {
        let req: Req = match quicmesh_wire::frame::decode(&body) {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(RpcFailure::BadRequest(e.to_string())) }),
        };
        let fut = (self.f)(ctx, req);
        Box::pin(async move {
            match fut.await {
                Ok(resp) => postcard::to_extend(&resp, Vec::with_capacity(ENCODE_START))
                    .map_err(|e| RpcFailure::Remote(format!("response did not encode: {e}"))),
                Err(e) => Err(RpcFailure::Remote(e.to_string())),
            }
        })
    }
}

/// A streaming service with its types erased: the request bytes and the
/// stream halves in, the handler's outcome out.
pub(crate) trait StreamHandler: Send + Sync {
    fn handle(
        &self,
        ctx: CallContext,
        request: Vec<u8>,
        recv: quinn::RecvStream,
        send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
        max: usize,
    ) -> BoxFuture<Result<(), RpcFailure>>;
}

/// Adapts a typed async streaming function to [`StreamHandler`].
struct TypedStream<F, Req, In, Out, E> {
    f: F,
    _types: PhantomData<fn(Req, In, Out) -> E>,
}

impl<F, Fut, Req, In, Out, E> StreamHandler for TypedStream<F, Req, In, Out, E>
where
    F: Fn(CallContext, Req, Requests<In>, Responses<Out>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    Req: DeserializeOwned + Send + 'static,
    In: DeserializeOwned + Send + 'static,
    Out: Serialize + Send + 'static,
    E: fmt::Display + Send + 'static,
{
    fn handle(
        &self,
        ctx: CallContext,
        request: Vec<u8>,
        recv: quinn::RecvStream,
        send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
        max: usize,
    ) -> BoxFuture<Result<(), RpcFailure>> {
        let req: Req = match quicmesh_wire::frame::decode(&request) {
            Ok(r) => r,
            Err(e) => return Box::pin(async move { Err(RpcFailure::BadRequest(e.to_string())) }),
        };
        let (requests, responses) =
            stream::handler_ends(recv, send, ctx.from.clone(), ctx.service.clone(), max);
        let fut = (self.f)(ctx, req, requests, responses);
        Box::pin(async move { fut.await.map_err(|e| RpcFailure::Remote(e.to_string())) })
    }
}

/// A registered service.
#[derive(Clone)]
pub(crate) enum Service {
    /// Request in, response out.
    Unary(Arc<dyn Handler>),
    /// Items both ways.
    Streaming(Arc<dyn StreamHandler>),
}

/// The services a node serves, by name; changed at run time.
#[derive(Default)]
pub(crate) struct Services(RwLock<HashMap<String, Service>>);

impl fmt::Debug for Services {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let names: Vec<String> = self.read().keys().cloned().collect();
        f.debug_tuple("Services").field(&names).finish()
    }
}

impl Services {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Service>> {
        self.0.read().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) fn get(&self, name: &str) -> Option<Service> {
        self.read().get(name).cloned()
    }

    fn insert(&self, name: &str, service: Service) -> Result<(), RegisterError> {
        check_name(name)?;
        let mut map = self.0.write().unwrap_or_else(|e| e.into_inner());
        if map.contains_key(name) {
            return Err(RegisterError::AlreadyRegistered(name.to_owned()));
        }
        map.insert(name.to_owned(), service);
        Ok(())
    }

    pub(crate) fn register_stream<F, Fut, Req, In, Out, E>(
        &self,
        name: &str,
        f: F,
    ) -> Result<(), RegisterError>
    where
        F: Fn(CallContext, Req, Requests<In>, Responses<Out>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let handler = TypedStream {
            f,
            _types: PhantomData,
        };
        self.insert(name, Service::Streaming(Arc::new(handler)))
    }

    pub(crate) fn register<F, Fut, Req, Resp, E>(
        &self,
        name: &str,
        f: F,
    ) -> Result<(), RegisterError>
    where
        F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        E: fmt::Display + Send + 'static,
    {
        let handler = Typed {
            f,
            _types: PhantomData,
        };
        self.insert(name, Service::Unary(Arc::new(handler)))
    }

    pub(crate) fn unregister(&self, name: &str) -> bool {
        self.0
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name)
            .is_some()
    }
}

/// Bytes reserved before encoding a message: most fit without the buffer
/// growing, larger ones grow it by doubling.
pub(crate) const ENCODE_START: usize = 256;

/// Messages up to this size are "small": their streams are sent before
/// the data of larger ones, so a 64-byte call never waits behind a 1 MiB
/// one on the same connection.
const SMALL_MESSAGE: usize = 64 * 1024;

/// The QUIC send priority for a message of `len` bytes (higher goes
/// first): small messages above bulk data.
pub(crate) fn priority_for(len: usize) -> i32 {
    if len <= SMALL_MESSAGE { 1 } else { 0 }
}

/// Polls a handler's future, turning a panic into an error instead of
/// unwinding into the node's task.
pub(crate) struct CatchUnwind<T>(pub(crate) BoxFuture<T>);

impl<T> Future for CatchUnwind<T> {
    type Output = Result<T, Box<dyn std::any::Any + Send>>;

    fn poll(
        mut self: Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let fut = &mut self.0;
        match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| fut.as_mut().poll(cx))) {
            Ok(std::task::Poll::Pending) => std::task::Poll::Pending,
            Ok(std::task::Poll::Ready(v)) => std::task::Poll::Ready(Ok(v)),
            Err(panic) => std::task::Poll::Ready(Err(panic)),
        }
    }
}

/// Longest service or protocol name, in bytes.
pub(crate) const MAX_NAME: usize = 255;

pub(crate) fn check_name(name: &str) -> Result<(), RegisterError> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(RegisterError::BadName(name.to_owned()));
    }
    Ok(())
}
