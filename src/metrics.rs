//! Prometheus metrics of a node, read at scrape time.
//!
//! [`Node::register_metrics`](crate::Node::register_metrics) adds one
//! [`Collector`] to the application's own [`Registry`]: the library keeps
//! no registry of its own (as libp2p-metrics does not), so an application
//! serves its metrics and quicmesh's from one endpoint. On every scrape the
//! collector reads what each layer already counts (the mesh's status
//! counters, RPC's calls, coordination's counters and tables) and encodes
//! it; nothing is copied into metric objects between scrapes, and the hot
//! paths only touch their own atomics. The collector holds the node weakly:
//! it does not keep a node running, and once the node is gone it encodes
//! nothing.
//!
//! Every label value comes from a fixed list (states, outcomes, reasons,
//! limits) except `service`, which comes from the calling code and is
//! capped at [`MAX_SERVICES`](quicmesh_rpc::MAX_SERVICES), and `node`, the
//! node's own name.

use std::fmt::Error;
use std::sync::Weak;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric, NoLabelSet};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::{Registry, Unit};
use quicmesh_consensus::Consensus;
use quicmesh_coord::Coord;
use quicmesh_mesh::{HistogramSnapshot, Mesh};
use quicmesh_rpc::Rpc;

/// Label name and value.
type Label<'a> = (&'a str, &'a str);

/// The layers of a node, as the collector reads them.
pub(crate) struct Sources<'a> {
    pub(crate) mesh: &'a Mesh,
    pub(crate) rpc: &'a Rpc,
    pub(crate) coord: &'a Coord,
    pub(crate) consensus: Option<&'a Consensus>,
}

/// What the collector holds weakly: a running node's layers.
pub(crate) trait Measured: std::fmt::Debug + Send + Sync + 'static {
    fn sources(&self) -> Sources<'_>;
}

/// Encodes the metrics of the node it points to (see the module doc).
#[derive(Debug)]
struct NodeCollector<M> {
    node: Weak<M>,
}

pub(crate) fn register<M: Measured>(registry: &mut Registry, node: Weak<M>) {
    registry.register_collector(Box::new(NodeCollector { node }));
}

impl<M: Measured> Collector for NodeCollector<M> {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), Error> {
        let Some(node) = self.node.upgrade() else {
            return Ok(());
        };
        let layers = node.sources();
        let mut out = Out(&mut e);
        mesh(&mut out, &layers)?;
        rpc(&mut out, &layers)?;
        coord(&mut out, &layers)?;
        match layers.consensus {
            Some(c) => consensus(&mut out, c),
            None => Ok(()),
        }
    }
}

fn mesh(out: &mut Out<'_, '_>, layers: &Sources<'_>) -> Result<(), Error> {
    let m = layers.mesh.metrics();
    let c = &m.counters;
    let node = [(vec![("node", layers.mesh.name().as_str())], 1)];
    out.family(
        "quicmesh_node_info",
        "This node's name (value 1)",
        None,
        GAUGE,
        &node,
    )?;
    let p = m.peers;
    let peers = [("up", p.up), ("connecting", p.connecting), ("down", p.down)];
    let peers = peers.map(|(state, n)| (state, n as u64));
    out.by(
        ("quicmesh_peers", "Known peers by state"),
        GAUGE,
        "state",
        &peers,
    )?;
    let help = "Open QUIC connections, handshakes included";
    out.one("quicmesh_connections", help, GAUGE, m.connections as u64)?;
    let refused = c.handshakes_refused + c.handshakes_refused_per_source;
    let handshakes = [
        ("accepted", m.handshakes_accepted),
        ("auth_failed", c.auth_failures),
        ("failed", c.handshake_failures),
        ("duplicate", c.duplicates),
        ("name_in_use", c.names_in_use),
        ("retried", c.handshakes_retried),
        ("refused", refused),
    ];
    let help = "Incoming handshakes by outcome (duplicate counts both sides' tie-breaks)";
    out.by(
        ("quicmesh_handshakes", help),
        COUNTER,
        "outcome",
        &handshakes,
    )?;
    let help = "Identities refused (incoming, or refused by the peer) by reason";
    out.by(
        ("quicmesh_auth_failures", help),
        COUNTER,
        "reason",
        &m.auth_failures,
    )?;
    out.one("quicmesh_node_up", "NodeUp events", COUNTER, m.nodes_up)?;
    let help = "NodeDown events by reason";
    out.by(
        ("quicmesh_node_down", help),
        COUNTER,
        "reason",
        &m.nodes_down,
    )?;
    let help = "Peers dropped for breaking the protocol";
    out.one(
        "quicmesh_protocol_violations",
        help,
        COUNTER,
        c.protocol_violations,
    )?;
    let help = "Peers dropped or refused because their certificate is revoked";
    out.one("quicmesh_revoked", help, COUNTER, c.revoked)?;
    let help = "QUIC round-trip estimate of each up peer, sampled every heartbeat interval";
    out.histograms(
        "quicmesh_heartbeat_rtt",
        help,
        &[(vec![], &m.heartbeat_rtt)],
    )?;
    let help = "UDP payload bytes sent to installed peers";
    out.family(
        "quicmesh_sent",
        help,
        BYTES,
        COUNTER,
        &[(vec![], m.bytes_sent)],
    )?;
    let help = "UDP payload bytes received from installed peers";
    let received = [(vec![], m.bytes_received)];
    out.family("quicmesh_received", help, BYTES, COUNTER, &received)?;
    let streams = [("bidi", m.streams_bi), ("uni", m.streams_uni)];
    let help = "Streams peers opened to this node, by type";
    out.by(
        ("quicmesh_streams_accepted", help),
        COUNTER,
        "type",
        &streams,
    )?;
    let (rpc, coord) = (layers.rpc.metrics(), layers.coord.counters());
    let refusals = [
        ("handshakes_in_progress", c.handshakes_refused),
        ("handshakes_per_source", c.handshakes_refused_per_source),
        ("max_peers", c.peers_refused),
        ("rpc_calls_per_peer", rpc.refused_per_peer),
        ("rpc_buffered_bytes", rpc.refused_buffered),
        ("names_per_owner", coord.names_refused),
        ("locks_per_node", coord.locks_refused),
    ];
    let help = "Requests refused because a limit was reached, by limit";
    out.by(("quicmesh_refusals", help), COUNTER, "limit", &refusals)
}

fn rpc(out: &mut Out<'_, '_>, layers: &Sources<'_>) -> Result<(), Error> {
    let m = layers.rpc.metrics();
    let calls: Vec<_> = m
        .calls
        .iter()
        .flat_map(|s| {
            // Outcomes that never happened are left out, but for `ok`.
            let happened = s.outcomes.iter().filter(|(o, n)| *n > 0 || *o == "ok");
            happened.map(|(outcome, n)| {
                let labels = vec![("service", s.service.as_str()), ("outcome", *outcome)];
                (labels, *n)
            })
        })
        .collect();
    let help = "Calls, casts and multicall entries this node made, by service and outcome";
    out.family("quicmesh_rpc_calls", help, None, COUNTER, &calls)?;
    let latency: Vec<_> = m
        .calls
        .iter()
        .map(|s| (vec![("service", s.service.as_str())], &s.latency))
        .collect();
    let help = "Time from a call to its result, by service";
    out.histograms("quicmesh_rpc_call_duration", help, &latency)?;
    let buffered = [(vec![], layers.rpc.buffered_bytes() as u64)];
    let help = "Request bodies buffered now, from every peer";
    out.family("quicmesh_rpc_buffered", help, BYTES, GAUGE, &buffered)
}

fn coord(out: &mut Out<'_, '_>, layers: &Sources<'_>) -> Result<(), Error> {
    let m = layers.coord.metrics();
    let c = &m.counters;
    let attempts = [("acquired", m.locks_acquired), ("failed", m.locks_failed)];
    let help = "Node::lock calls on this node, by outcome (elections' own locks not included)";
    out.by(
        ("quicmesh_lock_attempts", help),
        COUNTER,
        "outcome",
        &attempts,
    )?;
    let help = "Time each Node::lock call waited, acquired or not";
    out.histograms("quicmesh_lock_wait", help, &[(vec![], &m.lock_wait)])?;
    let help = "Locks in this node's lock table";
    out.one("quicmesh_locks_held", help, GAUGE, m.locks_held as u64)?;
    let help = "This node's locks lost to a larger token when partitions met";
    out.one("quicmesh_locks_lost", help, COUNTER, c.locks_lost)?;
    let help = "Names in the global registry, as this node knows them";
    out.one(
        "quicmesh_registry_names",
        help,
        GAUGE,
        m.registry_names as u64,
    )?;
    let help = "Changes of leader this node saw, over every election";
    out.one(
        "quicmesh_election_leader_changes",
        help,
        COUNTER,
        m.leader_changes,
    )?;
    let refused = [
        ("claim", c.claims_refused),
        ("clock", c.clocks_refused),
        ("announcement", c.announcements_refused),
    ];
    let help = "Coordination messages from peers refused, by what was wrong";
    out.by(("quicmesh_coord_refused", help), COUNTER, "what", &refused)
}

const COUNTER: MetricType = MetricType::Counter;
const GAUGE: MetricType = MetricType::Gauge;
const BYTES: Option<&Unit> = Some(&Unit::Bytes);

/// Series of a family: labels and value.
type Series<'a, T> = [(Vec<Label<'a>>, T)];

/// The roles `quicmesh_consensus_role` labels (`ConsensusStatus::role`).
const ROLES: [&str; 7] = [
    "leader",
    "follower",
    "candidate",
    "learner",
    "joining",
    "stopped",
    "client",
];

/// Consensus mode's families, on nodes in that mode only.
fn consensus(out: &mut Out<'_, '_>, c: &Consensus) -> Result<(), Error> {
    let status = c.status();
    let roles = ROLES.map(|r| (r, u64::from(status.role == r)));
    let help = "This node's part in the Raft group (1 for its role, else 0)";
    out.by(("quicmesh_consensus_role", help), GAUGE, "role", &roles)?;
    let help = "Whether this node knows a Raft leader (1) or not (0)";
    let known = u64::from(status.leader.is_some());
    out.one("quicmesh_consensus_leader_known", help, GAUGE, known)?;
    let help = "The voters of the group, as this node knows them";
    out.one(
        "quicmesh_consensus_voters",
        help,
        GAUGE,
        status.voters.len() as u64,
    )?;
    if let Some(term) = status.term {
        out.one(
            "quicmesh_consensus_term",
            "A voter's current Raft term",
            GAUGE,
            term,
        )?;
    }
    if let Some(applied) = status.last_applied {
        let help = "The index of the last entry a voter's state machine applied";
        out.one("quicmesh_consensus_last_applied", help, GAUGE, applied)?;
    }
    if let Some(last) = status.last_log_index {
        let help = "The index of a voter's last log entry";
        out.one("quicmesh_consensus_last_log_index", help, GAUGE, last)?;
    }
    Ok(())
}

/// Writes families to a scrape; each method writes one.
struct Out<'e, 'a>(&'e mut DescriptorEncoder<'a>);

impl Out<'_, '_> {
    /// A counter or gauge without labels.
    fn one(&mut self, name: &str, help: &str, ty: MetricType, n: u64) -> Result<(), Error> {
        self.family(name, help, None, ty, &[(vec![], n)])
    }

    /// A counter or gauge family with one label, `key`.
    fn by(
        &mut self,
        (name, help): (&str, &str),
        ty: MetricType,
        key: &str,
        values: &[(&str, u64)],
    ) -> Result<(), Error> {
        self.family(name, help, None, ty, &labelled(key, values))
    }

    /// A counter or gauge family.
    fn family(
        &mut self,
        name: &str,
        help: &str,
        unit: Option<&Unit>,
        ty: MetricType,
        series: &Series<'_, u64>,
    ) -> Result<(), Error> {
        let mut m = self.0.encode_descriptor(name, help, unit, ty)?;
        for (labels, n) in series {
            let f = m.encode_family(labels)?;
            if matches!(ty, MetricType::Gauge) {
                ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX)).encode(f)?;
            } else {
                ConstCounter::new(*n).encode(f)?;
            }
        }
        Ok(())
    }

    /// A histogram family in seconds.
    fn histograms(
        &mut self,
        name: &str,
        help: &str,
        series: &Series<'_, &HistogramSnapshot>,
    ) -> Result<(), Error> {
        let unit = Unit::Seconds;
        let mut m = self
            .0
            .encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
        for (labels, h) in series {
            let mut f = m.encode_family(labels)?;
            f.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
        }
        Ok(())
    }
}

/// One label, `key`, per value.
fn labelled<'a>(key: &'a str, values: &'a [(&'a str, u64)]) -> Vec<(Vec<Label<'a>>, u64)> {
    values.iter().map(|(v, n)| (vec![(key, *v)], *n)).collect()
}
