//! Services: typed handlers with their types erased, and the table of
//! the services a node serves.

use std::collections::HashMap;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::{Arc, RwLock};

use quicmesh_wire::{RpcFailure, RpcStatus};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::error::RegisterError;
use crate::stream::{self, Requests, Responses};
use crate::{CallContext, check_name};

pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

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
                Ok(resp) => crate::codec::encode(&resp)
                    .map_err(|e| RpcFailure::Remote(format!("response did not encode: {e}"))),
                Err(e) => Err(RpcFailure::Remote(e.to_string())),
            }
        })
    }
}

/// A streaming service with its types erased: the request bytes and the
/// stream halves in, the handler's outcome out.
pub(crate) trait StreamService: Send + Sync {
    fn handle(
        &self,
        ctx: CallContext,
        request: Vec<u8>,
        recv: quinn::RecvStream,
        send: Arc<tokio::sync::Mutex<quinn::SendStream>>,
        max: usize,
    ) -> BoxFuture<Result<(), RpcFailure>>;
}

/// Adapts a typed async streaming function to [`StreamService`].
struct TypedStream<F, Req, In, Out, E> {
    f: F,
    _types: PhantomData<fn(Req, In, Out) -> E>,
}

impl<F, Fut, Req, In, Out, E> StreamService for TypedStream<F, Req, In, Out, E>
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
    Streaming(Arc<dyn StreamService>),
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

/// The text of a caught panic.
pub(crate) fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}

/// How a handler ended.
pub(crate) enum Outcome {
    /// It returned.
    Returned(Result<Vec<u8>, RpcFailure>),
    /// It panicked, with this message; the node goes on.
    Panicked(String),
    /// Its deadline passed first (its future was dropped).
    TimedOut,
}

impl Outcome {
    /// Runs a handler's future until `deadline`, its panics caught.
    pub(crate) async fn of(
        handling: BoxFuture<Result<Vec<u8>, RpcFailure>>,
        deadline: tokio::time::Instant,
    ) -> Self {
        match tokio::time::timeout_at(deadline, CatchUnwind(handling)).await {
            Ok(Ok(returned)) => Self::Returned(returned),
            Ok(Err(panic)) => Self::Panicked(panic_message(panic)),
            Err(_) => Self::TimedOut,
        }
    }

    /// The reply: a status and the response body (empty unless `Ok`); a
    /// response over `max` bytes is refused as `TooLarge`.
    pub(crate) fn verdict(self, max: usize) -> (RpcStatus, Vec<u8>) {
        let failed = |f| (RpcStatus::Failed(f), Vec::new());
        match self {
            Self::Returned(Ok(resp)) if resp.len() > max => failed(RpcFailure::TooLarge {
                limit: max as u64,
                response: true,
            }),
            Self::Returned(Ok(resp)) => (RpcStatus::Ok, resp),
            Self::Returned(Err(failure)) => failed(failure),
            Self::Panicked(message) => failed(RpcFailure::Panicked(message)),
            Self::TimedOut => failed(RpcFailure::Timeout),
        }
    }
}
