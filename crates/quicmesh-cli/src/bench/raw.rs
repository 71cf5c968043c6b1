//! The baseline: a minimal echo on plain quinn streams, with the same
//! identities and rustls configs as the nodes but no quicmesh framing.
//!
//! A stream's first byte picks the mode:
//! - `PER_CALL`: the request is the rest of the stream; the reply is echoed,
//!   then the stream finishes (one stream per call);
//! - `LANE`: a long-lived stream of `[u32 length][payload]` requests, each
//!   echoed in the same form (one outstanding call per lane);
//! - `SINK`: bytes are read and counted until the end; the count (u64) is
//!   the reply (bulk throughput of a single stream);
//! - `SHARED`: one long-lived stream shared by all callers, requests
//!   `[u64 id][u32 length][payload]` pipelined and echoed in the same form,
//!   as many in flight as there are callers (requests multiplexed by id).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context as _;
use quicmesh::identity::Identity;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

pub(crate) const PER_CALL: u8 = 0;
pub(crate) const LANE: u8 = 1;
pub(crate) const SINK: u8 = 2;
pub(crate) const SHARED: u8 = 3;
/// Bytes before a `SHARED` frame's payload: id and length.
const SHARED_HEAD: usize = 12;
/// Largest echo the raw server accepts.
const MAX_ECHO: usize = 64 << 20;

/// Starts the raw echo server on a free loopback port.
pub(crate) fn serve(identity: &Identity) -> anyhow::Result<(quinn::Endpoint, SocketAddr)> {
    let tls = identity.server_config()?;
    let quic = QuicServerConfig::try_from(tls)?;
    let endpoint = quinn::Endpoint::server(
        quinn::ServerConfig::with_crypto(Arc::new(quic)),
        "127.0.0.1:0".parse()?,
    )?;
    let addr = endpoint.local_addr()?;
    let acceptor = endpoint.clone();
    tokio::spawn(async move {
        while let Some(incoming) = acceptor.accept().await {
            tokio::spawn(async move {
                let Ok(conn) = incoming.await else { return };
                while let Ok((send, recv)) = conn.accept_bi().await {
                    tokio::spawn(serve_stream(send, recv));
                }
            });
        }
    });
    Ok((endpoint, addr))
}

async fn serve_stream(mut send: quinn::SendStream, mut recv: quinn::RecvStream) {
    let mut mode = [0u8; 1];
    if recv.read_exact(&mut mode).await.is_err() {
        return;
    }
    match mode[0] {
        PER_CALL => {
            if let Ok(body) = recv.read_to_end(MAX_ECHO).await
                && send.write_all(&body).await.is_ok()
            {
                let _ = send.finish();
            }
        }
        LANE => {
            let mut len = [0u8; 4];
            let mut buf = Vec::new();
            while recv.read_exact(&mut len).await.is_ok() {
                buf.resize(u32::from_be_bytes(len) as usize, 0);
                if recv.read_exact(&mut buf).await.is_err()
                    || send.write_all(&len).await.is_err()
                    || send.write_all(&buf).await.is_err()
                {
                    return;
                }
            }
            let _ = send.finish();
        }
        SHARED => {
            // Echo every whole frame received, all of a read in one write.
            let mut buf = Vec::new();
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                buf.extend_from_slice(&chunk.bytes);
                let whole = whole_frames(&buf);
                if whole > 0 {
                    if send.write_all(&buf[..whole]).await.is_err() {
                        return;
                    }
                    buf.drain(..whole);
                }
            }
            let _ = send.finish();
        }
        SINK => {
            let mut total = 0u64;
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                total += chunk.bytes.len() as u64;
            }
            if send.write_all(&total.to_be_bytes()).await.is_ok() {
                let _ = send.finish();
            }
        }
        _ => {}
    }
}

/// Connects a fresh client endpoint to the raw server.
pub(crate) async fn connect(
    identity: &Identity,
    server: &quicmesh::NodeName,
    addr: SocketAddr,
) -> anyhow::Result<quinn::Connection> {
    let (tls, _) = identity.client_config(server)?;
    let quic = QuicClientConfig::try_from(tls)?;
    let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let conn = endpoint
        .connect_with(quinn::ClientConfig::new(Arc::new(quic)), addr, "quicmesh")?
        .await
        .context("raw baseline handshake")?;
    Ok(conn)
}

/// One echo call on its own stream.
pub(crate) async fn call_per_stream(
    conn: &quinn::Connection,
    payload: &[u8],
) -> anyhow::Result<usize> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[PER_CALL]).await?;
    send.write_all(payload).await?;
    send.finish()?;
    Ok(recv.read_to_end(MAX_ECHO).await?.len())
}

/// A long-lived lane: sequential echo calls on one stream.
pub(crate) struct Lane {
    send: quinn::SendStream,
    recv: quinn::RecvStream,
    buf: Vec<u8>,
}

impl Lane {
    pub(crate) async fn open(conn: &quinn::Connection) -> anyhow::Result<Self> {
        let (mut send, recv) = conn.open_bi().await?;
        send.write_all(&[LANE]).await?;
        Ok(Self {
            send,
            recv,
            buf: Vec::new(),
        })
    }

    pub(crate) async fn call(&mut self, payload: &[u8]) -> anyhow::Result<usize> {
        let len = u32::try_from(payload.len())?.to_be_bytes();
        self.send.write_all(&len).await?;
        self.send.write_all(payload).await?;
        let mut back = [0u8; 4];
        self.recv.read_exact(&mut back).await?;
        self.buf.resize(u32::from_be_bytes(back) as usize, 0);
        self.recv.read_exact(&mut self.buf).await?;
        Ok(self.buf.len())
    }
}

/// Streams `chunk` repeatedly on one stream until `until`; the bytes the
/// server counted.
pub(crate) async fn bulk(
    conn: &quinn::Connection,
    chunk: &[u8],
    until: tokio::time::Instant,
    hist: &mut hdrhistogram::Histogram<u64>,
) -> anyhow::Result<u64> {
    let (mut send, mut recv) = conn.open_bi().await?;
    send.write_all(&[SINK]).await?;
    while tokio::time::Instant::now() < until {
        let t = tokio::time::Instant::now();
        send.write_all(chunk).await?;
        let _ = hist.record(t.elapsed().as_micros().max(1) as u64);
    }
    send.finish()?;
    let mut total = [0u8; 8];
    recv.read_exact(&mut total).await?;
    Ok(u64::from_be_bytes(total))
}

/// The length of the whole `SHARED` frames at the start of `buf`.
fn whole_frames(buf: &[u8]) -> usize {
    let mut at = 0;
    while let Some(head) = buf.get(at..at + SHARED_HEAD) {
        let len = u32::from_be_bytes([head[8], head[9], head[10], head[11]]) as usize;
        if buf.len() < at + SHARED_HEAD + len {
            break;
        }
        at += SHARED_HEAD + len;
    }
    at
}

/// One stream shared by every caller: a writer task sends queued requests
/// (all that are queued in one write) and a reader task hands each echo
/// to its caller by id.
pub(crate) struct SharedLane {
    requests: tokio::sync::mpsc::Sender<Vec<u8>>,
    waiting: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<usize>>>>,
    next_id: AtomicU64,
}

impl SharedLane {
    pub(crate) async fn open(conn: &quinn::Connection) -> anyhow::Result<Self> {
        let (mut send, mut recv) = conn.open_bi().await?;
        send.write_all(&[SHARED]).await?;
        let (requests, mut queue) = tokio::sync::mpsc::channel::<Vec<u8>>(1024);
        tokio::spawn(async move {
            let mut batch = Vec::new();
            while let Some(first) = queue.recv().await {
                batch.clear();
                batch.extend_from_slice(&first);
                while let Ok(more) = queue.try_recv() {
                    batch.extend_from_slice(&more);
                }
                if send.write_all(&batch).await.is_err() {
                    return;
                }
            }
        });
        let waiting: Arc<Mutex<HashMap<u64, tokio::sync::oneshot::Sender<usize>>>> = Arc::default();
        let replies = waiting.clone();
        tokio::spawn(async move {
            let mut buf = Vec::new();
            while let Ok(Some(chunk)) = recv.read_chunk(usize::MAX, true).await {
                buf.extend_from_slice(&chunk.bytes);
                let whole = whole_frames(&buf);
                let mut at = 0;
                while at < whole {
                    let id = u64::from_be_bytes(buf[at..at + 8].try_into().unwrap_or_default());
                    let len =
                        u32::from_be_bytes(buf[at + 8..at + 12].try_into().unwrap_or_default());
                    let tx = replies
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&id);
                    if let Some(tx) = tx {
                        let _ = tx.send(len as usize);
                    }
                    at += SHARED_HEAD + len as usize;
                }
                buf.drain(..whole);
            }
        });
        Ok(Self {
            requests,
            waiting,
            next_id: AtomicU64::new(0),
        })
    }

    /// One echo call; many may be in flight at once.
    pub(crate) async fn call(&self, payload: &[u8]) -> anyhow::Result<usize> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let mut frame = Vec::with_capacity(SHARED_HEAD + payload.len());
        frame.extend_from_slice(&id.to_be_bytes());
        frame.extend_from_slice(&u32::try_from(payload.len())?.to_be_bytes());
        frame.extend_from_slice(payload);
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(id, tx);
        self.requests
            .send(frame)
            .await
            .map_err(|_| anyhow::anyhow!("shared lane closed"))?;
        Ok(rx.await?)
    }
}
