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
use quicmesh_mesh::HistogramSnapshot;

use crate::node::Layers;

/// Label name and value.
type Label<'a> = (&'a str, &'a str);

/// Encodes the metrics of the node it points to (see the module doc).
#[derive(Debug)]
pub(crate) struct NodeCollector {
    pub(crate) layers: Weak<Layers>,
}

pub(crate) fn register(registry: &mut Registry, layers: Weak<Layers>) {
    registry.register_collector(Box::new(NodeCollector { layers }));
}

impl Collector for NodeCollector {
    fn encode(&self, mut e: DescriptorEncoder<'_>) -> Result<(), Error> {
        let Some(layers) = self.layers.upgrade() else {
            return Ok(());
        };
        mesh(&mut e, &layers)?;
        rpc(&mut e, &layers)?;
        coord(&mut e, &layers)
    }
}

fn mesh(e: &mut DescriptorEncoder<'_>, layers: &Layers) -> Result<(), Error> {
    let m = layers.mesh.metrics();
    let c = &m.counters;
    let name = layers.mesh.name().as_str();
    let info = [(vec![("node", name)], 1)];
    gauges(e, "quicmesh_node_info", "This node's name (value 1)", &info)?;
    let p = m.peers;
    let peers = [("up", p.up), ("connecting", p.connecting), ("down", p.down)]
        .map(|(state, n)| (state, n as u64));
    gauges(
        e,
        "quicmesh_peers",
        "Known peers by state",
        &labelled("state", &peers),
    )?;
    let open = [(vec![], m.connections as u64)];
    gauges(
        e,
        "quicmesh_connections",
        "Open QUIC connections, handshakes included",
        &open,
    )?;
    let handshakes = [
        ("accepted", m.handshakes_accepted),
        ("auth_failed", c.auth_failures),
        ("failed", c.handshake_failures),
        ("duplicate", c.duplicates),
        ("name_in_use", c.names_in_use),
        ("retried", c.handshakes_retried),
        (
            "refused",
            c.handshakes_refused + c.handshakes_refused_per_source,
        ),
    ];
    let help = "Incoming handshakes by outcome (duplicate counts both sides' tie-breaks)";
    counters(
        e,
        "quicmesh_handshakes",
        help,
        None,
        &labelled("outcome", &handshakes),
    )?;
    let help = "Identities refused (incoming, or refused by the peer) by reason";
    counters(
        e,
        "quicmesh_auth_failures",
        help,
        None,
        &labelled("reason", &m.auth_failures),
    )?;
    let up = [(vec![], m.nodes_up)];
    counters(e, "quicmesh_node_up", "NodeUp events", None, &up)?;
    let help = "NodeDown events by reason";
    counters(
        e,
        "quicmesh_node_down",
        help,
        None,
        &labelled("reason", &m.nodes_down),
    )?;
    let help = "Peers dropped for breaking the protocol";
    let violations = [(vec![], c.protocol_violations)];
    counters(e, "quicmesh_protocol_violations", help, None, &violations)?;
    let help = "QUIC round-trip estimate of each up peer, sampled every heartbeat interval";
    histograms(
        e,
        "quicmesh_heartbeat_rtt",
        help,
        &[(vec![], &m.heartbeat_rtt)],
    )?;
    let sent = [(vec![], m.bytes_sent)];
    let help = "UDP payload bytes sent to installed peers";
    counters(e, "quicmesh_sent", help, Some(&Unit::Bytes), &sent)?;
    let received = [(vec![], m.bytes_received)];
    let help = "UDP payload bytes received from installed peers";
    counters(e, "quicmesh_received", help, Some(&Unit::Bytes), &received)?;
    let streams = [("bidi", m.streams_bi), ("uni", m.streams_uni)];
    let help = "Streams peers opened to this node, by type";
    counters(
        e,
        "quicmesh_streams_accepted",
        help,
        None,
        &labelled("type", &streams),
    )?;
    let rpc = layers.rpc.metrics();
    let coord = layers.coord.counters();
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
    counters(
        e,
        "quicmesh_refusals",
        help,
        None,
        &labelled("limit", &refusals),
    )
}

fn rpc(e: &mut DescriptorEncoder<'_>, layers: &Layers) -> Result<(), Error> {
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
    counters(e, "quicmesh_rpc_calls", help, None, &calls)?;
    let latency: Vec<_> = m
        .calls
        .iter()
        .map(|s| (vec![("service", s.service.as_str())], &s.latency))
        .collect();
    let help = "Time from a call to its result, by service";
    histograms(e, "quicmesh_rpc_call_duration", help, &latency)?;
    let buffered = [(vec![], layers.rpc.buffered_bytes() as u64)];
    let help = "Request bodies buffered now, from every peer";
    gauges_with_unit(e, "quicmesh_rpc_buffered", help, &Unit::Bytes, &buffered)
}

fn coord(e: &mut DescriptorEncoder<'_>, layers: &Layers) -> Result<(), Error> {
    let m = layers.coord.metrics();
    let c = &m.counters;
    let attempts = [("acquired", m.locks_acquired), ("failed", m.locks_failed)];
    let help = "Node::lock calls on this node, by outcome (elections' own locks not included)";
    counters(
        e,
        "quicmesh_lock_attempts",
        help,
        None,
        &labelled("outcome", &attempts),
    )?;
    let help = "Time each Node::lock call waited, acquired or not";
    histograms(e, "quicmesh_lock_wait", help, &[(vec![], &m.lock_wait)])?;
    let held = [(vec![], m.locks_held as u64)];
    gauges(
        e,
        "quicmesh_locks_held",
        "Locks in this node's lock table",
        &held,
    )?;
    let lost = [(vec![], c.locks_lost)];
    let help = "This node's locks lost to a larger token when partitions met";
    counters(e, "quicmesh_locks_lost", help, None, &lost)?;
    let names = [(vec![], m.registry_names as u64)];
    let help = "Names in the global registry, as this node knows them";
    gauges(e, "quicmesh_registry_names", help, &names)?;
    let changes = [(vec![], m.leader_changes)];
    let help = "Changes of leader this node saw, over every election";
    counters(e, "quicmesh_election_leader_changes", help, None, &changes)?;
    let refused = [
        ("claim", c.claims_refused),
        ("clock", c.clocks_refused),
        ("announcement", c.announcements_refused),
    ];
    let help = "Coordination messages from peers refused, by what was wrong";
    counters(
        e,
        "quicmesh_coord_refused",
        help,
        None,
        &labelled("what", &refused),
    )
}

/// One label per value.
fn labelled<'a>(key: &'a str, values: &'a [(&'a str, u64)]) -> Vec<(Vec<Label<'a>>, u64)> {
    values.iter().map(|(v, n)| (vec![(key, *v)], *n)).collect()
}

/// A counter family; a series without labels when its label list is empty.
fn counters(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Vec<Label<'_>>, u64)],
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Counter)?;
    for (labels, n) in series {
        ConstCounter::new(*n).encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

fn gauges(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Vec<Label<'_>>, u64)],
) -> Result<(), Error> {
    gauge_family(e, name, help, None, series)
}

fn gauges_with_unit(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: &Unit,
    series: &[(Vec<Label<'_>>, u64)],
) -> Result<(), Error> {
    gauge_family(e, name, help, Some(unit), series)
}

fn gauge_family(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    series: &[(Vec<Label<'_>>, u64)],
) -> Result<(), Error> {
    let mut m = e.encode_descriptor(name, help, unit, MetricType::Gauge)?;
    for (labels, n) in series {
        let value = ConstGauge::new(i64::try_from(*n).unwrap_or(i64::MAX));
        value.encode(m.encode_family(labels)?)?;
    }
    Ok(())
}

/// A histogram family in seconds.
fn histograms(
    e: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: &[(Vec<Label<'_>>, &HistogramSnapshot)],
) -> Result<(), Error> {
    let unit = Unit::Seconds;
    let mut m = e.encode_descriptor(name, help, Some(&unit), MetricType::Histogram)?;
    for (labels, h) in series {
        let mut f = m.encode_family(labels)?;
        f.encode_histogram::<NoLabelSet>(h.sum, h.count, &h.buckets, None)?;
    }
    Ok(())
}
