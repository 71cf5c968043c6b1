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

mod calls;
mod serve;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use quicmesh_mesh::io::StreamError;
use quicmesh_mesh::{Peer, Tasks, Violation};
use quicmesh_wire::{
    FrameError, LANE_MAX_FRAME, LaneReply, LaneRequest, RpcMode, RpcStatus, StreamKind, frame,
};
use quinn::{RecvStream, SendStream};
use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::priority_for;
use calls::CallTable;
pub(crate) use serve::{receive_reply, serve_lane};

/// Frames waiting for a lane's writer; a full queue makes callers wait
/// (within their timeout) instead of growing memory.
const QUEUE: usize = 1024;

/// Most bytes the writer gathers from queued frames into one stream write.
const BATCH: usize = 64 * 1024;

/// How a lane call ended: its reply (on the lane or a stream of its own),
/// or why there is none.
pub(super) enum Reply {
    /// On the lane: the status and the response body.
    Inline(RpcStatus, Vec<u8>),
    /// On a stream of its own: the status; the body is the stream's rest.
    Streamed(RpcStatus, RecvStream),
    /// The lane ended before the reply: the connection went.
    Down(String),
    /// The callee's replies broke the protocol (it is dropped).
    Broken(String),
    /// The request could not be framed, so it was not sent.
    Unsent(String),
}

/// Calls waiting for replies.
type Waiting = Mutex<CallTable<oneshot::Sender<Reply>>>;

/// The caller's end of a lane to one connection.
pub(crate) struct Lane {
    frames: mpsc::Sender<Vec<u8>>,
    waiting: Arc<Waiting>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Lane {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let waiting = self.waiting().len();
        f.debug_struct("Lane")
            .field("waiting", &waiting)
            .finish_non_exhaustive()
    }
}

impl Lane {
    /// Opens a lane on `peer`'s connection and starts its writer and
    /// reader; a callee whose replies break the protocol is dropped.
    pub(crate) async fn open(
        peer: &Peer,
        tasks: &Tasks,
    ) -> Result<Arc<Self>, quinn::ConnectionError> {
        let conn = peer.connection();
        let (mut send, recv) = conn.open_bi().await?;
        let _ = send.set_priority(priority_for(0));
        // The kind header: a write failure shows up as the first call's.
        let _ = send.write_all(&StreamKind::RpcLane.header()).await;
        let (frames, queue) = mpsc::channel(QUEUE);
        let waiting: Arc<Waiting> = Arc::default();
        tasks.spawn(write_frames(send, queue));
        tasks.spawn(read_replies(recv, waiting.clone(), peer.clone()));
        Ok(Arc::new(Self {
            frames,
            waiting,
            next_id: AtomicU64::new(0),
        }))
    }

    fn waiting(&self) -> std::sync::MutexGuard<'_, CallTable<oneshot::Sender<Reply>>> {
        self.waiting.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Sends one call (or cast) and, for a call, waits for its reply (a
    /// cast's is an empty `Ok` once queued). Dropping the future before the
    /// reply cancels the call on the callee.
    pub(super) async fn call(
        &self,
        service: &str,
        timeout_ms: u32,
        mode: RpcMode,
        body: &[u8],
    ) -> Reply {
        const CLOSED: &str = "the lane closed";
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let request = LaneRequest::Call {
            id,
            service,
            timeout_ms,
            mode,
            body,
        };
        let mut bytes = Vec::with_capacity(body.len() + service.len() + 32);
        if let Err(e) = frame::encode_into(&request, LANE_MAX_FRAME, &mut bytes) {
            return Reply::Unsent(e.to_string());
        }
        if mode == RpcMode::Cast {
            return match self.frames.send(bytes).await {
                Ok(()) => Reply::Inline(RpcStatus::Ok, Vec::new()),
                Err(_) => Reply::Down(CLOSED.to_owned()),
            };
        }
        let (tx, rx) = oneshot::channel();
        if self.waiting().insert(id, tx).is_err() {
            return Reply::Down(CLOSED.to_owned());
        }
        let mut guard = Waiter {
            lane: self,
            id,
            answered: false,
        };
        if self.frames.send(bytes).await.is_err() {
            return Reply::Down(CLOSED.to_owned());
        }
        let reply = rx.await.unwrap_or(Reply::Down(CLOSED.to_owned()));
        guard.answered = true;
        reply
    }

    /// Hands a reply that came on its own stream to the call awaiting it;
    /// `false` if no call awaits it any more.
    pub(super) fn deliver(&self, id: u64, reply: Reply) -> bool {
        let tx = self.waiting().remove(id);
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
        self.lane.waiting().remove(self.id);
        // A full queue means a stalled peer; the deadline then ends the
        // handler instead.
        if let Ok(bytes) = frame::encode(&LaneRequest::Cancel { id: self.id }, LANE_MAX_FRAME) {
            let _ = self.lane.frames.try_send(bytes);
        }
    }
}

/// Writes queued frames to `send`, gathering what is queued into one
/// write, until the lane is dropped: RPC drops a connection's lane when
/// the connection ends, and a write fails then too.
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
pub(super) struct Frames {
    recv: RecvStream,
    buf: Vec<u8>,
    start: usize,
}

impl Frames {
    pub(super) fn new(recv: RecvStream) -> Self {
        Self {
            recv,
            buf: Vec::new(),
            start: 0,
        }
    }

    /// The next whole frame already buffered, decoded.
    pub(super) fn next<'a, T: serde::Deserialize<'a>>(
        &'a mut self,
    ) -> Result<Option<T>, FrameError> {
        match frame::decode_from::<T>(&self.buf[self.start..], LANE_MAX_FRAME)? {
            Some((msg, used)) => {
                self.start += used;
                Ok(Some(msg))
            }
            None => Ok(None),
        }
    }

    /// Reads more bytes; `Ok(false)` at the stream's clean end.
    pub(super) async fn fill(&mut self) -> Result<bool, StreamError> {
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
async fn read_replies(recv: RecvStream, waiting: Arc<Waiting>, callee: Peer) {
    let mut frames = Frames::new(recv);
    let why = loop {
        loop {
            match frames.next::<LaneReply<'_>>() {
                Ok(Some(reply)) => {
                    let reply_to = lock(&waiting).remove(reply.id);
                    if let Some(tx) = reply_to {
                        let _ = tx.send(Reply::Inline(reply.status, reply.body.to_vec()));
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    // The callee broke the protocol: its connection goes.
                    let detail = format!("bad lane reply: {e}");
                    fail_all(&waiting, || Reply::Broken(detail.clone()));
                    callee.violation(Violation::new(detail));
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
    let calls = lock(waiting).close();
    for tx in calls {
        let _ = tx.send(reply());
    }
}

fn lock(waiting: &Waiting) -> std::sync::MutexGuard<'_, CallTable<oneshot::Sender<Reply>>> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}
