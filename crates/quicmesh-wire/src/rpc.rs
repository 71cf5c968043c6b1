//! RPC and application-protocol stream headers.
//!
//! An RPC stream (kind `Rpc`) carries one call:
//!
//! ```text
//! caller → callee: [kind 0x0003] [frame: RpcHeader] [request body …] FIN
//! callee → caller: [frame: RpcStatus] [response body …] FIN   (calls only)
//! ```
//!
//! Bodies are postcard-encoded application values, unframed: the stream's
//! end delimits them, so no size prefix caps them; each side enforces its
//! configured message limit while reading.
//!
//! A streaming call (mode `Stream`) sends items as frames instead, each a
//! tag byte and a postcard value ([`encode_item`], [`decode_item`]):
//!
//! ```text
//! caller → callee: [kind] [frame: RpcHeader] [item: request] [item …] FIN
//! callee → caller: [frame: RpcStatus] [item …] [failure item]? FIN
//! ```
//!
//! Small calls (request body up to [`LANE_MAX_BODY`]) share a long-lived
//! lane per caller and connection (kind `RpcLane`) instead, each a frame
//! with a call id; the callee answers on the same stream in any order, or,
//! for a response body over [`LANE_MAX_BODY`], on a unidirectional stream
//! of its own (kind `RpcReply`) so it never holds up the lane:
//!
//! ```text
//! caller → callee: [kind 0x0005] [frame: LaneRequest] [frame: LaneRequest] …
//! callee → caller: [frame: LaneReply] [frame: LaneReply] …
//! callee → caller: [kind 0x0006] [frame: ReplyHead] [response body …] FIN
//! ```
//!
//! An application stream (kind `App`) starts with [`AppHeader`] and then
//! belongs to the application.

use serde::{Deserialize, Serialize};

use crate::FrameError;

/// Largest header or status frame, in bytes (service names, error texts).
pub const MAX_HEADER_FRAME: usize = 64 * 1024;

/// What a caller asks for. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RpcHeader {
    /// The service's registered name.
    pub service: String,
    /// How long the caller will wait, in milliseconds, from when it sent
    /// the request: the callee stops working on the call after that.
    pub timeout_ms: u32,
    /// Call (a reply is expected) or cast (none is sent).
    pub mode: RpcMode,
}

/// Whether the caller waits for a reply. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcMode {
    /// The callee replies with [`RpcStatus`] and the response body.
    Call,
    /// Fire and forget: the callee replies nothing.
    Cast,
    /// A streaming call: items flow both ways until each side finishes.
    Stream,
}

/// The callee's verdict, followed by the response body when `Ok`.
/// Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcStatus {
    /// The handler returned a response; its body follows.
    Ok,
    /// The call failed; no body follows.
    Failed(RpcFailure),
}

/// Why a call failed on the callee's side. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum RpcFailure {
    /// No service of that name is registered (the handler did not run).
    NoSuchService,
    /// The handler returned an error, with its message.
    Remote(String),
    /// The handler panicked, with the panic message; the callee goes on.
    Panicked(String),
    /// The request body did not decode as the handler's request type (the
    /// handler did not run).
    BadRequest(String),
    /// The request or the response exceeded the callee's message limit.
    TooLarge {
        /// The limit, in bytes.
        limit: u64,
        /// Whether it was the response (the handler ran) or the request.
        response: bool,
    },
    /// The callee has too many calls from this caller in progress (the
    /// handler did not run).
    Overloaded,
    /// The handler did not finish before the caller's deadline.
    Timeout,
}

/// Largest request or response body carried inside a lane frame; larger
/// ones travel on streams of their own.
pub const LANE_MAX_BODY: usize = 16 * 1024;

/// Largest lane frame: a body of [`LANE_MAX_BODY`] and the call's fields.
pub const LANE_MAX_FRAME: usize = LANE_MAX_BODY + 1024;

/// A caller's message on a lane. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LaneRequest<'a> {
    /// A call or a cast, identified by an id unique on this lane.
    Call {
        /// Chosen by the caller; a reply carries it back.
        id: u64,
        /// The service's registered name.
        service: &'a str,
        /// As in [`RpcHeader::timeout_ms`].
        timeout_ms: u32,
        /// [`RpcMode::Call`] or [`RpcMode::Cast`] (no reply is sent).
        mode: RpcMode,
        /// The request body: postcard bytes of the request type.
        #[serde(with = "bytes")]
        body: &'a [u8],
    },
    /// The caller no longer waits for call `id`: drop its handler.
    Cancel {
        /// The call's id.
        id: u64,
    },
}

/// The callee's answer to a lane call, on the lane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LaneReply<'a> {
    /// The call's id.
    pub id: u64,
    /// The verdict.
    pub status: RpcStatus,
    /// The response body when `status` is `Ok`, else empty.
    #[serde(with = "bytes")]
    pub body: &'a [u8],
}

/// The start of an `RpcReply` stream: which lane call it answers; the
/// response body follows when `status` is `Ok`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplyHead {
    /// The call's id on the caller's lane.
    pub id: u64,
    /// The verdict.
    pub status: RpcStatus,
}

/// Byte strings as one length and the bytes (not element by element).
mod bytes {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(b: &&[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(b)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<&'de [u8], D::Error> {
        <&'de [u8]>::deserialize(d)
    }
}

/// Tag of a stream item frame holding a value.
const ITEM_VALUE: u8 = 0;
/// Tag of a stream item frame holding the callee's failure (the last item).
const ITEM_FAILED: u8 = 1;

/// One item of a streaming call, decoded.
#[derive(Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Item<'a> {
    /// A value: postcard bytes of the item type.
    Value(&'a [u8]),
    /// The callee failed; nothing follows.
    Failed(RpcFailure),
}

/// Encodes a stream item frame holding `value`, refusing one over `max`.
pub fn encode_item<T: Serialize + ?Sized>(value: &T, max: usize) -> Result<Vec<u8>, FrameError> {
    let mut out = vec![0, 0, 0, 0, ITEM_VALUE];
    crate::frame::append(value, &mut out).map_err(|e| FrameError::Malformed(e.to_string()))?;
    finish_item(out, max)
}

/// Encodes the failure item that ends a streaming call's responses.
pub fn encode_item_failure(failure: &RpcFailure) -> Vec<u8> {
    let mut out = vec![0, 0, 0, 0, ITEM_FAILED];
    crate::frame::append(failure, &mut out)
        .ok()
        .and_then(|()| finish_item(out, MAX_HEADER_FRAME).ok())
        .unwrap_or_default()
}

fn finish_item(mut out: Vec<u8>, max: usize) -> Result<Vec<u8>, FrameError> {
    let len = out.len() - crate::frame::PREFIX_LEN;
    if len > max {
        return Err(FrameError::TooLarge { len, max });
    }
    let len32 = u32::try_from(len).map_err(|_| FrameError::TooLarge { len, max })?;
    out[..crate::frame::PREFIX_LEN].copy_from_slice(&len32.to_be_bytes());
    Ok(out)
}

/// Decodes a stream item frame's body (without its length prefix).
pub fn decode_item(body: &[u8]) -> Result<Item<'_>, FrameError> {
    match body.split_first() {
        Some((&ITEM_VALUE, value)) => Ok(Item::Value(value)),
        Some((&ITEM_FAILED, rest)) => crate::frame::decode(rest).map(Item::Failed),
        Some((tag, _)) => Err(FrameError::Malformed(format!(
            "unknown stream item tag {tag}"
        ))),
        None => Err(FrameError::Malformed("empty stream item".into())),
    }
}

/// The start of an application-protocol stream. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppHeader {
    /// The protocol's registered name.
    pub protocol: String,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    #[test]
    fn golden_bytes() {
        let h = RpcHeader {
            service: "echo".into(),
            timeout_ms: 5000,
            mode: RpcMode::Call,
        };
        let f = frame::encode(&h, MAX_HEADER_FRAME).unwrap();
        assert_eq!(f, [0, 0, 0, 8, 4, b'e', b'c', b'h', b'o', 0x88, 0x27, 0]);
        assert_eq!(frame::encode(&RpcStatus::Ok, 64).unwrap(), [0, 0, 0, 1, 0]);
        let f = frame::encode(
            &RpcStatus::Failed(RpcFailure::TooLarge {
                limit: 1024,
                response: true,
            }),
            64,
        )
        .unwrap();
        assert_eq!(f, [0, 0, 0, 5, 1, 4, 0x80, 0x08, 1]);
        for failure in [
            RpcFailure::NoSuchService,
            RpcFailure::Remote("x".into()),
            RpcFailure::Panicked("p".into()),
            RpcFailure::BadRequest("b".into()),
            RpcFailure::Overloaded,
            RpcFailure::Timeout,
        ] {
            let s = RpcStatus::Failed(failure);
            let f = frame::encode(&s, 64).unwrap();
            assert_eq!(
                frame::decode_from::<RpcStatus>(&f, 64).unwrap().unwrap().0,
                s
            );
        }
        let f = frame::encode(
            &AppHeader {
                protocol: "kv".into(),
            },
            64,
        )
        .unwrap();
        assert_eq!(f, [0, 0, 0, 3, 2, b'k', b'v']);
    }

    #[test]
    fn lane_golden_bytes() {
        let call = LaneRequest::Call {
            id: 300,
            service: "kv",
            timeout_ms: 1000,
            mode: RpcMode::Cast,
            body: &[9, 8],
        };
        let f = frame::encode(&call, LANE_MAX_FRAME).unwrap();
        assert_eq!(
            f,
            [
                0, 0, 0, 12, 0, 0xac, 0x02, 2, b'k', b'v', 0xe8, 0x07, 1, 2, 9, 8
            ]
        );
        let (back, used) = frame::decode_from::<LaneRequest<'_>>(&f, LANE_MAX_FRAME)
            .unwrap()
            .unwrap();
        assert_eq!((back, used), (call, f.len()));
        let cancel = frame::encode(&LaneRequest::Cancel { id: 5 }, 64).unwrap();
        assert_eq!(cancel, [0, 0, 0, 2, 1, 5]);
        let reply = LaneReply {
            id: 1,
            status: RpcStatus::Ok,
            body: b"ok",
        };
        let f = frame::encode(&reply, LANE_MAX_FRAME).unwrap();
        assert_eq!(f, [0, 0, 0, 5, 1, 0, 2, b'o', b'k']);
        assert_eq!(frame::decode::<LaneReply<'_>>(&f[4..]).unwrap(), reply);
        let head = ReplyHead {
            id: 2,
            status: RpcStatus::Failed(RpcFailure::Overloaded),
        };
        let f = frame::encode(&head, 64).unwrap();
        assert_eq!(f, [0, 0, 0, 3, 2, 1, 5]);
    }
}
