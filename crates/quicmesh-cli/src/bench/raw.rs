//! The baseline: a minimal echo on plain quinn streams, with the same
//! identities and rustls configs as the nodes but no quicmesh framing.
//!
//! A stream's first byte picks the mode:
//! - `PER_CALL`: the request is the rest of the stream; the reply is echoed,
//!   then the stream finishes (one stream per call);
//! - `LANE`: a long-lived stream of `[u32 length][payload]` requests, each
//!   echoed in the same form (one outstanding call per lane);
//! - `SINK`: bytes are read and counted until the end; the count (u64) is
//!   the reply (bulk throughput of a single stream).

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use quicmesh::identity::Identity;
use quicmesh::quinn;
use quicmesh::quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};

pub(crate) const PER_CALL: u8 = 0;
pub(crate) const LANE: u8 = 1;
pub(crate) const SINK: u8 = 2;
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
