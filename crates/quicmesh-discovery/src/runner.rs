//! Runs topologies: polls each strategy, hands what it reports to the
//! mesh to keep connected, and prunes what it stopped reporting.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quicmesh_mesh::Mesh;
use quicmesh_wire::NodeName;
use tokio::time::Instant;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::{Candidate, DiscoveryError, LocalNode, Strategy, TopologyConfig};

/// A topology ready to run: a name (for logs), a strategy, and the
/// pruning grace period if pruning is on.
#[derive(Clone)]
pub struct Topology {
    name: String,
    strategy: Arc<dyn Strategy>,
    prune_after: Option<Duration>,
}

impl fmt::Debug for Topology {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Topology")
            .field("name", &self.name)
            .field("prune_after", &self.prune_after)
            .finish_non_exhaustive()
    }
}

impl Topology {
    /// A topology of `strategy` called `name`.
    pub fn new(name: &str, strategy: Arc<dyn Strategy>, prune_after: Option<Duration>) -> Self {
        Self {
            name: name.to_owned(),
            strategy,
            prune_after,
        }
    }

    /// The topologies of a config file for the node `local`; the first
    /// that cannot start, with its name.
    pub fn from_configs(
        configs: &BTreeMap<String, TopologyConfig>,
        local: &LocalNode,
    ) -> Result<Vec<Self>, (String, DiscoveryError)> {
        configs
            .iter()
            .map(|(name, c)| {
                Ok(Self {
                    name: name.clone(),
                    strategy: c.strategy(local).map_err(|e| (name.clone(), e))?,
                    prune_after: c.prune_after(),
                })
            })
            .collect()
    }
}

/// Runs a node's topologies and keeps the peers they report connected.
/// Cheap to clone.
#[derive(Debug, Clone)]
pub struct Discovery {
    inner: Arc<Found>,
}

/// The peers discovery reported, with the topologies that report each.
#[derive(Debug)]
struct Found {
    mesh: Mesh,
    /// For each candidate, the topologies that report it.
    reported_by: Mutex<HashMap<NodeName, BTreeSet<String>>>,
}

impl Discovery {
    /// Discovery for the node of `mesh`.
    pub fn new(mesh: Mesh) -> Self {
        Self {
            inner: Arc::new(Found {
                mesh,
                reported_by: Mutex::default(),
            }),
        }
    }

    /// Polls `topology` from a task of the node's until the node stops;
    /// then the strategy is stopped (it withdraws what it published).
    pub fn spawn(&self, topology: Topology) {
        let mesh = &self.inner.mesh;
        let span = info_span!("topology", node = %mesh.name(), topology = %topology.name);
        mesh.tasks()
            .spawn(self.clone().run(topology).instrument(span));
    }

    fn reported_by(&self) -> MutexGuard<'_, HashMap<NodeName, BTreeSet<String>>> {
        self.inner
            .reported_by
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// `topology` reported `candidate`: keep it connected.
    fn discovered(&self, topology: &str, candidate: Candidate) {
        self.reported_by()
            .entry(candidate.node.name.clone())
            .or_default()
            .insert(topology.to_owned());
        let Candidate { node, addrs } = candidate;
        let mesh = &self.inner.mesh;
        mesh.set_dial_addrs(&node.name, addrs);
        if mesh.add_seed(node.clone(), Some(topology)) {
            info!(peer = %node, %topology, "discovered");
        }
    }

    /// `topology` pruned `name`: unless another topology or the static
    /// seeds still name it, stop re-dialling it and disconnect it.
    fn undiscovered(&self, topology: &str, name: &NodeName) {
        let forget = {
            let mut reported_by = self.reported_by();
            match reported_by.get_mut(name) {
                Some(topologies) => {
                    topologies.remove(topology);
                    let forget = topologies.is_empty();
                    if forget {
                        reported_by.remove(name);
                    }
                    forget
                }
                None => false,
            }
        };
        let mesh = &self.inner.mesh;
        if forget {
            // A configured seed is dialled at its configured host again.
            mesh.set_dial_addrs(name, Vec::new());
        }
        if forget && !mesh.is_configured_seed(name) {
            info!(peer = %name, %topology, "pruned: no longer discovered");
            mesh.disconnect(name);
        }
    }

    /// Polls `topology` until the node stops, then stops its strategy.
    async fn run(self, topology: Topology) {
        let mesh = &self.inner.mesh;
        let strategy = &topology.strategy;
        let interval = strategy.polling_interval();
        // A poll may take at most one interval (and at least a few seconds).
        let patience = interval.max(Duration::from_secs(5));
        let mut seen: HashMap<NodeName, Seen> = HashMap::new();
        let mut failing = false;
        loop {
            let polled = tokio::time::timeout(patience, strategy.candidates()).await;
            let now = Instant::now();
            match polled {
                Ok(Ok(found)) => {
                    if failing {
                        info!("discovery works again: {} candidates", found.len());
                        failing = false;
                    }
                    for candidate in found {
                        if candidate.node.name == *mesh.name() {
                            continue;
                        }
                        let name = candidate.node.name.clone();
                        self.discovered(&topology.name, candidate);
                        let seen = seen.entry(name.clone()).or_insert(Seen {
                            first: now,
                            last: now,
                        });
                        seen.last = now;
                        if now.duration_since(seen.first) >= interval && !mesh.is_up(&name) {
                            strategy.not_connected(&name);
                        }
                    }
                }
                Ok(Err(e)) => {
                    if !failing {
                        warn!("discovery failed, keeping the current peers and retrying: {e}");
                    }
                    failing = true;
                }
                Err(_) => {
                    if !failing {
                        warn!("discovery timed out after {patience:?}, keeping the current peers");
                    }
                    failing = true;
                }
            }
            if let Some(grace) = topology.prune_after
                && !failing
            {
                seen.retain(|name, seen| {
                    let keep = now.duration_since(seen.last) < grace;
                    if !keep {
                        debug!(peer = %name, "not reported for {grace:?}: pruned");
                        self.undiscovered(&topology.name, name);
                    }
                    keep
                });
            }
            tokio::select! {
                biased;
                _ = mesh.tasks().cancelled() => break,
                _ = tokio::time::sleep(interval) => {}
                _ = strategy.changed() => {}
            }
        }
        strategy.stop().await;
    }
}

/// When a topology's poll first and last reported a candidate.
#[derive(Debug, Clone, Copy)]
struct Seen {
    first: Instant,
    last: Instant,
}
