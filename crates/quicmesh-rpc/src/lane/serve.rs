//! The callee's side of a lane: one task reads the calls and writes the
//! replies; handlers that wait run in tasks of their own.

use std::sync::Arc;
use std::task::Poll;

use quicmesh_mesh::io::{self, StreamError};
use quicmesh_mesh::{Peer, Tasks, Violation};
use quicmesh_wire::{
    CloseCode, LANE_MAX_BODY, LANE_MAX_FRAME, LaneReply, LaneRequest, MAX_HEADER_FRAME, NodeName,
    ReplyHead, RpcFailure, RpcMode, RpcStatus, StreamKind, frame,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tracing::debug;

use super::calls::CallTable;
use super::{BATCH, Frames, Lane, QUEUE, Reply};
use crate::CallContext;
use crate::callee::Callee;
use crate::metrics::count;
use crate::priority_for;
use crate::service::{Outcome, Service};

/// Serves a caller's lane. One task reads the calls and writes the replies,
/// gathering every reply ready into one write; a handler that finishes
/// when first polled (most do) is answered without a task of its own, the
/// others run in tasks that hand their replies back. `Err` is a protocol
/// violation by the caller.
pub(crate) async fn serve_lane(
    callee: Arc<Callee>,
    caller: Peer,
    mut send: SendStream,
    recv: RecvStream,
) -> Result<(), Violation> {
    let _ = send.set_priority(priority_for(0));
    let (replies, mut replied) = mpsc::channel(QUEUE);
    let lane = LaneServer {
        max: callee.max_message,
        from: caller.name().clone(),
        conn: caller.connection().clone(),
        permits: callee.conns.of(&caller).permits.clone(),
        tasks: callee.tasks.clone(),
        callee,
        replies,
    };
    let bad = |e: &dyn std::fmt::Display| Violation::new(format!("lane: {e}"));
    let mut frames = Frames::new(recv);
    // Dropping the set (the lane ended: the caller went) drops every handler.
    let mut handlers: JoinSet<u64> = JoinSet::new();
    let mut running: CallTable<AbortHandle> = CallTable::default();
    let mut out = Vec::new();
    loop {
        while let Some(request) = frames.next::<LaneRequest<'_>>().map_err(|e| bad(&e))? {
            match request {
                LaneRequest::Call {
                    id,
                    service,
                    timeout_ms,
                    mode,
                    body,
                } => {
                    if running.contains(id) {
                        return Err(bad(&format!("call id {id} is already in progress")));
                    }
                    let deadline =
                        Instant::now() + std::time::Duration::from_millis(timeout_ms.into());
                    let call = Started {
                        id,
                        service,
                        deadline,
                        mode,
                    };
                    if let Some(task) = lane.start(call, body, &mut handlers, &mut out).await {
                        // Checked above: the id is free.
                        let _ = running.insert(id, task);
                    }
                }
                LaneRequest::Cancel { id } => {
                    if let Some(task) = running.remove(id) {
                        task.abort();
                    }
                }
                other => return Err(bad(&format!("unexpected {other:?}"))),
            }
        }
        while let Some(done) = handlers.try_join_next() {
            if let Ok(id) = done {
                running.remove(id);
            }
        }
        while out.len() < BATCH
            && let Ok(reply) = replied.try_recv()
        {
            out.extend_from_slice(&reply);
        }
        if !out.is_empty() {
            if send.write_all(&out).await.is_err() {
                return Ok(());
            }
            out.clear();
        }
        tokio::select! {
            more = frames.fill() => match more {
                Ok(true) => {}
                Ok(false) | Err(StreamError::Transport(_)) => return Ok(()),
                Err(StreamError::Bad(e)) => return Err(bad(&e)),
            },
            Some(reply) = replied.recv() => out.extend_from_slice(&reply),
        }
    }
}

/// A call read from a lane.
struct Started<'a> {
    id: u64,
    service: &'a str,
    deadline: Instant,
    mode: RpcMode,
}

/// What every call on one served lane shares.
struct LaneServer {
    callee: Arc<Callee>,
    from: NodeName,
    conn: Connection,
    permits: Arc<Semaphore>,
    tasks: Tasks,
    /// Replies of handlers that ran in tasks of their own.
    replies: mpsc::Sender<Vec<u8>>,
    max: usize,
}

impl LaneServer {
    /// Starts a call, or refuses it at once. A reply ready now goes into
    /// `out`; the handler's task if it needs one.
    async fn start(
        &self,
        call: Started<'_>,
        body: &[u8],
        handlers: &mut JoinSet<u64>,
        out: &mut Vec<u8>,
    ) -> Option<AbortHandle> {
        let Started {
            id,
            service,
            deadline,
            mode,
        } = call;
        let admitted = match (mode, self.callee.services.get(service)) {
            (RpcMode::Call | RpcMode::Cast, Some(Service::Unary(h))) if body.len() <= self.max => {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => Ok((h, permit)),
                    Err(_) => {
                        count(&self.callee.stats.refused_per_peer);
                        Err(RpcFailure::Overloaded)
                    }
                }
            }
            (_, None) => {
                debug!(peer = %self.from, %service, "no such service");
                Err(RpcFailure::NoSuchService)
            }
            (RpcMode::Call | RpcMode::Cast, Some(Service::Unary(_))) => Err(RpcFailure::TooLarge {
                limit: self.max as u64,
                response: false,
            }),
            (RpcMode::Call | RpcMode::Cast, Some(Service::Streaming(_))) => {
                Err(RpcFailure::BadRequest(format!(
                    "{service} is a streaming service: use call_stream"
                )))
            }
            (_, Some(_)) => Err(RpcFailure::BadRequest(format!(
                "{service} cannot be called on a lane in mode {mode:?}"
            ))),
        };
        let (handler, permit) = match admitted {
            Ok(admitted) => admitted,
            Err(failure) => {
                if mode == RpcMode::Call {
                    self.reply(id, RpcStatus::Failed(failure), Vec::new(), out);
                }
                return None;
            }
        };
        let ctx = CallContext {
            from: self.from.clone(),
            service: service.to_owned(),
            deadline,
        };
        let mut handling = Box::pin(Outcome::of(handler.handle(ctx, body.to_vec()), deadline));
        // Poll once here: a handler that does not wait is answered without
        // a task (its deadline timer is never even armed).
        let first = std::future::poll_fn(|cx| Poll::Ready(handling.as_mut().poll(cx))).await;
        if let Poll::Ready(outcome) = first {
            drop(permit);
            if mode == RpcMode::Call {
                let (status, body) = outcome.verdict(self.max);
                self.reply(id, status, body, out);
            }
            return None;
        }
        let replier = Replier {
            conn: self.conn.clone(),
            replies: self.replies.clone(),
        };
        let max = self.max;
        Some(handlers.spawn(async move {
            let outcome = handling.await;
            drop(permit);
            if mode == RpcMode::Call {
                let (status, body) = outcome.verdict(max);
                replier.send(id, status, body).await;
            }
            id
        }))
    }

    /// Adds a reply to `out`, or sends one too large for the lane on a
    /// stream of its own.
    fn reply(&self, id: u64, status: RpcStatus, body: Vec<u8>, out: &mut Vec<u8>) {
        if body.len() <= LANE_MAX_BODY {
            encode_reply(id, status, &body, out);
        } else {
            self.tasks
                .spawn(send_on_own_stream(self.conn.clone(), id, status, body));
        }
    }
}

/// Appends a reply frame to `out`.
fn encode_reply(id: u64, status: RpcStatus, body: &[u8], out: &mut Vec<u8>) {
    let reply = LaneReply { id, status, body };
    if let Err(e) = frame::encode_into(&reply, LANE_MAX_FRAME, out) {
        debug!("reply to lane call {id} not sent: {e}");
    }
}

/// Sends a reply from a handler's task: to the lane's task, or on a stream
/// of its own when the body is over [`LANE_MAX_BODY`].
struct Replier {
    conn: Connection,
    replies: mpsc::Sender<Vec<u8>>,
}

impl Replier {
    async fn send(self, id: u64, status: RpcStatus, body: Vec<u8>) {
        if body.len() <= LANE_MAX_BODY {
            let mut bytes = Vec::with_capacity(body.len() + 32);
            encode_reply(id, status, &body, &mut bytes);
            let _ = self.replies.send(bytes).await;
        } else {
            send_on_own_stream(self.conn, id, status, body).await;
        }
    }
}

/// Sends a lane call's large reply on a unidirectional stream.
async fn send_on_own_stream(conn: Connection, id: u64, status: RpcStatus, body: Vec<u8>) {
    let Ok(mut send) = conn.open_uni().await else {
        return;
    };
    let _ = send.set_priority(priority_for(body.len()));
    let Ok(start) = io::opening(
        StreamKind::RpcReply,
        &ReplyHead { id, status },
        MAX_HEADER_FRAME,
    ) else {
        return;
    };
    if send.write_all(&start).await.is_ok() && send.write_all(&body).await.is_ok() {
        let _ = send.finish();
    }
}

/// Reads the head of an `RpcReply` stream and hands the stream to the lane
/// call it answers. `Err` is a protocol violation by the callee.
pub(crate) async fn receive_reply(
    lane: Option<Arc<Lane>>,
    mut recv: RecvStream,
) -> Result<(), Violation> {
    let head: ReplyHead = match io::read_frame(&mut recv, MAX_HEADER_FRAME).await {
        Ok(Some(head)) => head,
        Ok(None) => return Err(Violation::new("reply stream ended before its head")),
        Err(StreamError::Bad(e)) => return Err(Violation::new(format!("reply stream: {e}"))),
        Err(StreamError::Transport(_)) => return Ok(()),
    };
    let cancelled = VarInt::from_u32(CloseCode::Cancelled.code());
    match lane {
        Some(lane) => {
            let id = head.id;
            // A refused hand-off drops the stream: nobody waits for it.
            if !lane.deliver(id, Reply::Streamed(head.status, recv)) {
                debug!("reply to call {id}, which no longer waits");
            }
        }
        None => {
            let _ = recv.stop(cancelled);
        }
    }
    Ok(())
}
