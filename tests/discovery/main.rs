//! Discovery with real nodes: topologies from the config file and from
//! code, the keep and prune policies, a failing strategy, candidates whose
//! addresses the strategy resolved itself, and config errors that name the
//! key.

#[path = "../support/mod.rs"]
mod support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicmesh::discovery::{Candidate, CandidatesFuture, DiscoveryError, Strategy, TopologyConfig};
use quicmesh::{DownReason, Node, NodeConfig};
use support::*;

const COOKIE: &str = "discovery-cookie";
const POLL: Duration = Duration::from_millis(100);

/// A strategy whose answer the test sets: candidates, or a failure.
#[derive(Clone)]
struct Scripted(Arc<Mutex<Result<Vec<Candidate>, DiscoveryError>>>);

impl Scripted {
    fn set(&self, answer: Result<Vec<Candidate>, DiscoveryError>) {
        *self.0.lock().expect("lock") = answer;
    }
}

impl Strategy for Scripted {
    fn candidates(&self) -> CandidatesFuture<'_> {
        let answer = self.0.lock().expect("lock").clone();
        Box::pin(async move { answer })
    }

    fn polling_interval(&self) -> Duration {
        POLL
    }
}

impl Default for Scripted {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(Ok(Vec::new()))))
    }
}

fn candidate(node: &Node) -> Candidate {
    Candidate::new(node.addr())
}

#[tokio::test]
async fn static_topology_from_a_config_file_forms_the_mesh() {
    bounded(async {
        let b = node("b", COOKIE).await;
        let c = node("c", COOKIE).await;
        let text = format!(
            r#"
name = "a@127.0.0.1"
listen = "127.0.0.1:0"
[identity]
mode = "cookie"
cookie = "{COOKIE}"
[topologies.fixed]
strategy = "static"
nodes = ["{}", "{}"]
"#,
            b.addr(),
            c.addr()
        );
        let config = NodeConfig::from_toml(&text).expect("config parses");
        let a = Node::builder()
            .configure(|cfg| *cfg = config)
            .start()
            .await
            .expect("a starts");
        a.wait_for_nodes(2, WAIT).await.expect("a finds b and c");
        // b and c meet through a (transitive mesh).
        b.wait_for_nodes(2, WAIT).await.expect("b sees a and c");
        for n in [a, b, c] {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_peer_missing_from_a_poll_stays_and_a_dropped_peer_is_redialled() {
    bounded(async {
        let b = node("b", COOKIE).await;
        let strategy = Scripted::default();
        strategy.set(Ok(vec![candidate(&b)]));
        let a = builder("a", COOKIE)
            .topology("scripted", strategy.clone(), None)
            .start()
            .await
            .expect("a starts");
        a.wait_for_nodes(1, WAIT).await.expect("a finds b");
        // Polls stop reporting b, or fail: b stays connected.
        strategy.set(Ok(Vec::new()));
        stays_connected(&a, &b, POLL * 5).await;
        strategy.set(Err(DiscoveryError::Other("the DNS server is down".into())));
        stays_connected(&a, &b, POLL * 5).await;
        // b restarts on the same address; a re-dials it although no poll
        // reports it.
        let addr = b.local_addr();
        b.shutdown().await;
        drop(b);
        let mut events = a.events();
        let b2 = start_on("b", COOKIE, addr).await;
        wait_up(&mut events, b2.name()).await;
        a.shutdown().await;
        b2.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn pruning_forgets_a_peer_after_its_grace_period() {
    bounded(async {
        let b = node("b", COOKIE).await;
        let c = node("c", COOKIE).await;
        let strategy = Scripted::default();
        strategy.set(Ok(vec![candidate(&b), candidate(&c)]));
        let a = builder("a", COOKIE)
            .topology("pruned", strategy.clone(), Some(POLL * 4))
            .start()
            .await
            .expect("a starts");
        a.wait_for_nodes(2, WAIT).await.expect("a finds b and c");
        let mut events = a.events();
        strategy.set(Ok(vec![candidate(&c)]));
        let started = tokio::time::Instant::now();
        assert_eq!(
            wait_down(&mut events, b.name()).await,
            DownReason::DisconnectedByUs
        );
        assert!(
            started.elapsed() >= POLL * 3,
            "pruned before its grace period"
        );
        // Not re-dialled, and c, still reported, stays.
        stays_connected(&a, &c, POLL * 5).await;
        assert!(!a.nodes().contains(b.name()));
        for n in [a, b, c] {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_candidate_is_dialled_at_the_addresses_its_strategy_resolved() {
    bounded(async {
        // A host name the system resolver cannot resolve: only the
        // strategy's own address can reach b.
        let b = Node::builder()
            .name("b@b.quicmesh.invalid")
            .listen("127.0.0.1:0".parse().expect("addr"))
            .cookie(COOKIE)
            .start()
            .await
            .expect("b starts");
        let strategy = Scripted::default();
        let node = format!("b@b.quicmesh.invalid:{}", b.local_addr().port());
        strategy.set(Ok(vec![Candidate::at(
            node.parse().expect("node addr"),
            vec![b.local_addr()],
        )]));
        let a = builder("a", COOKIE)
            .topology("resolved", strategy, None)
            .start()
            .await
            .expect("a starts");
        a.wait_for_nodes(1, WAIT).await.expect("a reaches b");
        assert_eq!(a.nodes(), vec![b.name().clone()]);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// Only parsed: an mDNS strategy is never started outside the sealed lab
/// (crates/quicmesh-cli/tests/lab).
#[test]
fn mdns_topology_config_has_defaults_and_round_trips() {
    let text = "name = \"a@127.0.0.1\"\n[topologies.lan]\nstrategy = \"mdns\"\n";
    let config = NodeConfig::from_toml(text).expect("mdns with defaults");
    let lan = &config.topologies["lan"];
    let TopologyConfig::Mdns {
        polling_interval,
        verify_timeout,
        interfaces,
        prune_after,
        ..
    } = lan
    else {
        panic!("not mdns: {lan:?}")
    };
    assert_eq!(*polling_interval, Duration::from_secs(5));
    assert_eq!(*verify_timeout, Duration::from_secs(2));
    assert!(interfaces.is_empty());
    assert_eq!(*prune_after, None);

    let text = "name = \"a@127.0.0.1\"\n[topologies.lan]\nstrategy = \"mdns\"\n\
                polling_interval = \"1s\"\nverify_timeout = \"500ms\"\n\
                interfaces = [\"eth0\", \"eth1\"]\nprune_after = \"1m\"\n";
    let config = NodeConfig::from_toml(text).expect("mdns with every key");
    let again =
        NodeConfig::from_toml(&toml::to_string(&config).expect("to toml")).expect("round trip");
    assert_eq!(config.topologies, again.topologies);
    assert_eq!(
        config.topologies["lan"].prune_after(),
        Some(Duration::from_secs(60))
    );
}

#[test]
fn bad_topology_configs_name_the_key_and_the_problem() {
    let cases = [
        (
            "[topologies.x]\nstrategy = \"carrier_pigeon\"\nnodes = []",
            "carrier_pigeon",
        ),
        ("[topologies.x]\nstrategy = \"static\"", "nodes"),
        (
            "[topologies.x]\nstrategy = \"static\"\nnodes = []\npoll = \"5s\"",
            "poll",
        ),
        (
            "[topologies.x]\nstrategy = \"static\"\nnodes = [\"no-at-sign\"]",
            "no-at-sign",
        ),
        (
            "[topologies.x]\nstrategy = \"static\"\nnodes = []\nprune_after = \"soon\"",
            "soon",
        ),
        (
            "[topologies.lan]\nstrategy = \"mdns\"\nverify_timeout = \"0s\"",
            "topologies.lan: verify_timeout must be above zero",
        ),
        (
            "[topologies.lan]\nstrategy = \"mdns\"\nservice = \"my-app\"",
            "service",
        ),
        (
            "[topologies.lan]\nstrategy = \"mdns\"\ninterfaces = \"eth0\"",
            "interfaces",
        ),
    ];
    for (text, named) in cases {
        let text = format!("name = \"a@127.0.0.1\"\n{text}");
        let err = NodeConfig::from_toml(&text)
            .and_then(|c| c.validate())
            .expect_err(text.as_str())
            .to_string();
        assert!(err.contains(named), "{text}\n→ {err}");
    }
}
