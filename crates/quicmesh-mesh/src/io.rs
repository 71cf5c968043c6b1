//! Frames on QUIC streams: what every layer that reads or writes a
//! stream shares, so a malformed frame is always told apart from a
//! transport failure.

use std::time::Duration;

use bytes::Bytes;
use quicmesh_wire::{FrameError, StreamKind, frame};
use quinn::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::peer::Violation;

/// A failure to read or write a stream.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer sent bytes that are not a valid frame: a protocol violation.
    #[error(transparent)]
    Bad(FrameError),
    /// The stream or connection failed underneath.
    #[error("{0}")]
    Transport(String),
}

/// The opening bytes of a stream of `kind`: its header, then `first`
/// framed (at most `max` bytes).
pub fn opening<T: Serialize + ?Sized>(
    kind: StreamKind,
    first: &T,
    max: usize,
) -> Result<Vec<u8>, FrameError> {
    let mut bytes = kind.header().to_vec();
    frame::encode_into(first, max, &mut bytes)?;
    Ok(bytes)
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(
    send: &mut SendStream,
    msg: &T,
    max: usize,
) -> Result<(), StreamError> {
    let bytes = frame::encode(msg, max).map_err(StreamError::Bad)?;
    send.write_all(&bytes)
        .await
        .map_err(|e| StreamError::Transport(e.to_string()))
}

/// Reads one frame; `Ok(None)` if the stream ended cleanly before it.
pub async fn read_frame<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Option<T>, StreamError> {
    let mut prefix = [0u8; frame::PREFIX_LEN];
    match recv.read_exact(&mut prefix).await {
        Ok(()) => {}
        Err(quinn::ReadExactError::FinishedEarly(0)) => return Ok(None),
        Err(quinn::ReadExactError::FinishedEarly(n)) => {
            return Err(StreamError::Bad(FrameError::Malformed(format!(
                "stream ended {n} bytes into a length prefix"
            ))));
        }
        Err(quinn::ReadExactError::ReadError(e)) => {
            return Err(StreamError::Transport(e.to_string()));
        }
    }
    let len = frame::body_len(prefix, max).map_err(StreamError::Bad)?;
    let mut body = vec![0u8; len];
    recv.read_exact(&mut body).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(n) => StreamError::Bad(FrameError::Malformed(
            format!("stream ended {n} bytes into a {len}-byte frame"),
        )),
        quinn::ReadExactError::ReadError(e) => StreamError::Transport(e.to_string()),
    })?;
    frame::decode(&body).map(Some).map_err(StreamError::Bad)
}

/// Reads one frame within `patience`: `Ok(Some)` the frame; `Ok(None)`
/// nothing to do (the transport failed, or the peer was too slow and the
/// stream was stopped with `HandshakeTimeout`); `Err` a protocol
/// violation, described.
pub async fn read_header<T: DeserializeOwned>(
    recv: &mut RecvStream,
    max: usize,
    patience: Duration,
    what: &str,
) -> Result<Option<T>, Violation> {
    match within(patience, read_frame(recv, max)).await {
        Some(Ok(Some(header))) => Ok(Some(header)),
        Some(Ok(None)) => Err(Violation::new(format!("{what} ended before its header"))),
        Some(Err(StreamError::Bad(e))) => Err(Violation::new(format!("{what} header: {e}"))),
        Some(Err(StreamError::Transport(_))) => Ok(None),
        None => {
            let code = quicmesh_wire::CloseCode::HandshakeTimeout.code();
            let _ = recv.stop(quinn::VarInt::from_u32(code));
            Ok(None)
        }
    }
}

/// Reads a stream's kind header: the kind, or the unknown kind number.
pub(crate) async fn read_kind(
    recv: &mut RecvStream,
) -> Result<Result<StreamKind, u16>, StreamError> {
    let mut header = [0u8; 2];
    recv.read_exact(&mut header).await.map_err(|e| match e {
        quinn::ReadExactError::FinishedEarly(_) => StreamError::Bad(FrameError::Malformed(
            "stream ended inside its header".into(),
        )),
        quinn::ReadExactError::ReadError(e) => StreamError::Transport(e.to_string()),
    })?;
    Ok(StreamKind::parse(header))
}

/// Chunks taken from a stream in one read.
const CHUNKS_PER_READ: usize = 32;

/// The chunks one read took from a stream: up to 32 at once, so a large
/// body costs one lock of the connection (shared with the task that
/// drives it) per batch of packets, not per packet.
#[derive(Debug, Default)]
pub struct Chunks {
    taken: [Bytes; CHUNKS_PER_READ],
    n: usize,
    len: usize,
}

impl Chunks {
    /// Reads the next chunks of `recv` in order; `false` once the stream
    /// has ended (nothing was read).
    pub async fn read(&mut self, recv: &mut RecvStream) -> Result<bool, quinn::ReadError> {
        self.n = recv.read_chunks(&mut self.taken).await?.unwrap_or(0);
        self.len = self.taken[..self.n].iter().map(Bytes::len).sum();
        Ok(self.n > 0)
    }

    /// Bytes in the chunks of the last read.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the last read took nothing.
    pub fn is_empty(&self) -> bool {
        self.n == 0
    }

    /// Appends the last read's chunks to `body` and lets them go.
    pub fn append_to(&mut self, body: &mut Vec<u8>) {
        body.reserve(self.len);
        for chunk in &mut self.taken[..self.n] {
            body.extend_from_slice(chunk);
            *chunk = Bytes::new();
        }
        (self.n, self.len) = (0, 0);
    }
}

/// Reads the rest of `recv`, refusing more than `max` bytes. The chunks
/// are copied out as they arrive, so the copy overlaps the transfer
/// (quinn's `read_to_end` keeps them and, after the last one, zeroes a
/// buffer of the whole size and copies them in, which a caller waits for).
pub async fn read_to_end(
    recv: &mut RecvStream,
    max: usize,
) -> Result<Vec<u8>, quinn::ReadToEndError> {
    let mut body = Vec::new();
    let mut chunks = Chunks::default();
    while chunks.read(recv).await? {
        if body.len() + chunks.len() > max {
            return Err(quinn::ReadToEndError::TooLong);
        }
        chunks.append_to(&mut body);
    }
    Ok(body)
}

/// Runs `fut` with a deadline; `None` if it passed.
pub async fn within<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    tokio::time::timeout(d, fut).await.ok()
}
