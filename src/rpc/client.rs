//! The caller's side: small calls on the lane, large ones on a stream each.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quicmesh_wire::{
    CloseCode, LANE_MAX_BODY, MAX_HEADER_FRAME, NodeName, RpcFailure, RpcHeader, RpcMode,
    RpcStatus, StreamKind, frame,
};
use quinn::{ReadToEndError, RecvStream, SendStream, VarInt, WriteError};

use super::lane::{Lane, Reply};
use super::{RpcError, Side};
use crate::membership::{LinkHandle, Membership};
use crate::transport::{self, StreamError};

/// A call's streams; unless the call completed, dropping them resets
/// both, which tells the callee to drop the handler.
struct CallStreams {
    send: SendStream,
    recv: RecvStream,
    done: bool,
}

impl Drop for CallStreams {
    fn drop(&mut self) {
        if !self.done {
            let code = VarInt::from_u32(CloseCode::Cancelled.code());
            let _ = self.send.reset(code);
            let _ = self.recv.stop(code);
        }
    }
}

impl Membership {
    /// Sends `body` to `service` on `peer`; for a call, waits for the
    /// response body. Everything under `timeout`.
    pub(crate) async fn call_raw(
        self: &Arc<Self>,
        peer: &NodeName,
        service: &str,
        body: Bytes,
        timeout: Duration,
        mode: RpcMode,
    ) -> Result<Vec<u8>, RpcError> {
        let max = self.config.rpc.max_message;
        if body.len() > max {
            return Err(RpcError::TooLarge {
                side: Side::Request,
                service: service.to_owned(),
                limit: max as u64,
            });
        }
        let link = self
            .link(peer)
            .ok_or_else(|| RpcError::NotConnected { peer: peer.clone() })?;
        let call = Call {
            peer,
            service,
            timeout,
            mode,
            max,
        };
        let exchange = async {
            if body.len() <= LANE_MAX_BODY {
                call.on_lane(self, &link, &body).await
            } else {
                call.on_stream(&link.conn, body).await
            }
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(RpcError::Timeout {
                peer: peer.clone(),
                service: service.to_owned(),
                after: timeout,
            }),
        }
    }

    /// Opens a streaming call: header and first item sent, nothing awaited
    /// from the callee (its refusals arrive as the stream's failure item).
    pub(crate) async fn open_stream(
        self: &Arc<Self>,
        peer: &NodeName,
        service: &str,
        first_item: &[u8],
    ) -> Result<(SendStream, RecvStream), RpcError> {
        let conn = self
            .link(peer)
            .ok_or_else(|| RpcError::NotConnected { peer: peer.clone() })?
            .conn;
        let timeout = self.config.rpc.timeout;
        let header = RpcHeader {
            service: service.to_owned(),
            timeout_ms: u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX),
            mode: RpcMode::Stream,
        };
        let mut head = StreamKind::Rpc.header().to_vec();
        head.extend(
            frame::encode(&header, MAX_HEADER_FRAME)
                .map_err(|e| self.protocol(peer, &e.to_string()))?,
        );
        let down = |detail: String| RpcError::NodeDown {
            peer: peer.clone(),
            detail,
        };
        let open = async {
            let (mut send, recv) = conn.open_bi().await.map_err(|e| down(e.to_string()))?;
            send.write_all(&head)
                .await
                .map_err(|e| down(e.to_string()))?;
            send.write_all(first_item)
                .await
                .map_err(|e| down(e.to_string()))?;
            Ok((send, recv))
        };
        tokio::time::timeout(timeout, open)
            .await
            .unwrap_or_else(|_| {
                Err(RpcError::Timeout {
                    peer: peer.clone(),
                    service: service.to_owned(),
                    after: timeout,
                })
            })
    }

    fn protocol(&self, peer: &NodeName, detail: &str) -> RpcError {
        RpcError::Protocol {
            peer: peer.clone(),
            detail: detail.to_owned(),
        }
    }
}

/// One unary call or cast on its way.
struct Call<'a> {
    peer: &'a NodeName,
    service: &'a str,
    timeout: Duration,
    mode: RpcMode,
    max: usize,
}

impl Call<'_> {
    fn timeout_ms(&self) -> u32 {
        u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX)
    }

    fn down(&self, detail: String) -> RpcError {
        RpcError::NodeDown {
            peer: self.peer.clone(),
            detail,
        }
    }

    fn protocol(&self, detail: &str) -> RpcError {
        RpcError::Protocol {
            peer: self.peer.clone(),
            detail: detail.to_owned(),
        }
    }

    fn too_large_response(&self) -> RpcError {
        RpcError::TooLarge {
            side: Side::Response,
            service: self.service.to_owned(),
            limit: self.max as u64,
        }
    }

    /// The call's outcome for a status other than `Ok`.
    fn failed(&self, status: RpcStatus) -> RpcError {
        match status {
            RpcStatus::Failed(f) => failure(self.peer, self.service, self.timeout, f),
            other => self.protocol(&format!("unknown status {other:?}")),
        }
    }

    /// Reads a response body that is the rest of `recv`.
    async fn read_body(&self, recv: &mut RecvStream) -> Result<Vec<u8>, RpcError> {
        match recv.read_to_end(self.max).await {
            Ok(body) => Ok(body),
            Err(ReadToEndError::TooLong) => Err(self.too_large_response()),
            Err(ReadToEndError::Read(e)) => Err(self.down(e.to_string())),
        }
    }

    /// A small call, on the lane of `link` (opened by the first one).
    async fn on_lane(
        &self,
        m: &Arc<Membership>,
        link: &LinkHandle,
        body: &[u8],
    ) -> Result<Vec<u8>, RpcError> {
        let lane = link
            .lane
            .get_or_try_init(|| {
                let (m, peer, owner) = (m.clone(), self.peer.clone(), link.clone());
                let violation = move |detail| m.protocol_violation(&peer, &owner, detail);
                Lane::open(&link.conn, violation)
            })
            .await
            .map_err(|e| self.down(e.to_string()))?;
        let reply = lane
            .call(self.service, self.timeout_ms(), self.mode, body)
            .await
            .map_err(|e| self.down(e))?;
        match reply {
            Reply::Inline(RpcStatus::Ok, body) if body.len() > self.max => {
                Err(self.too_large_response())
            }
            Reply::Inline(RpcStatus::Ok, body) => Ok(body),
            Reply::Streamed(RpcStatus::Ok, mut recv) => self.read_body(&mut recv).await,
            Reply::Inline(status, _) | Reply::Streamed(status, _) => Err(self.failed(status)),
            Reply::Down(detail) => Err(self.down(detail)),
            Reply::Broken(detail) => Err(self.protocol(&detail)),
        }
    }

    /// A large call, on a stream of its own.
    async fn on_stream(&self, conn: &quinn::Connection, body: Bytes) -> Result<Vec<u8>, RpcError> {
        let header = RpcHeader {
            service: self.service.to_owned(),
            timeout_ms: self.timeout_ms(),
            mode: self.mode,
        };
        let mut head = StreamKind::Rpc.header().to_vec();
        head.extend(
            frame::encode(&header, MAX_HEADER_FRAME).map_err(|e| RpcError::Decode {
                side: Side::Request,
                service: self.service.to_owned(),
                detail: e.to_string(),
            })?,
        );
        let (send, recv) = conn.open_bi().await.map_err(|e| self.down(e.to_string()))?;
        let _ = send.set_priority(super::priority_for(body.len()));
        let mut s = CallStreams {
            send,
            recv,
            done: false,
        };
        match write_request(&mut s.send, &head, body).await {
            Ok(()) => {}
            // The callee stopped reading: its verdict explains why.
            Err(WriteError::Stopped(_)) => {}
            Err(e) => return Err(self.down(e.to_string())),
        }
        if self.mode == RpcMode::Cast {
            // Delivery goes on after the handle is dropped.
            s.done = true;
            return Ok(Vec::new());
        }
        let status = match transport::read_frame::<RpcStatus>(&mut s.recv, MAX_HEADER_FRAME).await {
            Ok(Some(status)) => status,
            Ok(None) => return Err(self.protocol("reply ended before its status")),
            Err(StreamError::Bad(e)) => return Err(self.protocol(&e.to_string())),
            Err(StreamError::Transport(e)) => return Err(self.down(e)),
        };
        let result = match status {
            RpcStatus::Ok => self.read_body(&mut s.recv).await,
            other => Err(self.failed(other)),
        };
        s.done = true;
        result
    }
}

async fn write_request(send: &mut SendStream, head: &[u8], body: Bytes) -> Result<(), WriteError> {
    send.write_all(head).await?;
    // Handed over without a copy.
    send.write_chunk(body).await?;
    // Finishing can only fail if the stream was reset already.
    let _ = send.finish();
    Ok(())
}

pub(super) fn failure(
    peer: &NodeName,
    service: &str,
    timeout: Duration,
    f: RpcFailure,
) -> RpcError {
    let (peer, service) = (peer.clone(), service.to_owned());
    match f {
        RpcFailure::NoSuchService => RpcError::NoSuchService { peer, service },
        RpcFailure::Remote(message) => RpcError::Remote {
            peer,
            service,
            message,
        },
        RpcFailure::Panicked(message) => RpcError::Panicked {
            peer,
            service,
            message,
        },
        RpcFailure::BadRequest(detail) => RpcError::Decode {
            side: Side::Request,
            service,
            detail,
        },
        RpcFailure::TooLarge { limit, response } => RpcError::TooLarge {
            side: if response {
                Side::Response
            } else {
                Side::Request
            },
            service,
            limit,
        },
        RpcFailure::Overloaded => RpcError::Overloaded { peer },
        RpcFailure::Timeout => RpcError::Timeout {
            peer,
            service,
            after: timeout,
        },
        other => RpcError::Protocol {
            peer,
            detail: format!("unknown failure {other:?}"),
        },
    }
}
