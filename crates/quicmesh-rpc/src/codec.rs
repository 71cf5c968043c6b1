//! Request and response bodies: postcard values, encoded once and decoded
//! with errors that name the service and the side.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{RpcError, Side};

/// Encodes a request body for `service`.
pub(crate) fn encode_request<Req: Serialize + ?Sized>(
    service: &str,
    request: &Req,
) -> Result<Bytes, RpcError> {
    encode(request)
        .map(Bytes::from)
        .map_err(|e| RpcError::Decode {
            side: Side::Request,
            service: service.to_owned(),
            detail: format!("request did not encode: {e}"),
        })
}

/// Encodes a request or response body into a buffer of its exact size
/// (measured first: cheap next to encoding, and a large body is neither
/// copied as its buffer grows nor held in one twice its size).
pub(crate) fn encode<T: Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, postcard::Error> {
    let mut body = Vec::with_capacity(postcard::experimental::serialized_size(value)?);
    quicmesh_wire::frame::append(value, &mut body)?;
    Ok(body)
}

/// Decodes a response body of `service`.
pub(crate) fn decode_response<Resp: DeserializeOwned>(
    service: &str,
    body: &[u8],
) -> Result<Resp, RpcError> {
    quicmesh_wire::frame::decode(body).map_err(|e| RpcError::Decode {
        side: Side::Response,
        service: service.to_owned(),
        detail: e.to_string(),
    })
}
