//! Consensus mode through the node's builder and config: three voters
//! and a client node agree on locks and names; global mode runs beside it.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use quicmesh::prometheus_client::encoding::text::encode;
use quicmesh::prometheus_client::registry::Registry;
use quicmesh::{ConsensusConfig, ConsensusError, Node};
use support::*;

const COOKIE: &str = "consensus-test-cookie";

/// The node's metrics as a scrape shows them.
fn scrape(node: &Node) -> String {
    let mut registry = Registry::default();
    node.register_metrics(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).expect("metrics encode");
    text
}

/// Starts `short` in consensus mode with the voters `a`, `b`, `c` and its
/// data in `root`, connected to `peers`.
async fn start(short: &str, root: &std::path::Path, peers: &[&Node]) -> Node {
    let config = ConsensusConfig {
        voters: ["a", "b", "c"]
            .map(|v| name(&format!("{v}@127.0.0.1")))
            .to_vec(),
        data_dir: Some(root.join(short)),
        session_ttl: Duration::from_millis(1500),
        heartbeat: Duration::from_millis(50),
        election_timeout: Duration::from_millis(300),
        ..ConsensusConfig::default()
    };
    let node = builder(short, COOKIE)
        .consensus(config)
        .start()
        .await
        .expect("node starts");
    for peer in peers {
        node.connect(&peer.addr()).await.expect("connect");
    }
    node
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_in_consensus_mode_agree_on_locks_and_names() {
    bounded(async {
        let root = tempfile::tempdir().expect("tempdir");
        let a = start("a", root.path(), &[]).await;
        let b = start("b", root.path(), &[&a]).await;
        let c = start("c", root.path(), &[&a, &b]).await;
        let client = start("d", root.path(), &[&a, &b, &c]).await;
        let consensus = |n: &Node| n.consensus().cloned().expect("consensus mode");
        assert!(consensus(&a).is_voter());
        assert!(!consensus(&client).is_voter());

        let wait = Duration::from_secs(10);
        let held = consensus(&client).lock("r", wait).await.expect("granted");
        match consensus(&b).lock("r", Duration::from_millis(300)).await {
            Err(ConsensusError::Timeout { owner, .. }) => assert_eq!(owner, *client.name()),
            other => panic!("lock r should be the client's: {other:?}"),
        }
        consensus(&c).register("svc").await.expect("registered");
        assert_eq!(
            consensus(&client).whereis("svc").await.expect("read"),
            Some(c.name().clone())
        );
        let t1 = held.token();
        held.release().await.expect("released");
        let again = consensus(&b).lock("r", wait).await.expect("granted");
        assert!(again.token() > t1);
        again.release().await.expect("released");

        // The admin report shows each node's view of the group.
        let voter = client.admin(a.name()).status().await.expect("a's status");
        let raft = voter.consensus.expect("consensus mode is reported");
        assert!(
            ["leader", "follower"].contains(&raft.role.as_str()),
            "{raft:?}"
        );
        assert!(raft.leader.is_some() && raft.term.is_some() && raft.last_applied.is_some());
        assert_eq!(raft.voters.len(), 3);
        let own = client
            .admin(client.name())
            .status()
            .await
            .expect("own status");
        let own = own.consensus.expect("consensus mode is reported");
        assert_eq!((own.role.as_str(), own.term), ("client", None));
        // And so do the metrics.
        let voter = scrape(&a);
        let role = ["leader", "follower"]
            .map(|r| voter.contains(&format!("quicmesh_consensus_role{{role=\"{r}\"}} 1")));
        assert!(role.iter().any(|r| *r), "{voter}");
        for family in [
            "quicmesh_consensus_voters 3",
            "quicmesh_consensus_leader_known 1",
            "quicmesh_consensus_term ",
            "quicmesh_consensus_last_applied ",
        ] {
            assert!(voter.contains(family), "no {family:?} in {voter}");
        }
        let own = scrape(&client);
        assert!(
            own.contains("quicmesh_consensus_role{role=\"client\"} 1"),
            "{own}"
        );
        assert!(
            !own.contains("quicmesh_consensus_term"),
            "a client has no term"
        );
        let global = builder("g", COOKIE)
            .start()
            .await
            .expect("a global-mode node");
        let report = global.admin(global.name()).status().await.expect("status");
        assert!(report.consensus.is_none(), "global mode reports no group");
        assert!(!scrape(&global).contains("quicmesh_consensus_"));
        global.shutdown().await;

        // Global mode's calls still work beside consensus mode.
        let global = a.lock("g").await.expect("global lock");
        drop(global);

        // Shutting the client down closes its session: nothing it held stays.
        client.shutdown().await;
        tokio::join!(a.shutdown(), b.shutdown(), c.shutdown());
    })
    .await;
}
