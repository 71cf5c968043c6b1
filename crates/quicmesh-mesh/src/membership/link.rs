//! The task that owns one installed connection.
//!
//! It declares the peer down when the node's liveness watcher finds that
//! no packet at all (heartbeat, data, acknowledgement) has arrived for the
//! heartbeat timeout (see [`liveness`](super::liveness)); it writes and
//! reads the control stream, and hands every stream the peer opens to the
//! router's handler for its kind.
//! A peer that breaks the protocol is dropped with `ProtocolViolation`, as
//! is one that keeps sending `Peers` frames that teach nothing (see
//! [`gossip`](super::gossip)); nothing it sends can panic the node.

use std::sync::Arc;
use std::time::Duration;

use quicmesh_wire::{CloseCode, Control};
use quinn::{RecvStream, SendStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};

use super::gossip::{TooManyUseless, USELESS_PEERS_WINDOW, UselessPeers};
use super::{Inner, count};
use crate::event::DownReason;
use crate::io::{self, StreamError, within};
use crate::peer::{Peer, Violation};
use crate::router::{HandlerFuture, StreamHandler, refuse};
use crate::transport;

/// The control stream of an installed connection: its two halves, the
/// queue of messages to send on it, and a message to send first (the
/// listener's welcome).
pub(super) struct ControlStream {
    pub(super) send: SendStream,
    pub(super) recv: RecvStream,
    pub(super) queue: mpsc::Receiver<Control>,
    pub(super) first: Option<Control>,
}

/// Starts the task that owns an installed connection until it ends, then
/// reports the end to the peer table.
pub(super) fn spawn(inner: &Arc<Inner>, peer: Peer, control: ControlStream) {
    let span = info_span!("link", node = %inner.me, peer = %peer.name());
    let inner = inner.clone();
    let tasks = inner.tasks.clone();
    let task = async move {
        let conn = peer.connection().clone();
        let mut jobs = JoinSet::new();
        let max = inner.config.max_frame;
        let ControlStream {
            send,
            recv,
            queue,
            first,
        } = control;
        jobs.spawn(write_control(send, queue, first, max).in_current_span());
        jobs.spawn(read_control(inner.clone(), peer.clone(), recv).in_current_span());
        jobs.spawn(serve_streams(inner.clone(), peer.clone()).in_current_span());
        let mut watch = inner.liveness.watch(&peer, inner.me < *peer.name());

        let reason = tokio::select! {
            biased;
            _ = inner.tasks.cancelled() => DownReason::LocalShutdown,
            e = conn.closed() => peer
                .closed_by_us()
                .unwrap_or_else(|| transport::down_reason(&e)),
            () = watch.silent() => {
                let reason = DownReason::HeartbeatTimeout;
                peer.close(CloseCode::HeartbeatTimeout, reason.clone(), "no heartbeat");
                reason
            }
        };
        jobs.abort_all();
        drop(watch);
        inner.link_closed(peer.name(), conn.stable_id(), reason);
        // Out of the table now: its bytes move to the ended totals.
        inner.stats.connection_ended(&conn);
    };
    tasks.spawn(task.instrument(span));
}

async fn write_control(
    mut send: SendStream,
    mut queue: mpsc::Receiver<Control>,
    first: Option<Control>,
    max: usize,
) {
    if let Some(msg) = first
        && io::write_frame(&mut send, &msg, max).await.is_err()
    {
        return;
    }
    while let Some(msg) = queue.recv().await {
        // News of nodes is not urgent: what comes in the next moment goes
        // in the same frame (a cold start of N nodes would otherwise send
        // each node N² frames of one entry).
        tokio::time::sleep(GOSSIP_BATCH).await;
        let mut batch = vec![msg];
        while let Ok(more) = queue.try_recv() {
            batch.push(more);
        }
        let most = (max / MAX_ENTRY_BYTES).clamp(1, MAX_MERGED);
        for msg in coalesce(batch, most) {
            if let Err(e) = io::write_frame(&mut send, &msg, max).await {
                debug!("control stream closed: {e}");
                return;
            }
        }
    }
}

/// How long a control message waits for others to share its frame.
const GOSSIP_BATCH: Duration = Duration::from_millis(20);
/// Most entries merged into one `Peers` or `Gone` frame, and the bytes an
/// entry may take at most (a longest name and four addresses), so a
/// merged frame stays within `max_frame`.
const MAX_MERGED: usize = 1024;
const MAX_ENTRY_BYTES: usize = 512;

/// Merges runs of `Peers` (and of `Gone`) messages into one each, in
/// order, at most `most` entries a frame.
fn coalesce(batch: Vec<Control>, most: usize) -> Vec<Control> {
    let mut out: Vec<Control> = Vec::with_capacity(batch.len());
    for msg in batch {
        match (out.last_mut(), msg) {
            (Some(Control::Peers(into)), Control::Peers(more))
                if into.len() + more.len() <= most =>
            {
                into.extend(more);
            }
            (Some(Control::Gone(into)), Control::Gone(more)) if into.len() + more.len() <= most => {
                into.extend(more);
            }
            (_, msg) => out.push(msg),
        }
    }
    out
}

async fn read_control(inner: Arc<Inner>, peer: Peer, mut recv: RecvStream) {
    let mut useless = UselessPeers::new(inner.config.max_peers);
    loop {
        match io::read_frame::<Control>(&mut recv, inner.config.max_frame).await {
            Ok(Some(Control::Gone(names))) => inner.gone(peer.name(), &names),
            Ok(Some(Control::BulkPath { port })) => peer.bulk().port = Some(port),
            Ok(Some(Control::Peers(peers))) => {
                let taught = inner.learn(peer.name(), peers);
                if let Err(TooManyUseless { sent, allowed }) =
                    useless.note(taught, Instant::now().into_std())
                {
                    let detail = format!(
                        "useless Peers frames: {sent} in {USELESS_PEERS_WINDOW:?} told of no node \
                         to take in (at most {allowed})"
                    );
                    return peer.violation(Violation::new(detail));
                }
            }
            Ok(Some(other)) => {
                let detail = format!("unexpected control message after the handshake: {other:?}");
                return peer.violation(Violation::new(detail));
            }
            Ok(None) => return,
            Err(StreamError::Bad(e)) => {
                return peer.violation(Violation::new(format!("control stream: {e}")));
            }
            Err(StreamError::Transport(e)) => {
                debug!("control stream ended: {e}");
                return;
            }
        }
    }
}

/// Accepts the streams the peer opens and hands each to its handler.
pub(super) async fn serve_streams(inner: Arc<Inner>, peer: Peer) {
    let conn = peer.connection().clone();
    let patience = inner.config.handshake_timeout;
    let mut streams = JoinSet::new();
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    count(&inner.stats.streams_bi);
                    let served = route(inner.clone(), peer.clone(), Some(send), recv, patience);
                    streams.spawn(served.in_current_span());
                }
                Err(_) => return,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    count(&inner.stats.streams_uni);
                    let served = route(inner.clone(), peer.clone(), None, recv, patience);
                    streams.spawn(served.in_current_span());
                }
                Err(_) => return,
            },
            Some(_) = streams.join_next() => {}
        }
    }
}

/// Reads a stream's kind (within `patience`) and runs its handler; a
/// kind nobody serves (or any, before the mesh started) is refused with
/// `UnknownStreamKind`.
async fn route(
    inner: Arc<Inner>,
    peer: Peer,
    mut send: Option<SendStream>,
    mut recv: RecvStream,
    patience: Duration,
) {
    let kind = match within(patience, io::read_kind(&mut recv)).await {
        None => return refuse(send.as_mut(), &mut recv, CloseCode::HandshakeTimeout),
        Some(Err(StreamError::Bad(e))) => {
            return peer.violation(Violation::new(format!("stream header: {e}")));
        }
        Some(Err(StreamError::Transport(_))) => return,
        Some(Ok(kind)) => kind,
    };
    let handler = match (kind, inner.router()) {
        (Ok(kind), Some(router)) => router.get(kind),
        (Ok(_), None) => None,
        (Err(code), _) => {
            debug!("refused a stream of unknown kind {code:#06x}");
            None
        }
    };
    let Some(handler) = handler else {
        return refuse(send.as_mut(), &mut recv, CloseCode::UnknownStreamKind);
    };
    let served = match send {
        Some(send) => handler.bi(peer.clone(), send, recv),
        None => handler.uni(peer.clone(), recv),
    };
    if let Err(violation) = served.await {
        peer.violation(violation);
    }
}

/// The control stream is opened once, by the dialler, before anything
/// else; a second one breaks the protocol.
pub(super) struct SecondControl;

impl StreamHandler for SecondControl {
    fn bi(&self, _: Peer, _: SendStream, _: RecvStream) -> HandlerFuture {
        Box::pin(std::future::ready(Err(Violation::new(
            "a second control stream",
        ))))
    }
}

#[cfg(test)]
mod tests {
    use quicmesh_wire::PeerInfo;

    use super::*;

    fn peers(names: &[&str]) -> Control {
        Control::Peers(
            names
                .iter()
                .map(|n| PeerInfo {
                    name: n.parse().unwrap(),
                    addrs: vec!["127.0.0.1:1".parse().unwrap()],
                })
                .collect(),
        )
    }

    fn gone(names: &[&str]) -> Control {
        Control::Gone(names.iter().map(|n| n.parse().unwrap()).collect())
    }

    #[test]
    fn runs_of_news_merge_in_order_and_up_to_a_cap() {
        let merged = coalesce(
            vec![
                peers(&["a@h"]),
                peers(&["b@h"]),
                gone(&["a@h"]),
                gone(&["c@h"]),
                peers(&["a@h"]),
            ],
            MAX_MERGED,
        );
        assert_eq!(
            merged,
            vec![
                peers(&["a@h", "b@h"]),
                gone(&["a@h", "c@h"]),
                peers(&["a@h"])
            ],
            "a node gone after it came up stays gone after its news"
        );
        let many: Vec<Control> = (0..MAX_MERGED + 1).map(|_| peers(&["a@h"])).collect();
        assert_eq!(coalesce(many.clone(), MAX_MERGED).len(), 2);
        assert_eq!(
            coalesce(many, 100).len(),
            11,
            "a smaller frame, more frames"
        );
    }
}
