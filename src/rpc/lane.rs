//! Lanes: small calls multiplexed by id on one long-lived stream.
//!
//! A stream per call costs the opening, flow-control and closing frames of
//! a QUIC stream and a task on each side for every call. For calls whose
//! request fits [`LANE_MAX_BODY`] a caller instead keeps one lane per
//! connection, for as long as the connection lives: a writer task batches
//! the frames of concurrent calls into few stream writes, and a reader task
//! hands each reply to its waiting call by id. The callee reads the lane and
//! writes the replies from one task; a handler that does not finish when
//! first polled moves to a task of its own, so calls run in parallel and
//! replies come back in any order. A reply over [`LANE_MAX_BODY`] goes on a
//! unidirectional stream of its own, so a large response never holds up
//! the small ones behind it. Large requests keep a stream per call.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;

use quicmesh_wire::{
    CloseCode, FrameError, LANE_MAX_BODY, LANE_MAX_FRAME, LaneReply, LaneRequest, MAX_HEADER_FRAME,
    NodeName, ReplyHead, RpcFailure, RpcMode, RpcStatus, StreamKind, frame,
};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::Instant;
use tokio::time::error::Elapsed;
use tracing::debug;

use super::{CallContext, CatchUnwind, Service, panic_message};
use crate::membership::Membership;
use crate::transport::{self, StreamError};

/// Frames waiting for a lane's writer; a full queue makes callers wait
/// (within their timeout) instead of growing memory.
const QUEUE: usize = 1024;

/// Most bytes the writer gathers from queued frames into one stream write.
const BATCH: usize = 64 * 1024;

/// How a lane call's reply arrived.
pub(super) enum Reply {
    /// On the lane: the status and the response body.
    Inline(RpcStatus, Vec<u8>),
    /// On a stream of its own: the status; the body is the stream's rest.
    Streamed(RpcStatus, RecvStream),
    /// The lane ended before the reply: the connection went.
    Down(String),
    /// The callee's replies broke the protocol (it is dropped).
    Broken(String),
}

/// Calls waiting for replies; `None` once the lane has ended.
type Waiting = Mutex<Option<HashMap<u64, oneshot::Sender<Reply>>>>;

/// The caller's end of a lane to one connection.
pub(crate) struct Lane {
    frames: mpsc::Sender<Vec<u8>>,
    waiting: Arc<Waiting>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.waiting().as_ref().map(HashMap::len);
        f.debug_struct("Lane")
            .field("waiting", &waiting)
            .finish_non_exhaustive()
    }
}

impl Lane {
    /// Opens a lane on `conn` and starts its writer and reader;
    /// `violation` runs if the callee's replies break the protocol.
    pub(crate) async fn open(
        conn: &Connection,
        violation: impl FnOnce(String) + Send + 'static,
    ) -> Result<Arc<Self>, quinn::ConnectionError> {
        let (mut send, recv) = conn.open_bi().await?;
        let _ = send.set_priority(super::priority_for(0));
        // The kind header: a write failure shows up as the first call's.
        let _ = send.write_all(&StreamKind::RpcLane.header()).await;
        let (frames, queue) = mpsc::channel(QUEUE);
        let waiting: Arc<Waiting> = Arc::new(Mutex::new(Some(HashMap::new())));
        tokio::spawn(write_frames(send, queue));
        tokio::spawn(read_replies(recv, waiting.clone(), violation));
        Ok(Arc::new(Self {
            frames,
            waiting,
            next_id: AtomicU64::new(0),
        }))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, Option<HashMap<u64, oneshot::Sender<Reply>>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one call (or cast) and, for a call, waits for its reply.
    /// Dropping the future before the reply cancels the call on the callee.
    pub(super) async fn call(
        &self,
        service: &str,
        timeout_ms: u32,
        mode: RpcMode,
        body: &[u8],
    ) -> Result<Reply, String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = LaneRequest::Call {
            id,
            service,
            timeout_ms,
            mode,
            body,
        };
        let mut bytes = Vec::with_capacity(body.len() + service.len() + 32);
        frame::encode_into(&request, LANE_MAX_FRAME, &mut bytes).map_err(|e| e.to_string())?;
        if mode == RpcMode::Cast {
            return self
                .frames
                .send(bytes)
                .await
                .map(|()| Reply::Inline(RpcStatus::Ok, Vec::new()))
                .map_err(|_| "the lane closed".to_owned());
        }
        let (tx, rx) = oneshot::channel();
        match self.waiting().as_mut() {
            Some(waiting) => waiting.insert(id, tx),
            None => return Err("the lane closed".to_owned()),
        };
        let mut guard = Waiter {
            lane: self,
            id,
            answered: false,
        };
        if self.frames.send(bytes).await.is_err() {
            return Err("the lane closed".to_owned());
        }
        let reply = rx
            .await
            .unwrap_or(Reply::Down("the lane closed".to_owned()));
        guard.answered = true;
        Ok(reply)
    }

    /// Hands a reply that came on its own stream to the call awaiting it;
    /// `false` if no call awaits it any more.
    pub(super) fn deliver(&self, id: u64, reply: Reply) -> bool {
        let tx = self.waiting().as_mut().and_then(|w| w.remove(&id));
        match tx {
            Some(tx) => tx.send(reply).is_ok(),
            None => false,
        }
    }
}

/// A call waiting on a lane; dropped unanswered (cancelled, timed out),
/// it forgets the call and tells the callee to drop the handler.
struct Waiter<'a> {
    lane: &'a Lane,
    id: u64,
    answered: bool,
}

impl Drop for Waiter<'_> {
    fn drop(&mut self) {
        if self.answered {
            return;
        }
        if let Some(w) = self.lane.waiting().as_mut() {
            w.remove(&self.id);
        }
        // A full queue means a stalled peer; the deadline then ends the
        // handler instead.
        if let Ok(bytes) = frame::encode(&LaneRequest::Cancel { id: self.id }, LANE_MAX_FRAME) {
            let _ = self.lane.frames.try_send(bytes);
        }
    }
}

/// Writes queued frames to `send`, gathering what is queued into one write.
async fn write_frames(mut send: SendStream, mut queue: mpsc::Receiver<Vec<u8>>) {
    let mut batch = Vec::new();
    while let Some(bytes) = queue.recv().await {
        let written = if queue.is_empty() {
            send.write_all(&bytes).await
        } else {
            batch.clear();
            batch.extend_from_slice(&bytes);
            while batch.len() < BATCH {
                match queue.try_recv() {
                    Ok(more) => batch.extend_from_slice(&more),
                    Err(_) => break,
                }
            }
            send.write_all(&batch).await
        };
        if let Err(e) = written {
            debug!("lane closed: {e}");
            return;
        }
    }
    let _ = send.finish();
}

/// Buffers a stream's bytes and splits them into frames.
struct Frames {
    recv: RecvStream,
    buf: Vec<u8>,
    start: usize,
}

impl Frames {
    fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The next whole frame already buffered, decoded.
    fn next<'a, T: serde::Deserialize<'a>>(&'a mut self) -> Result<Option<T>, FrameError> {
        match frame::decode_from::<T>(&self.buf[self.start..], LANE_MAX_FRAME)? {
            Some((msg, used)) => {
                self.start += used;
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// Reads more bytes; `Ok(false)` at the stream's clean end.
    async fn fill(&mut self) -> Result<bool, StreamError> {
        self.buf.drain(..self.start);
        self.start = 0;
        match self.recv.read_chunk(LANE_MAX_FRAME, true).await {
            Ok(Some(chunk)) => {
                self.buf.extend_from_slice(&chunk.bytes);
                Ok(true)
            }
            Ok(None) if self.buf.is_empty() => Ok(false),
            Ok(None) => Err(StreamError::Bad(FrameError::Malformed(format!(
                "lane ended inside a frame ({} bytes)",
                self.buf.len()
            )))),
            Err(e) => Err(StreamError::Transport(e.to_string())),
        }
    }
}

/// Hands each reply on the lane to its call; when the lane ends, fails
/// every call still waiting.
async fn read_replies(recv: RecvStream, waiting: Arc<Waiting>, violation: impl FnOnce(String)) {
    let mut frames = Frames::new(recv);
    let why = loop {
        loop {
            match frames.next::<LaneReply<'_>>() {
                Ok(Some(reply)) => {
                    let reply_to = waiting
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .as_mut()
                        .and_then(|w| w.remove(&reply.id));
                    if let Some(tx) = reply_to {
                        let _ = tx.send(Reply::Inline(reply.status, reply.body.to_vec()));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The callee broke the protocol: its connection goes.
                    let detail = format!("bad lane reply: {e}");
                    fail_all(&waiting, || Reply::Broken(detail.clone()));
                    violation(detail);
                    return;
                }
            }
        }
        match frames.fill().await {
            Ok(true) => {}
            Ok(false) => break "the lane was closed by the peer".to_owned(),
            Err(e) => break e.to_string(),
        }
    };
    fail_all(&waiting, || Reply::Down(why.clone()));
}

/// Ends the lane: every waiting call gets `reply()`, later ones are refused.
fn fail_all(waiting: &Waiting, reply: impl Fn() -> Reply) {
    let calls = waiting.lock().unwrap_or_else(|e| e.into_inner()).take();
    for (_, tx) in calls.into_iter().flatten() {
        let _ = tx.send(reply());
    }
}

/// Serves a caller's lane. One task reads the calls and writes the replies,
/// gathering every reply ready into one write; a handler that finishes
/// when first polled (most do) is answered without a task of its own, the
/// others run in tasks that hand their replies back. `Err` is a protocol
/// violation by the caller.
pub(crate) async fn serve_lane(
    m: Arc<Membership>,
    from: NodeName,
    conn: Connection,
    permits: Arc<Semaphore>,
    mut send: SendStream,
    recv: RecvStream,
) -> Result<(), String> {
    let _ = send.set_priority(super::priority_for(0));
    let (replies, mut replied) = mpsc::channel(QUEUE);
    let lane = LaneServer {
        max: m.config.rpc.max_message,
        m,
        from,
        conn,
        permits,
        replies,
    };
    let mut frames = Frames::new(recv);
    // Dropping the set (the lane ended: the caller went) drops every handler.
    let mut handlers: JoinSet<u64> = JoinSet::new();
    let mut running: HashMap<u64, AbortHandle> = HashMap::new();
    let mut out = Vec::new();
    loop {
        while let Some(request) = frames
            .next::<LaneRequest<'_>>()
            .map_err(|e| format!("lane: {e}"))?
        {
            match request {
                LaneRequest::Call {
                    id,
                    service,
                    timeout_ms,
                    mode,
                    body,
                } => {
                    if running.contains_key(&id) {
                        return Err(format!("lane: call id {id} is already in progress"));
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
                        running.insert(id, task);
                    }
                }
                LaneRequest::Cancel { id } => {
                    if let Some(task) = running.remove(&id) {
                        task.abort();
                    }
                }
                other => return Err(format!("lane: unexpected {other:?}")),
            }
        }
        while let Some(done) = handlers.try_join_next() {
            if let Ok(id) = done {
                running.remove(&id);
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
                Err(StreamError::Bad(e)) => return Err(format!("lane: {e}")),
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
    m: Arc<Membership>,
    from: NodeName,
    conn: Connection,
    permits: Arc<Semaphore>,
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
        let admitted = match (mode, self.m.services.get(service)) {
            (RpcMode::Call | RpcMode::Cast, Some(Service::Unary(h))) if body.len() <= self.max => {
                match self.permits.clone().try_acquire_owned() {
                    Ok(permit) => Ok((h, permit)),
                    Err(_) => Err(RpcFailure::Overloaded),
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
        let mut handling = Box::pin(tokio::time::timeout_at(
            deadline,
            CatchUnwind(handler.handle(ctx, body.to_vec())),
        ));
        // Poll once here: a handler that does not wait is answered without
        // a task (its deadline timer is never even armed).
        let first = std::future::poll_fn(|cx| Poll::Ready(handling.as_mut().poll(cx))).await;
        if let Poll::Ready(outcome) = first {
            drop(permit);
            if mode == RpcMode::Call {
                let (status, body) = verdict(outcome, self.max);
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
                let (status, body) = verdict(outcome, max);
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
            tokio::spawn(send_on_own_stream(self.conn.clone(), id, status, body));
        }
    }
}

/// How a handler ended: its result, a caught panic, or the deadline.
type Outcome = Result<Result<Result<Vec<u8>, RpcFailure>, Box<dyn std::any::Any + Send>>, Elapsed>;

/// The reply for a handler's outcome.
fn verdict(outcome: Outcome, max: usize) -> (RpcStatus, Vec<u8>) {
    let failed = |f| (RpcStatus::Failed(f), Vec::new());
    match outcome {
        Ok(Ok(Ok(resp))) if resp.len() > max => failed(RpcFailure::TooLarge {
            limit: max as u64,
            response: true,
        }),
        Ok(Ok(Ok(resp))) => (RpcStatus::Ok, resp),
        Ok(Ok(Err(failure))) => failed(failure),
        Ok(Err(panic)) => failed(RpcFailure::Panicked(panic_message(panic))),
        Err(_) => failed(RpcFailure::Timeout),
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
    let _ = send.set_priority(super::priority_for(body.len()));
    let Ok(head) = frame::encode(&ReplyHead { id, status }, MAX_HEADER_FRAME) else {
        return;
    };
    let mut start = StreamKind::RpcReply.header().to_vec();
    start.extend_from_slice(&head);
    if send.write_all(&start).await.is_ok() && send.write_all(&body).await.is_ok() {
        let _ = send.finish();
    }
}

/// Reads the head of an `RpcReply` stream and hands the stream to the lane
/// call it answers. `Err` is a protocol violation by the callee.
pub(crate) async fn receive_reply(
    lane: Option<Arc<Lane>>,
    mut recv: RecvStream,
) -> Result<(), String> {
    let head: ReplyHead = match transport::read_frame(&mut recv, MAX_HEADER_FRAME).await {
        Ok(Some(head)) => head,
        Ok(None) => return Err("reply stream ended before its head".to_owned()),
        Err(StreamError::Bad(e)) => return Err(format!("reply stream: {e}")),
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
