//! Consensus mode through the node's builder and config: three voters
//! and a client node agree on locks and names; global mode runs beside it.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use quicmesh::prometheus_client::encoding::text::encode;
use quicmesh::prometheus_client::registry::Registry;
use quicmesh::{
    ConsensusConfig, ConsensusError, LockError, LockOptions, Node, RegistryError, Token,
};
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
            consensus(&client)
                .whereis("svc")
                .await
                .expect("read")
                .map(|o| o.node),
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

/// Three connected nodes in global mode.
async fn start_global() -> Vec<Node> {
    let a = builder("a", COOKIE).start().await.expect("node starts");
    let b = builder("b", COOKIE)
        .seed(a.addr())
        .start()
        .await
        .expect("node starts");
    let c = builder("c", COOKIE)
        .seed(a.addr())
        .start()
        .await
        .expect("node starts");
    for n in [&a, &b, &c] {
        n.wait_for_nodes(2, WAIT).await.expect("a full mesh");
    }
    vec![a, b, c]
}

/// Three voters `a`, `b`, `c` in consensus mode, with their data in `root`.
async fn start_consensus(root: &std::path::Path) -> Vec<Node> {
    let a = start("a", root, &[]).await;
    let b = start("b", root, &[&a]).await;
    let c = start("c", root, &[&a, &b]).await;
    vec![a, b, c]
}

/// The same calls, the same outcomes, in either mode: `node.lock`,
/// `lock_with`, `trans`, `election` and `registry` on three connected
/// nodes.
async fn one_api(nodes: &[Node]) {
    let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
    let quick = LockOptions::default().timeout(Duration::from_millis(300));

    // Locks: one holder, a Timeout naming it for another, and every later
    // grant with a larger token.
    let held = a.lock("r").await.expect("granted");
    assert_eq!(held.resource(), "r");
    assert!(!held.is_lost());
    match b.lock_with("r", &quick).await {
        Err(LockError::Timeout { resource, .. }) => assert_eq!(resource, "r"),
        other => panic!("lock r should be a's: {other:?}"),
    }
    let mut last: Token = held.token();
    held.release().await;
    for n in [b, c, a, c] {
        let t = n
            .trans("r", |token| async move { token })
            .await
            .expect("trans");
        assert!(t > last, "token {t} after {last}");
        last = t;
    }
    let guard = c.lock_with("r", &quick).await.expect("free again");
    assert!(guard.token() > last);
    drop(guard); // released in the background
    let again = a.lock("r").await.expect("granted after the drop");
    assert!(again.token() > last);
    again.release().await;

    // Elections: one leader, seen by the others, a larger term for the next.
    let (ea, eb, ec) = (a.election("e"), b.election("e"), c.election("e"));
    let mut changes = ec.observe();
    let leading = ea.campaign().await.expect("a leads");
    assert!(ea.am_leader() && !eb.am_leader());
    assert!(!leading.is_lost());
    let first = leading.term();
    let seen = eb.leader_linearizable().await.expect("read");
    assert_eq!((seen.leader.as_ref(), seen.term), (Some(a.name()), first));
    eventually("b sees a lead", || {
        eb.leader().leader.as_ref() == Some(a.name())
    })
    .await;
    let change = tokio::time::timeout(WAIT, changes.recv())
        .await
        .expect("c observes a change")
        .expect("a change");
    assert_eq!(
        (change.leader.as_ref(), change.term),
        (Some(a.name()), first)
    );
    match eb.campaign_timeout(Duration::from_millis(300)).await {
        Err(LockError::Timeout { holder, .. }) => assert_eq!(holder.as_ref(), Some(a.name())),
        other => panic!("a leads: {other:?}"),
    }
    leading.resign().await;
    let next = eb.campaign().await.expect("b leads next");
    assert!(next.term() > first, "term {} after {first}", next.term());
    assert!(eb.am_leader() && !ea.am_leader());
    next.resign().await;

    // Names: one owner, found from every node, callable by name.
    a.register("svc", |_ctx, x: u32| async move { Ok::<_, String>(x + 1) })
        .expect("rpc service");
    let r = a
        .registry()
        .register("svc", "svc")
        .await
        .expect("registered");
    assert_eq!(&r.owner, a.name());
    match b.registry().register("svc", "svc").await {
        Err(RegistryError::AlreadyRegistered { owner, .. }) => assert_eq!(&owner, a.name()),
        other => panic!("svc is a's: {other:?}"),
    }
    let found = c
        .registry()
        .whereis_linearizable("svc")
        .await
        .expect("read");
    assert_eq!(found.map(|r| r.owner).as_ref(), Some(a.name()));
    eventually("b finds svc", || {
        b.registry().whereis("svc").map(|r| r.owner).as_ref() == Some(a.name())
    })
    .await;
    let n: u32 = b
        .registry()
        .call("svc", &41u32)
        .await
        .expect("call by name");
    assert_eq!(n, 42);
    assert!(!b.registry().unregister("svc").await, "not b's");
    assert!(a.registry().unregister("svc").await);
    let gone = c
        .registry()
        .whereis_linearizable("svc")
        .await
        .expect("read");
    assert_eq!(gone, None);

    // A name for a service of another name: found with it, called by it.
    a.register("worker.v2", |_ctx, x: u32| async move {
        Ok::<_, String>(x * 10)
    })
    .expect("rpc service");
    let r = a
        .registry()
        .register("worker", "worker.v2")
        .await
        .expect("registered");
    assert_eq!((&r.owner, r.service.as_str()), (a.name(), "worker.v2"));
    let found = c
        .registry()
        .whereis_linearizable("worker")
        .await
        .expect("read")
        .expect("registered");
    assert_eq!(
        (&found.owner, found.service.as_str()),
        (a.name(), "worker.v2")
    );
    eventually("b finds worker's service", || {
        b.registry().whereis("worker").map(|r| (r.owner, r.service))
            == Some((a.name().clone(), "worker.v2".to_owned()))
    })
    .await;
    let n: u32 = c
        .registry()
        .call("worker", &4u32)
        .await
        .expect("call by name");
    assert_eq!(n, 40, "worker.v2 on a answered");
    assert!(a.registry().unregister("worker").await);
    let long = "s".repeat(256);
    match a.registry().register("worker", &long).await {
        Err(RegistryError::BadName(bad)) => assert_eq!(bad, long),
        other => panic!("a 256-byte service: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_in_global_mode() {
    bounded(async {
        let nodes = start_global().await;
        assert!(nodes.iter().all(|n| n.consensus().is_none()));
        one_api(&nodes).await;
        for n in &nodes {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_api_in_consensus_mode() {
    bounded(async {
        let root = tempfile::tempdir().expect("tempdir");
        let nodes = start_consensus(root.path()).await;
        one_api(&nodes).await;
        // Again, led by a client node (not a voter): its requests go to
        // the Raft leader.
        let client = start("d", root.path(), &nodes.iter().collect::<Vec<_>>()).await;
        assert!(!client.consensus().expect("consensus mode").is_voter());
        one_api(&[client.clone(), nodes[0].clone(), nodes[1].clone()]).await;
        assert_eq!(
            client.registry().whereis("svc"),
            None,
            "a client keeps no copy"
        );
        client.shutdown().await;
        // The tokens are the group's log indices, not clock readings.
        let t = nodes[0]
            .trans("r", |t| async move { t })
            .await
            .expect("trans");
        assert!(t.log_index().is_some(), "{t}");
        // Global-mode options are refused by name.
        let only = LockOptions::default().nodes(vec![nodes[1].name().clone()]);
        assert!(matches!(
            nodes[0].lock_with("r", &only).await,
            Err(LockError::GlobalOnly { option: "nodes" })
        ));
        // A timeout of Duration::MAX waits as long as need be.
        let forever = LockOptions::default().timeout(Duration::MAX);
        let g = nodes[0].lock_with("max", &forever).await.expect("granted");
        g.release().await;
        let e = nodes[0]
            .election("max")
            .campaign_timeout(Duration::MAX)
            .await;
        e.expect("leads").resign().await;
        // No registry events in this mode: the stream waits, it does not end.
        let mut events = nodes[0].registry().events();
        let waited = tokio::time::timeout(Duration::from_millis(100), events.recv()).await;
        assert!(waited.is_err(), "{waited:?}");
        // Held through the group, nothing of it is in global mode's tables.
        let held = nodes[1].lock("held").await.expect("granted");
        let leading = nodes[1].election("e").campaign().await.expect("leads");
        nodes[1]
            .registry()
            .register("nm", "nm")
            .await
            .expect("registered");
        for n in &nodes {
            let report = n.admin(n.name()).status().await.expect("status");
            assert_eq!(
                (report.locks, report.names, report.elections),
                (0, 0, 0),
                "global mode's tables of {}",
                n.name()
            );
        }
        drop((held, leading));
        for n in &nodes {
            n.shutdown().await;
        }
    })
    .await;
}

/// Two of the three voters shut down: the one left is the minority side.
/// Its locks, campaigns and registrations never succeed: each fails with
/// `NoQuorum` when its timeout ends; and the lock it held is reported lost
/// once its session ran out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_minority_side_never_grants_through_the_one_api() {
    bounded(async {
        let root = tempfile::tempdir().expect("tempdir");
        let nodes = start_consensus(root.path()).await;
        let alone = nodes[2].clone();
        let held = alone.lock("held").await.expect("granted with a quorum");
        let leading = alone
            .election("e")
            .campaign()
            .await
            .expect("leads with a quorum");
        for n in &nodes[..2] {
            n.shutdown().await;
        }
        tokio::time::timeout(WAIT, held.lost())
            .await
            .expect("the cut-off holder is told of the loss");
        assert!(held.is_lost() && leading.is_lost());
        assert!(!alone.election("e").am_leader());

        let timeout = Duration::from_secs(2);
        let asked = tokio::time::Instant::now();
        let options = LockOptions::default().timeout(timeout);
        match alone.lock_with("r", &options).await {
            Err(LockError::NoQuorum { resource, waited }) => {
                assert_eq!(resource, "r");
                assert!(waited >= timeout, "gave up early: {waited:?}");
            }
            Ok(g) => panic!("a minority granted lock r with token {}", g.token()),
            Err(e) => panic!("unexpected error {e}"),
        }
        assert!(asked.elapsed() < timeout * 2, "overran its timeout");
        match alone.election("e2").campaign_timeout(timeout).await {
            Err(LockError::NoQuorum { .. }) => {}
            Ok(l) => panic!("a minority elected a leader in term {}", l.term()),
            Err(e) => panic!("unexpected error {e}"),
        }
        match alone.registry().register("n", "n").await {
            Err(RegistryError::Lock(LockError::NoQuorum { .. })) => {}
            other => panic!("a minority registered a name: {other:?}"),
        }
        assert!(matches!(
            alone.election("e").leader_linearizable().await,
            Err(LockError::NoQuorum { .. })
        ));
        drop((held, leading));
        alone.shutdown().await;
    })
    .await;
}
