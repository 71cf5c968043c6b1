//! The callee's side of one RPC stream.

use std::sync::Arc;
use std::time::Duration;

use quicmesh_mesh::{Peer, Violation, io};
use quicmesh_wire::{
    CloseCode, MAX_HEADER_FRAME, RpcFailure, RpcHeader, RpcMode, RpcStatus, encode_item_failure,
};
use quinn::{RecvStream, SendStream, VarInt};
use tokio::sync::{Mutex, Semaphore};
use tokio::time::Instant;
use tracing::debug;

use crate::budget::{BodyError, read_body};
use crate::callee::Callee;
use crate::metrics::count;
use crate::service::{CatchUnwind, Outcome, Service, StreamService, panic_message};
use crate::{CallContext, priority_for, stream};

/// Serves one RPC stream whose kind header was read. `Err` is a protocol
/// violation by the caller (the connection is then dropped): a bad call
/// header is the only one; everything after it is answered on the stream.
pub(crate) async fn serve(
    callee: Arc<Callee>,
    caller: Peer,
    send: SendStream,
    mut recv: RecvStream,
) -> Result<(), Violation> {
    let header = io::read_header(&mut recv, MAX_HEADER_FRAME, callee.patience, "RPC stream");
    if let Some(header) = header.await? {
        answer(&callee, &caller, header, send, recv).await;
    }
    Ok(())
}

/// Runs the call `header` asks for and sends its verdict.
async fn answer(
    callee: &Callee,
    caller: &Peer,
    header: RpcHeader,
    send: SendStream,
    mut recv: RecvStream,
) {
    let from = caller.name().clone();
    let conn = callee.conns.of(caller);
    let permits = conn.permits.clone();
    let mode = header.mode;
    let deadline = Instant::now() + Duration::from_millis(header.timeout_ms.into());
    let max = callee.max_message;
    let refuse = |send: SendStream, recv: RecvStream, failure| {
        finish(send, recv, mode, RpcStatus::Failed(failure), Vec::new())
    };
    let handler = match (mode, callee.services.get(&header.service)) {
        (_, None) => {
            debug!(peer = %from, service = %header.service, "no such service");
            return refuse(send, recv, RpcFailure::NoSuchService).await;
        }
        (RpcMode::Stream, Some(Service::Streaming(h))) => {
            let ctx = CallContext {
                from,
                service: header.service,
                deadline,
            };
            return serve_stream(h, ctx, permits, max, send, recv).await;
        }
        (RpcMode::Stream, Some(Service::Unary(_))) => {
            let msg = format!("{} is not a streaming service: use call", header.service);
            return refuse(send, recv, RpcFailure::BadRequest(msg)).await;
        }
        (_, Some(Service::Streaming(_))) => {
            let msg = format!("{} is a streaming service: use call_stream", header.service);
            return refuse(send, recv, RpcFailure::BadRequest(msg)).await;
        }
        (_, Some(Service::Unary(h))) => h,
    };
    // The permit bounds this caller's calls in progress, and so the memory
    // its requests and handlers can hold here.
    let Ok(_permit) = permits.try_acquire_owned() else {
        count(&callee.stats.refused_per_peer);
        return refuse(send, recv, RpcFailure::Overloaded).await;
    };
    // The body's bytes stay charged to the node's and this caller's
    // budgets until the call ends.
    let budgets = (&callee.buffered, &conn.buffered);
    let read = read_body(&mut recv, max, budgets.0, budgets.1);
    let (body, _charge) = match tokio::time::timeout_at(deadline, read).await {
        Ok(Ok(read)) => read,
        Ok(Err(BodyError::TooLong)) => {
            let limit = max as u64;
            let failure = RpcFailure::TooLarge {
                limit,
                response: false,
            };
            return refuse(send, recv, failure).await;
        }
        Ok(Err(BodyError::OverBudget)) => {
            count(&callee.stats.refused_buffered);
            return refuse(send, recv, RpcFailure::Overloaded).await;
        }
        // The caller cancelled or the connection went.
        Ok(Err(BodyError::Read)) => return,
        Err(_) => return refuse(send, recv, RpcFailure::Timeout).await,
    };

    let ctx = CallContext {
        from,
        service: header.service,
        deadline,
    };
    // The handler runs inside this stream's task, its panics caught;
    // leaving this function (cancel, deadline, connection gone) drops its
    // future.
    let handling = Outcome::of(handler.handle(ctx, body), deadline);
    let stopped = send.stopped();
    let outcome = tokio::select! {
        done = handling => done,
        _ = stopped, if mode == RpcMode::Call => return, // the caller gave up
    };
    let (status, body) = outcome.verdict(max);
    let _ = send.set_priority(priority_for(body.len()));
    finish(send, recv, mode, status, body).await
}

/// A streaming call: no status frame; the callee's items follow, and a
/// failure (including a refusal) is the last item.
async fn serve_stream(
    handler: Arc<dyn StreamService>,
    ctx: CallContext,
    permits: Arc<Semaphore>,
    max: usize,
    send: SendStream,
    mut recv: RecvStream,
) {
    let refuse = |send, recv, f| {
        finish(
            send,
            recv,
            RpcMode::Stream,
            RpcStatus::Failed(f),
            Vec::new(),
        )
    };
    let Ok(_permit) = permits.try_acquire_owned() else {
        return refuse(send, recv, RpcFailure::Overloaded).await;
    };
    let request =
        match tokio::time::timeout_at(ctx.deadline, stream::read_request(&mut recv, max)).await {
            Ok(Ok(request)) => request,
            Ok(Err(failure)) => return refuse(send, recv, failure).await,
            Err(_) => return refuse(send, recv, RpcFailure::Timeout).await,
        };
    let stopped = send.stopped();
    let send = Arc::new(Mutex::new(send));
    let mut handling = CatchUnwind(handler.handle(ctx, request, recv, send.clone(), max));
    let failure = tokio::select! {
        done = &mut handling => match done {
            Ok(Ok(())) => None,
            Ok(Err(failure)) => Some(failure),
            Err(panic) => Some(RpcFailure::Panicked(panic_message(panic))),
        },
        _ = stopped => return, // the caller gave up
    };
    let mut send = send.lock().await;
    if let Some(f) = failure {
        let _ = send.write_all(&encode_item_failure(&f)).await;
    }
    let _ = send.finish();
}

/// Sends the verdict (a status frame for calls, a failure item for
/// streams, nothing for casts) and ends both directions.
async fn finish(
    mut send: SendStream,
    mut recv: RecvStream,
    mode: RpcMode,
    status: RpcStatus,
    body: Vec<u8>,
) {
    // Whatever of the request is left unread is not wanted any more.
    let _ = recv.stop(VarInt::from_u32(0));
    let written = match (mode, status) {
        (RpcMode::Call, status) => {
            io::write_frame(&mut send, &status, MAX_HEADER_FRAME)
                .await
                .is_ok()
                && send.write_chunk(body.into()).await.is_ok()
        }
        (RpcMode::Stream, RpcStatus::Failed(f)) => {
            send.write_all(&encode_item_failure(&f)).await.is_ok()
        }
        _ => return,
    };
    if written {
        let _ = send.finish();
    } else {
        let _ = send.reset(VarInt::from_u32(CloseCode::Cancelled.code()));
    }
}
