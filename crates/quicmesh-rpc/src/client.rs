//! The caller's side: small calls on the lane, large ones on a stream each
//! (on the bulk path once it is open).

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use quicmesh_mesh::io::{self, StreamError};
use quicmesh_mesh::{Peer, Tasks};
use quicmesh_wire::{
    CloseCode, LANE_MAX_BODY, MAX_HEADER_FRAME, NodeName, RpcFailure, RpcHeader, RpcMode,
    RpcStatus, StreamKind,
};
use quinn::{ReadToEndError, RecvStream, SendStream, VarInt, WriteError};
use tokio::runtime::Handle;
use tokio_util::task::AbortOnDropHandle;

use crate::connections::Connections;
use crate::lane::{Lane, Reply};
use crate::{RpcError, Side, priority_for};

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

/// The connections a call may take to its peer: the main one, and the
/// bulk path for large calls once it is open, with the runtime its
/// transfers run on.
#[derive(Clone, Copy)]
pub(crate) struct Path<'a> {
    pub(crate) main: &'a Peer,
    pub(crate) bulk: Option<(&'a Peer, &'static Handle)>,
}

/// A [`Call`] that owns its fields, to run on another runtime.
struct OwnedCall {
    peer: NodeName,
    service: String,
    timeout: Duration,
    mode: RpcMode,
    max: usize,
}

impl OwnedCall {
    fn call(&self) -> Call<'_> {
        Call {
            peer: &self.peer,
            service: &self.service,
            timeout: self.timeout,
            mode: self.mode,
            max: self.max,
        }
    }
}

/// One call, cast or streaming call on its way to one peer.
pub(crate) struct Call<'a> {
    pub(crate) peer: &'a NodeName,
    pub(crate) service: &'a str,
    /// The whole call's deadline, from now.
    pub(crate) timeout: Duration,
    pub(crate) mode: RpcMode,
    /// Largest request or response body.
    pub(crate) max: usize,
}

impl Call<'_> {
    /// Sends `body` (at most `max` bytes: checked by the caller) to the
    /// service on `peer`; for a call, waits for the response body.
    /// Everything under the timeout. Small requests go on the connection's
    /// lane (opened by the first), large ones on a stream each: on the
    /// peer's bulk path once it is open, else on the main connection.
    pub(crate) async fn run(
        &self,
        path: Path<'_>,
        conns: &Arc<Connections>,
        tasks: &Tasks,
        body: Bytes,
    ) -> Result<Vec<u8>, RpcError> {
        let exchange = async {
            if body.len() <= LANE_MAX_BODY {
                let peer = path.main;
                let state = conns.of(peer);
                let lane = state
                    .lane
                    .get_or_try_init(|| Lane::open(peer, tasks))
                    .await
                    .map_err(|e| self.down(e.to_string()))?;
                self.on_lane(lane, &body).await
            } else {
                match path.bulk {
                    Some((link, runtime)) => self.on_bulk(link, runtime, body).await,
                    None => self.on_stream(path.main.connection(), body).await,
                }
            }
        };
        match tokio::time::timeout(self.timeout, exchange).await {
            Ok(result) => result,
            Err(_) => Err(self.timed_out()),
        }
    }

    /// Opens a streaming call: header and first item sent, nothing
    /// awaited from the callee (its refusals arrive as the stream's
    /// failure item).
    pub(crate) async fn open_stream(
        &self,
        peer: &Peer,
        first_item: &[u8],
    ) -> Result<(SendStream, RecvStream), RpcError> {
        let head = self.opening()?;
        let open = async {
            let (mut send, recv) = peer
                .connection()
                .open_bi()
                .await
                .map_err(|e| self.down(e.to_string()))?;
            send.write_all(&head)
                .await
                .map_err(|e| self.down(e.to_string()))?;
            send.write_all(first_item)
                .await
                .map_err(|e| self.down(e.to_string()))?;
            Ok((send, recv))
        };
        tokio::time::timeout(self.timeout, open)
            .await
            .unwrap_or_else(|_| Err(self.timed_out()))
    }

    fn timeout_ms(&self) -> u32 {
        u32::try_from(self.timeout.as_millis()).unwrap_or(u32::MAX)
    }

    fn timed_out(&self) -> RpcError {
        RpcError::Timeout {
            peer: self.peer.clone(),
            service: self.service.to_owned(),
            after: self.timeout,
        }
    }

    /// The stream's opening: its kind and the call's header.
    fn opening(&self) -> Result<Vec<u8>, RpcError> {
        let header = RpcHeader {
            service: self.service.to_owned(),
            timeout_ms: self.timeout_ms(),
            mode: self.mode,
        };
        io::opening(StreamKind::Rpc, &header, MAX_HEADER_FRAME).map_err(|e| RpcError::Decode {
            side: Side::Request,
            service: self.service.to_owned(),
            detail: e.to_string(),
        })
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
        match io::read_to_end(recv, self.max).await {
            Ok(body) => Ok(body),
            Err(ReadToEndError::TooLong) => Err(self.too_large_response()),
            Err(ReadToEndError::Read(e)) => Err(self.down(e.to_string())),
        }
    }

    /// A small call, on the connection's lane.
    async fn on_lane(&self, lane: &Lane, body: &[u8]) -> Result<Vec<u8>, RpcError> {
        match lane
            .call(self.service, self.timeout_ms(), self.mode, body)
            .await
        {
            Reply::Inline(RpcStatus::Ok, body) if body.len() > self.max => {
                Err(self.too_large_response())
            }
            Reply::Inline(RpcStatus::Ok, body) => Ok(body),
            Reply::Streamed(RpcStatus::Ok, mut recv) => self.read_body(&mut recv).await,
            Reply::Inline(status, _) | Reply::Streamed(status, _) => Err(self.failed(status)),
            Reply::Down(detail) => Err(self.down(detail)),
            Reply::Broken(detail) => Err(self.protocol(&detail)),
            Reply::Unsent(detail) => Err(RpcError::Decode {
                side: Side::Request,
                service: self.service.to_owned(),
                detail,
            }),
        }
    }

    /// A large call on the bulk path: the transfer (writing the request,
    /// reading the response) runs on the bulk runtime's threads, so its
    /// copies yield to small calls as its packets do. Dropping the call
    /// aborts it there, which resets its stream.
    async fn on_bulk(
        &self,
        link: &Peer,
        runtime: &Handle,
        body: Bytes,
    ) -> Result<Vec<u8>, RpcError> {
        let owned = OwnedCall {
            peer: self.peer.clone(),
            service: self.service.to_owned(),
            timeout: self.timeout,
            mode: self.mode,
            max: self.max,
        };
        let conn = link.connection().clone();
        let transfer = runtime.spawn(async move { owned.call().on_stream(&conn, body).await });
        match AbortOnDropHandle::new(transfer).await {
            Ok(result) => result,
            Err(e) => Err(self.down(format!("the bulk transfer ended: {e}"))),
        }
    }

    /// A large call, on a stream of its own.
    async fn on_stream(&self, conn: &quinn::Connection, body: Bytes) -> Result<Vec<u8>, RpcError> {
        let head = self.opening()?;
        let (send, recv) = conn.open_bi().await.map_err(|e| self.down(e.to_string()))?;
        let _ = send.set_priority(priority_for(body.len()));
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
        let status = match io::read_frame::<RpcStatus>(&mut s.recv, MAX_HEADER_FRAME).await {
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

pub(crate) fn failure(
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
