//! The node facade: builder, start, the handle, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quicmesh_identity::{CertFiles, Cookie, Identity};
use quicmesh_wire::{NameError, NodeAddr, NodeName};
use tracing::info;

use bytes::Bytes;
use quicmesh_wire::RpcMode;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::app::{OpenError, ProtocolListener};
use crate::config::{ConfigError, IdentityConfig, NodeConfig};
use crate::coord::{
    Coord, Election, Groups, LockError, LockGuard, LockOptions, RESERVED_PREFIX, Registry,
};
use crate::discovery::{self, LocalNode, Strategy, Topology};
use crate::error::{ConnectError, PingError, StartError, WaitError};
use crate::event::EventStream;
use crate::membership::Membership;
use crate::rpc::{
    CallContext, ENCODE_START, RegisterError, Requests, Responses, RpcError, Side, StreamingCall,
};
use crate::status::Status;
use crate::transport;

/// A running quicmesh node. Cheap to clone; every clone is the same node.
///
/// Dropping the last clone without [`Node::shutdown`] stops the node
/// abruptly (peers see a connection close, not a graceful shutdown).
///
/// ```no_run
/// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// let node = quicmesh::Node::builder()
///     .name("app1@127.0.0.1")
///     .listen("127.0.0.1:4370".parse()?)
///     .cookie("secret cookie")
///     .seed("app2@127.0.0.1:4371".parse()?)
///     .start()
///     .await?;
/// node.wait_for_nodes(1, Duration::from_secs(10)).await?;
/// println!("{}", node.status());
/// node.shutdown().await;
/// # Ok(()) }
/// ```
#[derive(Clone, Debug)]
pub struct Node {
    owner: Arc<Owner>,
}

/// Stops the node's tasks when the last `Node` handle goes away (the tasks
/// themselves hold the `Membership`, not this).
#[derive(Debug)]
struct Owner(Arc<Membership>, Arc<Coord>);

impl Drop for Owner {
    fn drop(&mut self) {
        self.0.close_all("node dropped");
    }
}

impl Node {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    fn m(&self) -> &Arc<Membership> {
        &self.owner.0
    }

    fn coord(&self) -> &Arc<Coord> {
        &self.owner.1
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.m().me
    }

    /// The address the node's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.m().local_addr
    }

    /// The address other nodes dial to reach this one: its name and port.
    pub fn addr(&self) -> NodeAddr {
        NodeAddr::new(self.name().clone(), self.local_addr().port())
    }

    /// A short fingerprint of the public key of the CA this node trusts:
    /// the same on every node of a cluster, safe to log and advertise (the
    /// `mdns` strategy's cluster tag).
    pub fn ca_fingerprint(&self) -> &str {
        self.m().identity.ca_fingerprint()
    }

    /// Changes every time a node starts.
    pub fn incarnation(&self) -> u64 {
        self.m().incarnation
    }

    /// Connects to `addr` once (like `Node.connect/1`); `Ok` when the node
    /// is up, also if it already was. The nodes it knows are then
    /// connected too. Use [`Node::add_seed`] to keep re-dialling it.
    pub async fn connect(&self, addr: &NodeAddr) -> Result<(), ConnectError> {
        self.m().dial_addr(addr).await
    }

    /// Adds `addr` to the seeds: dialled now and re-dialled with backoff
    /// whenever it is down, until [`Node::disconnect`].
    pub fn add_seed(&self, addr: NodeAddr) {
        if self.m().add_seed(addr.clone()) {
            self.m().spawn_keeper(addr, None);
        }
    }

    /// Closes the connection to `node` (it sees `DisconnectedByPeer`) and
    /// stops re-dialling it if it was a seed. `false` if it was not up.
    pub fn disconnect(&self, node: &NodeName) -> bool {
        self.m().disconnect(node)
    }

    /// The nodes connected now, sorted.
    pub fn nodes(&self) -> Vec<NodeName> {
        self.m().nodes()
    }

    /// A stream of `NodeUp` / `NodeDown` events from now on.
    pub fn events(&self) -> EventStream {
        EventStream {
            rx: self.m().subscribe(),
        }
    }

    /// Round trip of an application-level ping over a fresh stream.
    pub async fn ping(&self, node: &NodeName, timeout: Duration) -> Result<Duration, PingError> {
        self.m().ping(node, timeout).await
    }

    /// This node and every peer it knows.
    pub fn status(&self) -> Status {
        self.m().status()
    }

    /// Waits until at least `n` other nodes are connected.
    pub async fn wait_for_nodes(&self, n: usize, timeout: Duration) -> Result<(), WaitError> {
        self.m().wait_for_nodes(n, timeout).await
    }

    /// Serves `handler` as `service`: a call decodes its request as `Req`
    /// (postcard), runs the handler and sends back its `Resp`, or its error
    /// as text ([`RpcError::Remote`]). A panic in the handler is caught
    /// ([`RpcError::Panicked`]); the handler's future is dropped when the
    /// caller cancels or its deadline passes. Services can be added and
    /// removed while the node runs; a name can be registered once.
    ///
    /// ```no_run
    /// # async fn demo(node: quicmesh::Node) -> Result<(), quicmesh::RegisterError> {
    /// node.register("add", |_ctx, (a, b): (i64, i64)| async move {
    ///     Ok::<_, std::convert::Infallible>(a + b)
    /// })?;
    /// # Ok(()) }
    /// ```
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
        reserved(service)?;
        self.m().services.register(service, handler)
    }

    /// Stops serving `service`; calls in progress finish. `false` if it
    /// was not registered.
    pub fn unregister(&self, service: &str) -> bool {
        self.m().services.unregister(service)
    }

    /// Calls `service` on `peer` with the default timeout (`rpc.timeout`).
    pub async fn call<Req, Resp>(
        &self,
        peer: &NodeName,
        service: &str,
        request: &Req,
    ) -> Result<Resp, RpcError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_timeout(peer, service, request, self.m().config.rpc.timeout)
            .await
    }

    /// Calls `service` on `peer`, waiting at most `timeout`; the callee
    /// stops working on it after that too. Dropping the future cancels
    /// the call: its stream is reset and the handler's future dropped.
    pub async fn call_timeout<Req, Resp>(
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
        let body = encode(service, request)?;
        let reply = self
            .m()
            .call_raw(peer, service, body, timeout, RpcMode::Call)
            .await?;
        decode(service, &reply)
    }

    /// Sends `request` to `service` on `peer` without waiting for the
    /// handler: `Ok` once the request is handed to the transport. Refused
    /// at once when `peer` is not connected.
    pub async fn cast<Req>(
        &self,
        peer: &NodeName,
        service: &str,
        request: &Req,
    ) -> Result<(), RpcError>
    where
        Req: Serialize + ?Sized,
    {
        let body = encode(service, request)?;
        let timeout = self.m().config.rpc.timeout;
        self.m()
            .call_raw(peer, service, body, timeout, RpcMode::Cast)
            .await
            .map(drop)
    }

    /// Calls `service` on every node in `peers` at once, like
    /// `erpc:multicall`: one result per node, in the order given.
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
        let body = match encode(service, request) {
            Ok(b) => b,
            Err(e) => return peers.iter().map(|p| (p.clone(), Err(e.clone()))).collect(),
        };
        let mut calls = tokio::task::JoinSet::new();
        for (i, peer) in peers.iter().cloned().enumerate() {
            let (m, body, service) = (self.m().clone(), body.clone(), service.to_owned());
            calls.spawn(async move {
                let r = m
                    .call_raw(&peer, &service, body, timeout, RpcMode::Call)
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
                (peer.clone(), r.and_then(|body| decode(service, &body)))
            })
            .collect()
    }

    /// Serves a streaming `service`: the handler gets the caller's initial
    /// `Req`, the caller's further items ([`Requests`]) and a sink for its
    /// own items ([`Responses`]); the call ends when it returns. Items flow
    /// under QUIC flow control, so neither side buffers more than a few;
    /// `rpc.max_message` bounds each item, not the whole stream. Returning
    /// an error ends the caller's stream with [`RpcError::Remote`].
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
        reserved(service)?;
        self.m().services.register_stream(service, handler)
    }

    /// Starts a streaming call to `service` on `peer` with `request`; send
    /// more items and read the handler's with the returned
    /// [`StreamingCall`]. Refusals (no such service, overloaded) arrive as
    /// its first item. No timeout applies once it is open: drop it to
    /// cancel.
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
        let max = self.m().config.rpc.max_message;
        let item = quicmesh_wire::encode_item(request, max).map_err(|_| RpcError::TooLarge {
            side: Side::Request,
            service: service.to_owned(),
            limit: max as u64,
        })?;
        let (send, recv) = self.m().open_stream(peer, service, &item).await?;
        Ok(StreamingCall::new(
            send,
            recv,
            peer.clone(),
            service.to_owned(),
            max,
        ))
    }

    /// Registers an application protocol: the returned listener accepts
    /// the streams peers open for it with [`Node::open_bi`] /
    /// [`Node::open_uni`]. Dropping the listener unregisters it.
    pub fn protocol(&self, name: &str) -> Result<ProtocolListener, RegisterError> {
        self.m().protocols.register(name)
    }

    /// Opens a bidirectional stream of `protocol` to `peer`. A peer that
    /// does not serve `protocol` resets it with
    /// [`CloseCode::UnknownProtocol`](crate::wire::CloseCode) (see
    /// [`is_unknown_protocol`](crate::is_unknown_protocol)).
    pub async fn open_bi(
        &self,
        peer: &NodeName,
        protocol: &str,
    ) -> Result<(quinn::SendStream, quinn::RecvStream), OpenError> {
        let conn = self.app_conn(peer, protocol)?;
        let (mut send, recv) = conn.open_bi().await.map_err(|e| down(peer, &e))?;
        send.write_all(&app_header(protocol)?)
            .await
            .map_err(|e| down(peer, &e))?;
        Ok((send, recv))
    }

    /// Opens a unidirectional stream of `protocol` to `peer`.
    pub async fn open_uni(
        &self,
        peer: &NodeName,
        protocol: &str,
    ) -> Result<quinn::SendStream, OpenError> {
        let conn = self.app_conn(peer, protocol)?;
        let mut send = conn.open_uni().await.map_err(|e| down(peer, &e))?;
        send.write_all(&app_header(protocol)?)
            .await
            .map_err(|e| down(peer, &e))?;
        Ok(send)
    }

    fn app_conn(&self, peer: &NodeName, protocol: &str) -> Result<quinn::Connection, OpenError> {
        if crate::rpc::check_name(protocol).is_err() {
            return Err(OpenError::BadName(protocol.to_owned()));
        }
        self.m()
            .link(peer)
            .map(|l| l.conn)
            .ok_or_else(|| OpenError::NotConnected(peer.clone()))
    }

    /// Takes the cluster lock of `resource` on every connected node
    /// (`:global.set_lock`), retrying for up to 30 s; released when the
    /// guard is dropped, and by every node if this node goes down. See
    /// [`LockGuard::token`] for the fencing token.
    pub async fn lock(&self, resource: &str) -> Result<LockGuard, LockError> {
        self.lock_with(resource, &LockOptions::default()).await
    }

    /// Takes a cluster lock with other options: the node set, retries,
    /// timeout.
    pub async fn lock_with(
        &self,
        resource: &str,
        options: &LockOptions,
    ) -> Result<LockGuard, LockError> {
        crate::coord::lock_resource(self.coord(), resource, options).await
    }

    /// Runs `work` under the cluster lock of `resource` (`:global.trans`),
    /// giving it the fencing token; the lock is released when it ends.
    pub async fn trans<F, Fut, T>(&self, resource: &str, work: F) -> Result<T, LockError>
    where
        F: FnOnce(u64) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(resource).await?;
        let result = work(guard.token()).await;
        guard.release().await;
        Ok(result)
    }

    /// The global name registry, shared by every connected node.
    pub fn registry(&self) -> Registry {
        Registry {
            node: self.clone(),
            coord: self.coord().clone(),
        }
    }

    /// The process groups, shared by every connected node.
    pub fn groups(&self) -> Groups {
        Groups {
            coord: self.coord().clone(),
        }
    }

    /// The leader election called `name`.
    pub fn election(&self, name: &str) -> Election {
        Election {
            coord: self.coord().clone(),
            name: name.to_owned(),
        }
    }

    /// Shuts down gracefully: peers see `NodeDown { reason: Shutdown }` at
    /// once. Idempotent; later calls wait for the first to finish. The UDP
    /// port is released when the last handle to the node is dropped.
    pub async fn shutdown(&self) {
        self.m().shutdown().await;
    }

    /// Whether [`Node::shutdown`] has been called.
    pub fn is_shutdown(&self) -> bool {
        self.m().is_shutdown()
    }
}

/// Configures and starts a [`Node`].
#[derive(Debug, Default)]
#[must_use = "a builder does nothing until start() is awaited"]
pub struct Builder {
    config: NodeConfig,
    name_error: Option<NameError>,
    topologies: Vec<Topology>,
}

impl Builder {
    /// A builder starting from a whole configuration (e.g. a TOML file).
    pub fn from_config(config: NodeConfig) -> Self {
        Self {
            config,
            name_error: None,
            topologies: Vec::new(),
        }
    }

    /// The node's name, `name@host`. Checked here; an invalid name makes
    /// [`Builder::start`] fail with the parse error.
    pub fn name(mut self, name: impl AsRef<str>) -> Self {
        match name.as_ref().parse() {
            Ok(n) => self.config.name = Some(n),
            Err(e) => self.name_error = Some(e),
        }
        self
    }

    /// The UDP address to listen on (port 0 picks a free one).
    pub fn listen(mut self, addr: SocketAddr) -> Self {
        self.config.listen = Some(addr);
        self
    }

    /// Cookie mode with this cookie.
    pub fn cookie(mut self, cookie: impl Into<String>) -> Self {
        self.config.identity = IdentityConfig::Cookie {
            cookie: Some(cookie.into()),
            cookie_file: None,
        };
        self
    }

    /// Certificate mode with these files.
    pub fn certificates(mut self, files: CertFiles) -> Self {
        self.config.identity = IdentityConfig::Certificate {
            ca: files.ca,
            cert: files.cert,
            key: files.key,
        };
        self
    }

    /// A hidden node: never propagated to other nodes.
    pub fn hidden(mut self, hidden: bool) -> Self {
        self.config.hidden = hidden;
        self
    }

    /// Adds a seed: dialled at start and re-dialled while absent.
    pub fn seed(mut self, addr: NodeAddr) -> Self {
        self.config.seeds.push(addr);
        self
    }

    /// Adds a discovery topology from code: `strategy` is polled at its
    /// interval and every candidate it reports is dialled and kept; with
    /// `prune_after`, a candidate no poll reported for that long is
    /// forgotten (see [`crate::discovery`]). Topologies from the config's
    /// `topologies` run too.
    pub fn topology(
        mut self,
        name: &str,
        strategy: impl Strategy,
        prune_after: Option<Duration>,
    ) -> Self {
        self.topologies.push(Topology {
            name: name.to_owned(),
            strategy: Arc::new(strategy),
            prune_after,
        });
        self
    }

    /// Heartbeat interval and failure-detection timeout.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat.interval = interval;
        self.config.heartbeat.timeout = timeout;
        self
    }

    /// Changes any other setting.
    pub fn configure(mut self, f: impl FnOnce(&mut NodeConfig)) -> Self {
        f(&mut self.config);
        self
    }

    /// Loads the identity, binds the socket and starts dialling seeds.
    pub async fn start(self) -> Result<Node, StartError> {
        if let Some(e) = self.name_error {
            return Err(StartError::Config(ConfigError::BadName(e)));
        }
        let config = self.config;
        config.validate()?;
        let name = config.name.clone().ok_or(ConfigError::MissingName)?;
        let listen = config.listen_addr();
        let identity = load_identity(&config, name).await?;
        let transport = transport::transport_config(&config);
        let endpoint = transport::bind(&config, &identity, transport.clone())?;
        let m = Membership::new(config, identity, endpoint, transport).map_err(|source| {
            StartError::Bind {
                addr: listen,
                source,
            }
        })?;
        // Strategies start once the node's port and CA are known (mDNS
        // advertises them), before anything is dialled.
        let local = LocalNode::new(m.me.clone(), m.local_addr, m.identity.ca_fingerprint());
        let mut topologies =
            Topology::from_configs(&m.config.topologies, &local).map_err(|(topology, e)| {
                StartError::Config(ConfigError::Topology {
                    topology,
                    detail: e.to_string(),
                })
            })?;
        topologies.extend(self.topologies);
        info!(
            node = %m.me,
            listen = %m.local_addr,
            ca = %m.identity.ca_fingerprint(),
            "node started"
        );
        let coord = Coord::start(&m);
        m.start();
        for topology in topologies {
            discovery::spawn(&m, topology);
        }
        Ok(Node {
            owner: Arc::new(Owner(m, coord)),
        })
    }
}

async fn load_identity(config: &NodeConfig, name: NodeName) -> Result<Identity, StartError> {
    let validity = config.leaf_validity;
    let identity = config.identity.clone();
    // Deriving the cookie CA is deliberately slow (argon2): off the runtime.
    let joined = tokio::task::spawn_blocking(move || match identity {
        IdentityConfig::Cookie {
            cookie,
            cookie_file,
        } => {
            let cookie = match cookie {
                Some(c) => Cookie::new(c)?,
                None => Cookie::from_env_or_file(cookie_file.as_deref())?,
            };
            Identity::from_cookie(name, &cookie, validity)
        }
        IdentityConfig::Certificate { ca, cert, key } => {
            Identity::from_files(name, &CertFiles { ca, cert, key })
        }
    })
    .await;
    match joined {
        Ok(r) => Ok(r?),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

fn encode<Req: Serialize + ?Sized>(service: &str, request: &Req) -> Result<Bytes, RpcError> {
    let body = postcard::to_extend(request, Vec::with_capacity(ENCODE_START));
    body.map(Bytes::from).map_err(|e| RpcError::Decode {
        side: Side::Request,
        service: service.to_owned(),
        detail: format!("request did not encode: {e}"),
    })
}

fn decode<Resp: DeserializeOwned>(service: &str, body: &[u8]) -> Result<Resp, RpcError> {
    quicmesh_wire::frame::decode(body).map_err(|e| RpcError::Decode {
        side: Side::Response,
        service: service.to_owned(),
        detail: e.to_string(),
    })
}

/// Service names starting with `quicmesh.` are the node's own.
fn reserved(service: &str) -> Result<(), RegisterError> {
    if service.starts_with(RESERVED_PREFIX) {
        return Err(RegisterError::Reserved(service.to_owned()));
    }
    Ok(())
}

fn app_header(protocol: &str) -> Result<Vec<u8>, OpenError> {
    let mut bytes = quicmesh_wire::StreamKind::App.header().to_vec();
    let header = quicmesh_wire::AppHeader {
        protocol: protocol.to_owned(),
    };
    bytes.extend(
        quicmesh_wire::frame::encode(&header, quicmesh_wire::MAX_HEADER_FRAME)
            .map_err(|_| OpenError::BadName(protocol.to_owned()))?,
    );
    Ok(bytes)
}

fn down(peer: &NodeName, e: &dyn std::fmt::Display) -> OpenError {
    OpenError::NodeDown {
        peer: peer.clone(),
        detail: e.to_string(),
    }
}
