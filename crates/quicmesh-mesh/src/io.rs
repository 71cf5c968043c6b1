//! Frames on QUIC streams: what every layer that reads or writes a
//! stream shares, so a malformed frame is always told apart from a
//! transport failure.

use std::time::Duration;

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

/// Runs `fut` with a deadline; `None` if it passed.
pub async fn within<F: Future>(d: Duration, fut: F) -> Option<F::Output> {
    tokio::time::timeout(d, fut).await.ok()
}
