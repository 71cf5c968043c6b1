//! The RPC handle: services served here, calls to peers, application
//! protocols.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use quicmesh_mesh::{Mesh, Peer, Router};
use quicmesh_wire::{AppHeader, LANE_MAX_BODY, MAX_HEADER_FRAME, NodeName, RpcMode, StreamKind};
use quinn::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::Semaphore;

use crate::app::{OpenError, ProtocolListener, Protocols};
use crate::callee::Callee;
use crate::client::{Call, Path};
use crate::codec::{decode_response, encode_request};
use crate::connections::Connections;
use crate::handlers::{AppStreams, CallStreams, LaneReplies, Lanes};
use crate::metrics::RpcMetrics;
use crate::service::Services;
use crate::{CallContext, Requests, Responses, RpcConfig, RpcError, Side, StreamingCall};
use crate::{RegisterError, check_name};

/// Service names starting with this belong to the node itself
/// (coordination); applications cannot register them.
pub const RESERVED_PREFIX: &str = "quicmesh.";

/// RPC on one node: register services, call them on peers, open
/// application streams. Cheap to clone; every clone is the same.
#[derive(Debug, Clone)]
pub struct Rpc {
    mesh: Mesh,
    callee: Arc<Callee>,
    config: RpcConfig,
}

impl Rpc {
    /// RPC over `mesh`'s connections, with `config`'s limits. Its streams
    /// are served once [`Rpc::route`]'s router is given to the mesh.
    pub fn new(mesh: Mesh, config: RpcConfig) -> Self {
        let tasks = mesh.tasks().clone();
        let callee = Callee {
            services: Services::default(),
            protocols: Protocols::default(),
            conns: Connections::new(
                config.max_inbound_per_peer,
                config.max_buffered_per_peer,
                tasks.clone(),
            ),
            buffered: Arc::new(Semaphore::new(config.max_buffered)),
            max_message: config.max_message,
            patience: mesh.config().handshake_timeout,
            tasks,
            stats: Default::default(),
        };
        Self {
            mesh,
            callee: Arc::new(callee),
            config,
        }
    }

    /// `router` with RPC's stream kinds added: calls, lanes, lane
    /// replies and application streams.
    pub fn route(&self, router: Router) -> Router {
        let callee = &self.callee;
        router
            .route(
                StreamKind::Rpc,
                CallStreams {
                    callee: callee.clone(),
                },
            )
            .route(
                StreamKind::RpcLane,
                Lanes {
                    callee: callee.clone(),
                },
            )
            .route(
                StreamKind::RpcReply,
                LaneReplies {
                    callee: callee.clone(),
                },
            )
            .route(
                StreamKind::App,
                AppStreams {
                    callee: callee.clone(),
                },
            )
    }

    /// The mesh RPC runs on.
    pub fn mesh(&self) -> &Mesh {
        &self.mesh
    }

    /// Bytes of request bodies buffered now, node-wide (at most
    /// `rpc.max_buffered`).
    pub fn buffered_bytes(&self) -> usize {
        self.config
            .max_buffered
            .saturating_sub(self.callee.buffered.available_permits())
    }

    /// What RPC measured: the calls this node made by service and
    /// outcome, with their latency, and the calls it refused.
    pub fn metrics(&self) -> RpcMetrics {
        self.callee.stats.snapshot()
    }

    /// The limits in force.
    pub fn config(&self) -> &RpcConfig {
        &self.config
    }

    /// Serves `handler` as `service` (see `quicmesh::Node::register`).
    /// Names starting with [`RESERVED_PREFIX`] are refused.
    pub fn register<F, Fut, Req, Resp, E>(
        &self,
        service: &str,
        handler: F,
    ) -> Result<(), RegisterError>
    where
        F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        not_reserved(service)?;
        self.callee.services.register(service, handler)
    }

    /// Serves one of the node's own services, whose name starts with
    /// [`RESERVED_PREFIX`] (any other is refused with `BadName`).
    pub fn register_reserved<F, Fut, Req, Resp, E>(
        &self,
        service: &str,
        handler: F,
    ) -> Result<(), RegisterError>
    where
        F: Fn(CallContext, Req) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<Resp, E>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        Resp: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        if !service.starts_with(RESERVED_PREFIX) {
            return Err(RegisterError::BadName(service.to_owned()));
        }
        self.callee.services.register(service, handler)
    }

    /// Serves a streaming `service` (see `quicmesh::Node::register_stream`).
    pub fn register_stream<F, Fut, Req, In, Out, E>(
        &self,
        service: &str,
        handler: F,
    ) -> Result<(), RegisterError>
    where
        F: Fn(CallContext, Req, Requests<In>, Responses<Out>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        Req: DeserializeOwned + Send + 'static,
        In: DeserializeOwned + Send + 'static,
        Out: Serialize + Send + 'static,
        E: std::fmt::Display + Send + 'static,
    {
        not_reserved(service)?;
        self.callee.services.register_stream(service, handler)
    }

    /// Stops serving `service`; calls in progress finish. `false` if it
    /// was not registered.
    pub fn unregister(&self, service: &str) -> bool {
        self.callee.services.unregister(service)
    }

    /// Calls `service` on `peer`, waiting at most `timeout`.
    pub async fn call<Req, Resp>(
        &self,
        peer: &NodeName,
        service: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body = encode_request(service, request)?;
        let reply = self
            .send(peer, service, body, timeout, RpcMode::Call)
            .await?;
        decode_response(service, &reply)
    }

    /// Sends `request` to `service` on `peer` without waiting for the
    /// handler (see `quicmesh::Node::cast`).
    pub async fn cast<Req>(
        &self,
        peer: &NodeName,
        service: &str,
        request: &Req,
    ) -> Result<(), RpcError>
    where
        Req: Serialize + ?Sized,
    {
        let body = encode_request(service, request)?;
        self.send(peer, service, body, self.config.timeout, RpcMode::Cast)
            .await
            .map(drop)
    }

    /// Calls `service` on every node in `peers` at once: one result per
    /// node, in the order given.
    pub async fn multicall<Req, Resp>(
        &self,
        peers: &[NodeName],
        service: &str,
        request: &Req,
        timeout: Duration,
    ) -> Vec<(NodeName, Result<Resp, RpcError>)>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let body = match encode_request(service, request) {
            Ok(b) => b,
            Err(e) => return peers.iter().map(|p| (p.clone(), Err(e.clone()))).collect(),
        };
        let mut calls = tokio::task::JoinSet::new();
        for (i, peer) in peers.iter().cloned().enumerate() {
            let (rpc, body, service) = (self.clone(), body.clone(), service.to_owned());
            calls.spawn(async move {
                let r = rpc
                    .send(&peer, &service, body, timeout, RpcMode::Call)
                    .await;
                (i, r)
            });
        }
        let mut results: Vec<Option<Result<Vec<u8>, RpcError>>> = vec![None; peers.len()];
        while let Some(joined) = calls.join_next().await {
            if let Ok((i, r)) = joined {
                results[i] = Some(r);
            }
        }
        peers
            .iter()
            .zip(results)
            .map(|(peer, r)| {
                let r = r.unwrap_or_else(|| {
                    Err(RpcError::NodeDown {
                        peer: peer.clone(),
                        detail: "the call's task failed".to_owned(),
                    })
                });
                (
                    peer.clone(),
                    r.and_then(|body| decode_response(service, &body)),
                )
            })
            .collect()
    }

    /// Starts a streaming call (see `quicmesh::Node::call_stream`).
    pub async fn call_stream<Req, In, Out>(
        &self,
        peer: &NodeName,
        service: &str,
        request: &Req,
    ) -> Result<StreamingCall<In, Out>, RpcError>
    where
        Req: Serialize + ?Sized,
        In: Serialize,
        Out: DeserializeOwned,
    {
        let max = self.config.max_message;
        let item = quicmesh_wire::encode_item(request, max).map_err(|_| RpcError::TooLarge {
            side: Side::Request,
            service: service.to_owned(),
            limit: max as u64,
        })?;
        let connected = self.connected(peer)?;
        let call = Call {
            peer,
            service,
            timeout: self.config.timeout,
            mode: RpcMode::Stream,
            max,
        };
        let (send, recv) = call.open_stream(&connected, &item).await?;
        Ok(StreamingCall::new(
            send,
            recv,
            peer.clone(),
            service.to_owned(),
            max,
        ))
    }

    /// The request path of every call and cast: `body` to `service` on
    /// `peer`, and for a call the response body. Counted for the metrics.
    async fn send(
        &self,
        peer: &NodeName,
        service: &str,
        body: Bytes,
        timeout: Duration,
        mode: RpcMode,
    ) -> Result<Vec<u8>, RpcError> {
        let started = Instant::now();
        let result = self
            .send_uncounted(peer, service, body, timeout, mode)
            .await;
        self.callee.stats.call(service, &result, started.elapsed());
        result
    }

    async fn send_uncounted(
        &self,
        peer: &NodeName,
        service: &str,
        body: Bytes,
        timeout: Duration,
        mode: RpcMode,
    ) -> Result<Vec<u8>, RpcError> {
        let max = self.config.max_message;
        if body.len() > max {
            return Err(RpcError::TooLarge {
                side: Side::Request,
                service: service.to_owned(),
                limit: max as u64,
            });
        }
        let connected = self.connected(peer)?;
        let call = Call {
            peer,
            service,
            timeout,
            mode,
            max,
        };
        let callee = &self.callee;
        // A call too large for the lane goes on the peer's bulk path once
        // it is open, so small calls never wait behind it.
        let bulk = if body.len() > LANE_MAX_BODY {
            self.mesh.bulk(&connected).zip(self.mesh.bulk_runtime())
        } else {
            None
        };
        let path = Path {
            main: &connected,
            bulk: bulk.as_ref().map(|(link, runtime)| (link, *runtime)),
        };
        call.run(path, &callee.conns, &callee.tasks, body).await
    }

    fn connected(&self, peer: &NodeName) -> Result<Peer, RpcError> {
        self.mesh
            .peer(peer)
            .ok_or_else(|| RpcError::NotConnected { peer: peer.clone() })
    }

    /// Registers an application protocol (see `quicmesh::Node::protocol`).
    pub fn protocol(&self, name: &str) -> Result<ProtocolListener, RegisterError> {
        self.callee.protocols.register(name)
    }

    /// Opens a bidirectional stream of `protocol` to `peer`.
    pub async fn open_bi(
        &self,
        peer: &NodeName,
        protocol: &str,
    ) -> Result<(SendStream, RecvStream), OpenError> {
        let (conn, opening) = self.app_stream(peer, protocol)?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| down(peer, &e))?;
        send.write_all(&opening).await.map_err(|e| down(peer, &e))?;
        Ok((send, recv))
    }

    /// Opens a unidirectional stream of `protocol` to `peer`.
    pub async fn open_uni(&self, peer: &NodeName, protocol: &str) -> Result<SendStream, OpenError> {
        let (conn, opening) = self.app_stream(peer, protocol)?;
        let mut send = conn.open_uni().await.map_err(|e| down(peer, &e))?;
        send.write_all(&opening).await.map_err(|e| down(peer, &e))?;
        Ok(send)
    }

    /// The connection to `peer` and the opening of a `protocol` stream.
    fn app_stream(
        &self,
        peer: &NodeName,
        protocol: &str,
    ) -> Result<(quinn::Connection, Vec<u8>), OpenError> {
        let bad_name = || OpenError::BadName(protocol.to_owned());
        check_name(protocol).map_err(|_| bad_name())?;
        let header = AppHeader {
            protocol: protocol.to_owned(),
        };
        let opening = quicmesh_mesh::io::opening(StreamKind::App, &header, MAX_HEADER_FRAME)
            .map_err(|_| bad_name())?;
        let conn = self
            .mesh
            .peer(peer)
            .ok_or_else(|| OpenError::NotConnected(peer.clone()))?;
        Ok((conn.connection().clone(), opening))
    }
}

/// Names starting with [`RESERVED_PREFIX`] are the node's own.
fn not_reserved(service: &str) -> Result<(), RegisterError> {
    if service.starts_with(RESERVED_PREFIX) {
        return Err(RegisterError::Reserved(service.to_owned()));
    }
    Ok(())
}

fn down(peer: &NodeName, e: &dyn std::fmt::Display) -> OpenError {
    OpenError::NodeDown {
        peer: peer.clone(),
        detail: e.to_string(),
    }
}
