//! Real nodes on 127.0.0.1:0 in one process: a mesh, RPC and consensus
//! each, with data directories that outlive a node so it can restart.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use quicmesh_consensus::{Consensus, ConsensusConfig};
use quicmesh_identity::{ClusterCa, Cookie, Identity};
use quicmesh_mesh::{Mesh, MeshConfig, Router};
use quicmesh_rpc::{Rpc, RpcConfig};
use quicmesh_wire::{NodeAddr, NodeName};
use tokio::time::Instant;

/// The bound on a whole test body.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(120);
/// The bound on one awaited condition.
pub const WAIT: Duration = Duration::from_secs(15);

/// Runs a test body under [`TEST_TIMEOUT`], logging to the test's output
/// (filtered by RUST_LOG; default: warnings, nothing from openraft, whose
/// errors for peers not yet connected are expected here).
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn,openraft=off"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test exceeded its time bound");
}

pub fn name(s: &str) -> NodeName {
    format!("{s}@127.0.0.1")
        .parse()
        .expect("valid test node name")
}

/// The cluster CA, derived once per test binary (the derivation is slow).
fn ca() -> Arc<ClusterCa> {
    static CA: OnceLock<Arc<ClusterCa>> = OnceLock::new();
    CA.get_or_init(|| {
        let cookie = Cookie::new("consensus test cookie").expect("cookie");
        Arc::new(ClusterCa::from_cookie(&cookie).expect("derive CA"))
    })
    .clone()
}

/// One node: its layers and where it keeps its data.
pub struct TestNode {
    pub mesh: Mesh,
    pub rpc: Rpc,
    pub consensus: Consensus,
}

impl TestNode {
    pub fn name(&self) -> &NodeName {
        self.mesh.name()
    }

    pub fn addr(&self) -> NodeAddr {
        NodeAddr::new(self.name().clone(), self.mesh.local_addr().port())
    }

    /// Stops the node as a crash would: no session closed, nothing said.
    pub async fn kill(self) {
        self.consensus.halt().await;
        self.mesh.shutdown().await;
    }

    /// Stops the node cleanly: its session closed first.
    pub async fn shutdown(self) {
        self.consensus.shutdown().await;
        self.mesh.shutdown().await;
    }
}

/// How a test node starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A configured voter, or a client.
    Plain,
    /// To join the running group (`join = true`).
    Join,
    /// A hidden node (a client of the group).
    Hidden,
}

/// The voters' names and settings of a test group, and a directory for
/// each node's data.
pub struct Group {
    pub root: tempfile::TempDir,
    pub config: ConsensusConfig,
}

impl Group {
    /// A group of `voters` (short names) with test timings.
    pub fn new(voters: &[&str]) -> Self {
        let config = ConsensusConfig {
            voters: voters.iter().map(|v| name(v)).collect(),
            session_ttl: Duration::from_millis(1500),
            heartbeat: Duration::from_millis(50),
            election_timeout: Duration::from_millis(300),
            request_timeout: Duration::from_secs(5),
            ..ConsensusConfig::default()
        };
        Self {
            root: tempfile::tempdir().expect("tempdir"),
            config,
        }
    }

    pub fn data_dir(&self, short: &str) -> PathBuf {
        self.root.path().join(short)
    }

    /// Starts `short` (a voter or a client of the group) and connects it
    /// to `peers`.
    pub async fn start(&self, short: &str, peers: &[&TestNode]) -> TestNode {
        self.start_as(short, peers, Start::Plain).await
    }

    /// Starts `short` to join the running group (`join = true`), connected
    /// to `peers`.
    pub async fn start_joining(&self, short: &str, peers: &[&TestNode]) -> TestNode {
        self.start_as(short, peers, Start::Join).await
    }

    /// Deletes `short`'s data directory, as a lost disk would.
    pub fn wipe(&self, short: &str) {
        let dir = self.data_dir(short);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).expect("data dir removed");
        }
    }

    /// Starts `short` as `how` says, connected to `peers`.
    pub async fn start_as(&self, short: &str, peers: &[&TestNode], how: Start) -> TestNode {
        let name = name(short);
        let identity =
            Identity::from_cluster_ca(name.clone(), ca(), MeshConfig::DEFAULT_LEAF_VALIDITY)
                .expect("identity");
        let mut mesh_config = MeshConfig::new("127.0.0.1:0".parse().expect("addr"));
        mesh_config.hidden = how == Start::Hidden;
        let mesh = Mesh::bind(mesh_config, identity).expect("bind");
        let rpc = Rpc::new(mesh.clone(), RpcConfig::default());
        let mut config = self.config.clone();
        config.join = how == Start::Join;
        config.data_dir = Some(self.data_dir(short));
        let consensus = start_consensus(&rpc, config).await;
        mesh.start(rpc.route(Router::default()));
        for peer in peers {
            mesh.connect(&peer.addr()).await.expect("connect");
        }
        TestNode {
            mesh,
            rpc,
            consensus,
        }
    }

    /// Starts every voter and waits until they agree on a leader; the
    /// nodes, and the index of the leader among them.
    pub async fn start_led(&self) -> (Vec<TestNode>, usize) {
        let nodes = self.start_all().await;
        let leader = agreed_leader(&nodes.iter().collect::<Vec<_>>()).await;
        (nodes, leader)
    }

    /// Starts every voter, connected to each other.
    pub async fn start_all(&self) -> Vec<TestNode> {
        let mut nodes: Vec<TestNode> = Vec::new();
        for voter in &self.config.voters {
            let peers: Vec<&TestNode> = nodes.iter().collect();
            nodes.push(self.start(voter.short(), &peers).await);
        }
        nodes
    }
}

/// Starts consensus, retrying while a stopped node of this test still
/// holds the data directory's store.
async fn start_consensus(rpc: &Rpc, config: ConsensusConfig) -> Consensus {
    let deadline = Instant::now() + WAIT;
    loop {
        match Consensus::start(rpc, config.clone()).await {
            Ok(c) => return c,
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("consensus not started yet: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("consensus did not start: {e}"),
        }
    }
}

/// Polls `cond` every 10 ms until it returns `Some`, failing after [`WAIT`].
pub async fn eventually<T>(what: &str, mut cond: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(v) = cond() {
            return v;
        }
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until every node of `nodes` names the same leader, and returns
/// its index in `nodes`.
pub async fn agreed_leader(nodes: &[&TestNode]) -> usize {
    eventually("the voters agree on a leader", || {
        let first = nodes.first()?.consensus.current_leader()?;
        let all = nodes
            .iter()
            .all(|n| n.consensus.current_leader().as_ref() == Some(&first));
        all.then(|| nodes.iter().position(|n| *n.name() == first))
            .flatten()
    })
    .await
}

/// Stops every node of `nodes` cleanly: all sessions closed first (while
/// the group has its quorum), then every node stopped.
pub async fn shutdown_all(nodes: Vec<TestNode>) {
    let closing: Vec<_> = nodes
        .iter()
        .map(|n| {
            let c = n.consensus.clone();
            tokio::spawn(async move { c.close_session().await })
        })
        .collect();
    for c in closing {
        c.await.expect("task").expect("session closed");
    }
    for n in nodes {
        n.kill().await;
    }
}
