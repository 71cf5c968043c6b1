//! The node facade: builder, start, the handle, shutdown.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use quicmesh_consensus::{Consensus, ConsensusConfig};
use quicmesh_coord::{Coord, CoordCounters, Groups, LockError, LockOptions, Token};
use quicmesh_discovery::{Discovery, LocalNode, Strategy, Topology};
use quicmesh_identity::{CertFiles, Cookie, Identity, IdentityError};
use quicmesh_mesh::{ConnectError, EventStream, Mesh, PingError, Router, Status, WaitError};
use quicmesh_rpc::{
    CallContext, OpenError, ProtocolListener, RegisterError, Requests, Responses, Rpc, RpcError,
    StreamingCall,
};
use quicmesh_wire::{NameError, NodeAddr, NodeName};
use quinn::{RecvStream, SendStream};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tracing::info;

use crate::config::{ConfigError, Coordination, IdentityConfig, NodeConfig};
use crate::coordination::{self, Election, Leading, LockGuard, Registry};
use crate::error::StartError;
use crate::metrics::{self, Measured};

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
    layers: Arc<Layers>,
}

/// The layers of one running node, each a handle on the one below. When
/// the last `Node` handle goes away they stop the node's tasks (the tasks
/// themselves hold the mesh, not this).
#[derive(Debug)]
struct Layers {
    mesh: Mesh,
    rpc: Rpc,
    coord: Arc<Coord>,
    /// Consensus mode's Raft voter or client, if the mode is on.
    consensus: Option<Consensus>,
    /// The elections this node leads in consensus mode.
    leading: Leading,
    /// The registry events of consensus mode: none are ever sent.
    quiet: tokio::sync::broadcast::Sender<quicmesh_coord::RegistryEvent>,
    /// Where the identity is read from again on reload; the lock also
    /// makes reloads take turns.
    identity: tokio::sync::Mutex<IdentityConfig>,
}

impl Measured for Layers {
    fn sources(&self) -> metrics::Sources<'_> {
        metrics::Sources {
            mesh: &self.mesh,
            rpc: &self.rpc,
            coord: &self.coord,
            consensus: self.consensus.as_ref(),
        }
    }
}

impl Drop for Layers {
    fn drop(&mut self) {
        self.mesh.close("node dropped");
    }
}

impl Node {
    /// A builder with default settings.
    pub fn builder() -> Builder {
        Builder::default()
    }

    pub(crate) fn mesh(&self) -> &Mesh {
        &self.layers.mesh
    }

    pub(crate) fn rpc(&self) -> &Rpc {
        &self.layers.rpc
    }

    pub(crate) fn coord(&self) -> &Arc<Coord> {
        &self.layers.coord
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        self.mesh().name()
    }

    /// The address the node's UDP socket is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.mesh().local_addr()
    }

    /// The address other nodes dial to reach this one: its name and port.
    pub fn addr(&self) -> NodeAddr {
        NodeAddr::new(self.name().clone(), self.local_addr().port())
    }

    /// A short fingerprint of the public key of the CA this node trusts
    /// (the first of a bundle; the current cookie's): the same on every
    /// node of a cluster, safe to log and advertise (the `mdns` strategy's
    /// cluster tag, taken at start). A reload may change it.
    pub fn ca_fingerprint(&self) -> String {
        self.mesh().identity().ca_fingerprint()
    }

    /// Reads the identity again from where the configuration says (the
    /// CA bundle, certificate, key and revocation list files; the cookie
    /// and previous cookie), as `quicmesh node` does on `SIGHUP`. New
    /// connections use it at once; established ones stay up, except those
    /// of peers whose certificate is now revoked: they are dropped with
    /// `DownReason::Revoked`. On error nothing changes; the error names
    /// the file that was refused.
    pub async fn reload_identity(&self) -> Result<Reloaded, IdentityError> {
        let config = self.layers.identity.lock().await;
        self.reload(&config).await
    }

    /// As [`Node::reload_identity`], from another identity configuration
    /// (e.g. a new cookie with the old one as `previous_cookie`); later
    /// reloads read this one.
    pub async fn reload_identity_from(
        &self,
        identity: IdentityConfig,
    ) -> Result<Reloaded, IdentityError> {
        let mut config = self.layers.identity.lock().await;
        let reloaded = self.reload(&identity).await?;
        *config = identity;
        Ok(reloaded)
    }

    async fn reload(&self, identity: &IdentityConfig) -> Result<Reloaded, IdentityError> {
        let (mesh, identity) = (self.mesh().clone(), identity.clone());
        // Deriving a cookie CA is deliberately slow (argon2): off the runtime.
        let joined = tokio::task::spawn_blocking(move || {
            match IdentitySource::read(identity)? {
                IdentitySource::Cookies { cookie, previous } => {
                    mesh.identity().reload_cookies(&cookie, previous.as_ref())?
                }
                IdentitySource::Files(files) => mesh.identity().reload_files(&files)?,
            }
            Ok::<_, IdentityError>(mesh)
        })
        .await;
        let mesh = match joined {
            Ok(r) => r?,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        };
        let revoked = mesh.drop_revoked();
        let ca_fingerprint = mesh.identity().ca_fingerprint();
        info!(node = %mesh.name(), ca = %ca_fingerprint, revoked = revoked.len(), "identity reloaded");
        Ok(Reloaded {
            ca_fingerprint,
            revoked,
        })
    }

    /// Changes every time a node starts.
    pub fn incarnation(&self) -> u64 {
        self.mesh().incarnation()
    }

    /// Connects to `addr` once (like `Node.connect/1`); `Ok` when the node
    /// is up, also if it already was. The nodes it knows are then
    /// connected too. Use [`Node::add_seed`] to keep re-dialling it.
    pub async fn connect(&self, addr: &NodeAddr) -> Result<(), ConnectError> {
        self.mesh().connect(addr).await
    }

    /// Adds `addr` to the seeds: dialled now and re-dialled with backoff
    /// whenever it is down, until [`Node::disconnect`].
    pub fn add_seed(&self, addr: NodeAddr) {
        self.mesh().add_seed(addr, None);
    }

    /// Closes the connection to `node` (it sees `DisconnectedByPeer`) and
    /// stops re-dialling it if it was a seed. `false` if it was not up.
    pub fn disconnect(&self, node: &NodeName) -> bool {
        self.mesh().disconnect(node)
    }

    /// The nodes connected now, sorted.
    pub fn nodes(&self) -> Vec<NodeName> {
        self.mesh().nodes()
    }

    /// A stream of `NodeUp` / `NodeDown` events from now on.
    pub fn events(&self) -> EventStream {
        self.mesh().events()
    }

    /// Round trip of an application-level ping over a fresh stream.
    pub async fn ping(&self, node: &NodeName, timeout: Duration) -> Result<Duration, PingError> {
        self.mesh().ping(node, timeout).await
    }

    /// This node and every peer it knows.
    pub fn status(&self) -> Status {
        self.mesh().status()
    }

    /// What coordination refused from its peers (forged claims, clocks out
    /// of bounds, announcements from non-holders, names and locks past
    /// their caps) and the locks this node lost, since it started.
    pub fn coordination_counters(&self) -> CoordCounters {
        self.coord().counters()
    }

    /// Adds this node's metrics to `registry`, the application's own (the
    /// library keeps none): peers by state, handshakes and authentication
    /// failures, node ups and downs by reason, heartbeat RTT, bytes and
    /// streams, refusals by limit, RPC calls by service and outcome with
    /// their latency, lock attempts and waits, registry size and leader
    /// changes, every name starting with `quicmesh_` (the README lists
    /// them). They are read from the node at each scrape; the registry
    /// does not keep the node running, and encodes nothing for it once it
    /// is gone. Call it once per node and registry: a second call would
    /// encode every family twice.
    ///
    /// ```no_run
    /// # async fn demo(node: quicmesh::Node) -> Result<(), std::fmt::Error> {
    /// use quicmesh::prometheus_client::{encoding::text::encode, registry::Registry};
    /// let mut registry = Registry::default();
    /// node.register_metrics(&mut registry);
    /// let mut text = String::new();
    /// encode(&mut text, &registry)?; // serve this at /metrics
    /// # Ok(()) }
    /// ```
    pub fn register_metrics(&self, registry: &mut prometheus_client::registry::Registry) {
        metrics::register(registry, Arc::downgrade(&self.layers));
    }

    /// Bytes of RPC request bodies this node holds now, from every peer
    /// (at most `rpc.max_buffered`, and `rpc.max_buffered_per_peer` from
    /// one; a call past either is refused with [`RpcError::Overloaded`]).
    pub fn buffered_bytes(&self) -> usize {
        self.rpc().buffered_bytes()
    }

    /// Waits until at least `n` other nodes are connected.
    pub async fn wait_for_nodes(&self, n: usize, timeout: Duration) -> Result<(), WaitError> {
        self.mesh().wait_for_nodes(n, timeout).await
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
        self.rpc().register(service, handler)
    }

    /// Stops serving `service`; calls in progress finish. `false` if it
    /// was not registered.
    pub fn unregister(&self, service: &str) -> bool {
        self.rpc().unregister(service)
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
        self.call_timeout(peer, service, request, self.rpc().config().timeout)
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
        self.rpc().call(peer, service, request, timeout).await
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
        self.rpc().cast(peer, service, request).await
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
        self.rpc().multicall(peers, service, request, timeout).await
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
        self.rpc().register_stream(service, handler)
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
        self.rpc().call_stream(peer, service, request).await
    }

    /// Registers an application protocol: the returned listener accepts
    /// the streams peers open for it with [`Node::open_bi`] /
    /// [`Node::open_uni`]. Dropping the listener unregisters it.
    pub fn protocol(&self, name: &str) -> Result<ProtocolListener, RegisterError> {
        self.rpc().protocol(name)
    }

    /// Opens a bidirectional stream of `protocol` to `peer`. A peer that
    /// does not serve `protocol` resets it with a code for which
    /// [`is_unknown_protocol`](crate::is_unknown_protocol) is true.
    pub async fn open_bi(
        &self,
        peer: &NodeName,
        protocol: &str,
    ) -> Result<(SendStream, RecvStream), OpenError> {
        self.rpc().open_bi(peer, protocol).await
    }

    /// Opens a unidirectional stream of `protocol` to `peer`.
    pub async fn open_uni(&self, peer: &NodeName, protocol: &str) -> Result<SendStream, OpenError> {
        self.rpc().open_uni(peer, protocol).await
    }

    /// Takes the cluster lock of `resource`, waiting up to 30 s; released
    /// when the guard is dropped. Global mode (`:global.set_lock`): taken
    /// on every connected node, and released by every node if this node
    /// goes down. Consensus mode: granted by the Raft group to this node's
    /// session, and released when the session ends; on the minority side
    /// of a partition it is never granted and fails with
    /// [`LockError::NoQuorum`] (or [`LockError::Timeout`] while another
    /// node holds it). See [`LockGuard::token`] for the fencing token.
    pub async fn lock(&self, resource: &str) -> Result<LockGuard, LockError> {
        self.lock_with(resource, &LockOptions::default()).await
    }

    /// Takes a cluster lock with other options: the timeout (both modes);
    /// the node set and the retries (global mode). In consensus mode the
    /// node's session waits in the lock's queue until the timeout (at most
    /// a year: a longer one, as `Duration::MAX`, counts as a year), so
    /// `retries` is ignored, and a node set is refused with
    /// [`LockError::GlobalOnly`].
    pub async fn lock_with(
        &self,
        resource: &str,
        options: &LockOptions,
    ) -> Result<LockGuard, LockError> {
        match self.consensus() {
            None => self
                .coord()
                .lock(resource, options)
                .await
                .map(LockGuard::global),
            Some(_) if options.nodes.is_some() => Err(LockError::GlobalOnly { option: "nodes" }),
            Some(c) => {
                // A year at most: `Duration::MAX` would overflow the deadline.
                let timeout = options.timeout.min(coordination::LONGEST_WAIT);
                match c.lock(resource, timeout).await {
                    Ok(guard) => Ok(LockGuard::consensus(guard, resource)),
                    Err(e) => Err(coordination::lock_error(resource, e)),
                }
            }
        }
    }

    /// Runs `work` under the cluster lock of `resource` (`:global.trans`),
    /// giving it the fencing token; the lock is released when it ends.
    /// Taken as [`Node::lock`] takes it, in either mode.
    pub async fn trans<F, Fut, T>(&self, resource: &str, work: F) -> Result<T, LockError>
    where
        F: FnOnce(Token) -> Fut,
        Fut: Future<Output = T>,
    {
        let guard = self.lock(resource).await?;
        let result = work(guard.token()).await;
        guard.release().await;
        Ok(result)
    }

    /// The cluster-wide name registry: in global mode shared by every
    /// connected node, in consensus mode agreed by the Raft group (see
    /// [`Registry`]).
    pub fn registry(&self) -> Registry {
        if let Some(c) = self.consensus() {
            let quiet = self.layers.quiet.clone();
            return Registry::consensus(self.clone(), c.clone(), quiet);
        }
        // A registry handle keeps its node running, as a Node clone does.
        let node: Arc<dyn std::any::Any + Send + Sync> = self.layers.clone();
        Registry::global(self.coord().registry(Some(node)))
    }

    /// The process groups, shared by every connected node.
    pub fn groups(&self) -> Groups {
        self.coord().groups()
    }

    /// The leader election called `name`: in global mode agreed among
    /// the connected nodes, in consensus mode by the Raft group (see
    /// [`Election`]).
    pub fn election(&self, name: &str) -> Election {
        match self.consensus() {
            None => Election::global(self.coord().election(name), name),
            Some(c) => Election::consensus(
                c.clone(),
                name,
                self.layers.leading.clone(),
                self.mesh().tasks().clone(),
            ),
        }
    }

    /// Shuts down gracefully: peers see `NodeDown { reason: Shutdown }` at
    /// once. Idempotent; later calls wait for the first to finish. The UDP
    /// port is released when the last handle to the node is dropped.
    pub async fn shutdown(&self) {
        // Consensus first, while the mesh still carries its last requests
        // (closing the session releases what it held).
        if let Some(c) = &self.layers.consensus {
            c.shutdown().await;
        }
        self.mesh().shutdown().await;
    }

    /// Consensus mode's own handle (`coordination = "consensus"`), for
    /// what only that mode has: the voters and their changes
    /// ([`Consensus::membership`]), the group's status, the session, stale
    /// local reads. Locks, elections and names are taken through
    /// [`Node::lock`], [`Node::election`] and [`Node::registry`], which
    /// use the Raft group in this mode. `None` in global mode.
    pub fn consensus(&self) -> Option<&Consensus> {
        self.layers.consensus.as_ref()
    }

    /// Whether [`Node::shutdown`] has been called.
    pub fn is_shutdown(&self) -> bool {
        self.mesh().is_shutdown()
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
            previous_cookie: None,
            previous_cookie_file: None,
        };
        self
    }

    /// Certificate mode with these files.
    pub fn certificates(mut self, files: CertFiles) -> Self {
        self.config.identity = IdentityConfig::Certificate {
            ca: files.ca,
            cert: files.cert,
            key: files.key,
            crl: files.crl,
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
        self.topologies
            .push(Topology::new(name, Arc::new(strategy), prune_after));
        self
    }

    /// Heartbeat interval and failure-detection timeout.
    pub fn heartbeat(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.heartbeat.interval = interval;
        self.config.heartbeat.timeout = timeout;
        self
    }

    /// Consensus mode with `config` (its voters, data directory, TTL): the
    /// node starts a Raft voter if it is one of the voters, else a client
    /// of them; see [`Node::consensus`].
    pub fn consensus(mut self, config: ConsensusConfig) -> Self {
        self.config.coordination = Coordination::Consensus;
        self.config.consensus = Some(config);
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
        let identity = load_identity(&config, name).await?;
        let mesh = Mesh::bind(config.mesh(), identity).map_err(StartError::bind)?;
        // Strategies start once the node's port and CA are known (mDNS
        // advertises them), before anything is dialled.
        let ca = mesh.identity().ca_fingerprint();
        let local = LocalNode::new(mesh.name().clone(), mesh.local_addr(), ca.clone());
        let mut topologies =
            Topology::from_configs(&config.topologies, &local).map_err(|(topology, e)| {
                StartError::Config(ConfigError::Topology {
                    topology,
                    detail: e.to_string(),
                })
            })?;
        topologies.extend(self.topologies);
        info!(node = %mesh.name(), listen = %mesh.local_addr(), %ca, "node started");
        // Each layer registers its services and stream kinds before the
        // mesh accepts its first stream.
        let rpc = Rpc::new(mesh.clone(), config.rpc);
        let coord = Coord::start(&rpc);
        let consensus = match (&config.coordination, &config.consensus) {
            (Coordination::Consensus, Some(c)) => Some(Consensus::start(&rpc, c.clone()).await?),
            _ => None,
        };
        crate::admin::serve(&rpc, &coord, consensus.as_ref());
        mesh.start(rpc.route(Router::default()));
        let discovery = Discovery::new(mesh.clone());
        for topology in topologies {
            discovery.spawn(topology);
        }
        Ok(Node {
            layers: Arc::new(Layers {
                mesh,
                rpc,
                coord,
                consensus,
                leading: Leading::default(),
                quiet: tokio::sync::broadcast::channel(1).0,
                identity: tokio::sync::Mutex::new(config.identity),
            }),
        })
    }
}

async fn load_identity(config: &NodeConfig, name: NodeName) -> Result<Identity, StartError> {
    let validity = config.leaf_validity;
    let identity = config.identity.clone();
    // Deriving the cookie CA is deliberately slow (argon2): off the runtime.
    let joined = tokio::task::spawn_blocking(move || match IdentitySource::read(identity)? {
        IdentitySource::Cookies { cookie, previous } => {
            Identity::from_cookies(name, &cookie, previous.as_ref(), validity)
        }
        IdentitySource::Files(files) => Identity::from_files(name, &files),
    })
    .await;
    match joined {
        Ok(r) => Ok(r?),
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// What [`Node::reload_identity`] changed.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Reloaded {
    /// The fingerprint of the CA now trusted first.
    pub ca_fingerprint: String,
    /// Peers dropped because their certificate is now revoked.
    pub revoked: Vec<NodeName>,
}

/// An identity configuration with its cookies read, or its file names.
enum IdentitySource {
    Cookies {
        cookie: Cookie,
        previous: Option<Cookie>,
    },
    Files(CertFiles),
}

impl IdentitySource {
    /// Reads the cookies (files, then the environment, as documented on
    /// [`IdentityConfig`]); certificate files are read by the identity.
    fn read(config: IdentityConfig) -> Result<Self, IdentityError> {
        match config {
            IdentityConfig::Cookie {
                cookie,
                cookie_file,
                previous_cookie,
                previous_cookie_file,
            } => {
                let cookie = match cookie {
                    Some(c) => Cookie::new(c)?,
                    None => Cookie::from_env_or_file(cookie_file.as_deref())?,
                };
                let previous = match (previous_cookie_file, previous_cookie) {
                    (Some(path), _) => Some(Cookie::load(&path)?),
                    (None, Some(c)) => Some(Cookie::new(c)?),
                    (None, None) => None,
                };
                Ok(Self::Cookies { cookie, previous })
            }
            IdentityConfig::Certificate { ca, cert, key, crl } => {
                Ok(Self::Files(CertFiles { ca, cert, key, crl }))
            }
        }
    }
}
