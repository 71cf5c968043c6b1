//! Request and response bodies: postcard values, encoded once and decoded
//! with errors that name the service and the side.

use bytes::Bytes;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::{ENCODE_START, RpcError, Side};

/// Encodes a request body for `service`.
pub(crate) fn encode_request<Req: Serialize + ?Sized>(
    service: &str,
    request: &Req,
) -> Result<Bytes, RpcError> {
    let body = postcard::to_extend(request, Vec::with_capacity(ENCODE_START));
    body.map(Bytes::from).map_err(|e| RpcError::Decode {
        side: Side::Request,
        service: service.to_owned(),
        detail: format!("request did not encode: {e}"),
    })
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
