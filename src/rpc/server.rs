//! The callee's side of one RPC stream.

use std::sync::Arc;
use std::time::Duration;

use quicmesh_wire::{
    CloseCode, MAX_HEADER_FRAME, NodeName, RpcFailure, RpcHeader, RpcMode, RpcStatus,
};
use quinn::{ReadToEndError, RecvStream, SendStream, VarInt};
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;
use tracing::debug;

use super::CallContext;
use crate::membership::Membership;
use crate::transport::{self, StreamError};

/// Serves one RPC stream whose kind header was read. `Err` is a protocol
/// violation by the caller (the connection is then dropped).
pub(crate) async fn serve(
    m: Arc<Membership>,
    from: NodeName,
    permits: Arc<Semaphore>,
    send: SendStream,
    mut recv: RecvStream,
) -> Result<(), String> {
    let header: RpcHeader = match transport::read_frame(&mut recv, MAX_HEADER_FRAME).await {
        Ok(Some(h)) => h,
        Ok(None) => return Err("RPC stream ended before its header".to_owned()),
        Err(StreamError::Bad(e)) => return Err(format!("RPC header: {e}")),
        Err(StreamError::Transport(_)) => return Ok(()),
    };
    let call = header.mode == RpcMode::Call;
    let deadline = Instant::now() + Duration::from_millis(header.timeout_ms.into());
    let max = m.config.rpc.max_message;
    let refuse = |send: SendStream, recv: RecvStream, failure| {
        finish(send, recv, call, RpcStatus::Failed(failure), Vec::new())
    };

    let Some(handler) = m.services.get(&header.service) else {
        debug!(peer = %from, service = %header.service, "no such service");
        return refuse(send, recv, RpcFailure::NoSuchService).await;
    };
    // The permit bounds this caller's calls in progress, and so the memory
    // its requests and handlers can hold here.
    let Ok(_permit) = permits.try_acquire_owned() else {
        return refuse(send, recv, RpcFailure::Overloaded).await;
    };
    let body = match tokio::time::timeout_at(deadline, recv.read_to_end(max)).await {
        Ok(Ok(body)) => body,
        Ok(Err(ReadToEndError::TooLong)) => {
            let limit = max as u64;
            let failure = RpcFailure::TooLarge {
                limit,
                response: false,
            };
            return refuse(send, recv, failure).await;
        }
        // The caller cancelled or the connection went.
        Ok(Err(ReadToEndError::Read(_))) => return Ok(()),
        Err(_) => return refuse(send, recv, RpcFailure::Timeout).await,
    };

    let ctx = CallContext {
        from,
        service: header.service,
        deadline,
    };
    // The handler runs in its own task so a panic is caught as a JoinError;
    // dropping the handle (cancel, deadline, connection gone) aborts it,
    // which drops the handler's future.
    let mut task = AbortOnDropHandle::new(tokio::spawn(handler.handle(ctx, body)));
    let stopped = send.stopped();
    let outcome = tokio::select! {
        joined = &mut task => joined,
        _ = stopped, if call => return Ok(()), // the caller gave up
        _ = tokio::time::sleep_until(deadline) => {
            return refuse(send, recv, RpcFailure::Timeout).await;
        }
    };
    let (status, body) = match outcome {
        Ok(Ok(resp)) if resp.len() > max => (
            RpcStatus::Failed(RpcFailure::TooLarge {
                limit: max as u64,
                response: true,
            }),
            Vec::new(),
        ),
        Ok(Ok(resp)) => (RpcStatus::Ok, resp),
        Ok(Err(failure)) => (RpcStatus::Failed(failure), Vec::new()),
        Err(e) if e.is_panic() => {
            let msg = panic_message(e.into_panic());
            (RpcStatus::Failed(RpcFailure::Panicked(msg)), Vec::new())
        }
        Err(_) => return Ok(()),
    };
    finish(send, recv, call, status, body).await
}

/// Sends the verdict (for calls) and ends both directions.
async fn finish(
    mut send: SendStream,
    mut recv: RecvStream,
    call: bool,
    status: RpcStatus,
    body: Vec<u8>,
) -> Result<(), String> {
    // Whatever of the request is left unread is not wanted any more.
    let _ = recv.stop(VarInt::from_u32(0));
    if !call {
        return Ok(());
    }
    if transport::write_frame(&mut send, &status, MAX_HEADER_FRAME)
        .await
        .is_ok()
        && send.write_all(&body).await.is_ok()
    {
        let _ = send.finish();
    } else {
        let _ = send.reset(VarInt::from_u32(CloseCode::Cancelled.code()));
    }
    Ok(())
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = payload.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s.clone()
    } else {
        "panic with a non-text payload".to_owned()
    }
}
