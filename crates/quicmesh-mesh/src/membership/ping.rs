//! Application-level ping: one [`Ping`] each way on a stream of its own,
//! sent above all application data.

use std::time::{Duration, Instant};

use quicmesh_wire::{NodeName, Ping, StreamKind};
use quinn::{RecvStream, SendStream};

use super::CONTROL_PRIORITY;
use crate::error::PingError;
use crate::io::{self, StreamError, within};
use crate::peer::{Peer, Violation};
use crate::router::{HandlerFuture, StreamHandler};

/// Largest ping frame.
const MAX_PING: usize = 64;

/// Pings `peer` over `conn`: the round trip, or why there was none.
pub(super) async fn ping(
    conn: &quinn::Connection,
    peer: &NodeName,
    timeout: Duration,
) -> Result<Duration, PingError> {
    let down = |e: &dyn std::fmt::Display| PingError::NodeDown {
        peer: peer.clone(),
        detail: e.to_string(),
    };
    let nonce = fastrand::u64(..);
    let start = Instant::now();
    let exchange = async {
        let (mut send, mut recv) = conn.open_bi().await.map_err(|e| down(&e))?;
        let _ = send.set_priority(CONTROL_PRIORITY);
        let opening =
            io::opening(StreamKind::Ping, &Ping { nonce }, MAX_PING).map_err(|e| down(&e))?;
        send.write_all(&opening).await.map_err(|e| down(&e))?;
        let _ = send.finish();
        match io::read_frame::<Ping>(&mut recv, MAX_PING).await {
            Ok(Some(p)) if p.nonce == nonce => Ok(start.elapsed()),
            Ok(_) | Err(StreamError::Bad(_)) => Err(PingError::BadReply { peer: peer.clone() }),
            Err(StreamError::Transport(e)) => Err(down(&e)),
        }
    };
    within(timeout, exchange).await.unwrap_or_else(|| {
        Err(PingError::Timeout {
            peer: peer.clone(),
            after: timeout,
        })
    })
}

/// Answers pings: echoes the peer's `Ping`.
pub(super) struct PingHandler {
    patience: Duration,
}

impl PingHandler {
    /// A handler that waits at most `patience` for the ping frame.
    pub(super) fn new(patience: Duration) -> Self {
        Self { patience }
    }
}

impl StreamHandler for PingHandler {
    fn bi(&self, _: Peer, send: SendStream, recv: RecvStream) -> HandlerFuture {
        Box::pin(pong(send, recv, self.patience))
    }
}

async fn pong(
    mut send: SendStream,
    mut recv: RecvStream,
    patience: Duration,
) -> Result<(), Violation> {
    let _ = send.set_priority(CONTROL_PRIORITY);
    match within(patience, io::read_frame::<Ping>(&mut recv, MAX_PING)).await {
        Some(Ok(Some(p))) => {
            if io::write_frame(&mut send, &p, MAX_PING).await.is_ok() {
                let _ = send.finish();
                // Keep the stream until the pong is acknowledged.
                let _ = within(Duration::from_secs(1), send.stopped()).await;
            }
            Ok(())
        }
        Some(Ok(None)) | Some(Err(StreamError::Bad(_))) => Err(Violation::new("malformed ping")),
        Some(Err(StreamError::Transport(_))) | None => Ok(()),
    }
}
