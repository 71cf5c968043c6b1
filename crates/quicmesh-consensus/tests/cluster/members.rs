//! Changing the voters of a running group, and what a voter whose data
//! directory was lost may do.

use std::time::Duration;

use quicmesh_consensus::{ConsensusError, Membership};
use quicmesh_wire::NodeName;
use tokio::time::Instant;

use crate::support::{
    Group, Start, TestNode, WAIT, agreed_leader, bounded, eventually, name, shutdown_all,
};

/// The wait of changes and locks that are expected to succeed.
const LONG: Duration = Duration::from_secs(10);
/// The wait of a lock that is expected to find no quorum.
const SHORT: Duration = Duration::from_secs(2);

fn names(shorts: &[&str]) -> Vec<NodeName> {
    shorts.iter().map(|s| name(s)).collect()
}

fn refs(nodes: &[TestNode]) -> Vec<&TestNode> {
    nodes.iter().collect()
}

/// Polls `node`'s linearizable membership until `cond` holds.
async fn membership_until(
    node: &TestNode,
    what: &str,
    cond: impl Fn(&Membership) -> bool,
) -> Membership {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(m) = node.consensus.membership().await {
            if cond(&m) {
                return m;
            }
        }
        assert!(Instant::now() < deadline, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Takes and releases a lock through `node`; its token.
async fn lock_once(node: &TestNode, resource: &str) -> u64 {
    let g = node
        .consensus
        .lock(resource, LONG)
        .await
        .unwrap_or_else(|e| panic!("lock {resource} through {}: {e}", node.name()));
    let token = g.token();
    g.release().await.expect("released");
    token
}

/// Expects a lock through `node` to find no quorum within [`SHORT`].
async fn no_quorum(node: &TestNode, resource: &str, why: &str) {
    match node.consensus.lock(resource, SHORT).await {
        Err(ConsensusError::NoQuorum { .. }) => {}
        Ok(g) => panic!("{why}: lock granted with token {}", g.token()),
        Err(e) => panic!("{why}: unexpected error {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_added_at_run_time_votes_and_a_removed_one_is_not_counted() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (mut nodes, leader) = group.start_led().await;
        let d = group.start_joining("d", &refs(&nodes)).await;
        assert_eq!(d.consensus.status().role, "joining");
        // Asked through a follower: forwarded to the leader.
        let follower = (leader + 1) % 3;
        let m = nodes[follower]
            .consensus
            .add_voter(d.name(), LONG)
            .await
            .expect("d added");
        assert_eq!(m.voters, names(&["a", "b", "c", "d"]));
        assert!(m.learners.is_empty(), "{m:?}");
        eventually("d follows as an admitted voter", || {
            (d.consensus.status().role == "follower").then_some(())
        })
        .await;
        let d_name = d.name().clone();
        nodes.push(d);
        for n in &nodes {
            eventually("every member applied the new membership", || {
                (n.consensus.status().voters.len() == 4).then_some(())
            })
            .await;
        }

        // The leader goes: three of four voters are left, so the next
        // leader needs d's vote, and every commit d's acknowledgement.
        let leader = agreed_leader(&refs(&nodes)).await;
        let gone = nodes.remove(leader);
        let gone_name = gone.name().clone();
        gone.kill().await;
        let t1 = lock_once(&nodes[0], "r").await;
        let d = nodes.iter().position(|n| *n.name() == d_name).expect("d");

        // Without the voter that went, three are left: one more may go.
        let m = nodes[d]
            .consensus
            .remove_voter(&gone_name, LONG)
            .await
            .expect("removed");
        assert_eq!(m.voters.len(), 3, "{m:?}");
        assert!(!m.voters.contains(&gone_name), "{m:?}");
        let original = (d + 1) % nodes.len();
        nodes.remove(original).kill().await;
        let d = nodes.iter().position(|n| *n.name() == d_name).expect("d");
        let t2 = lock_once(&nodes[d], "r").await;
        assert!(t2 > t1, "{t2} <= {t1}");
        shutdown_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_change_at_a_time_and_each_refusal_is_named() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (nodes, leader) = group.start_led().await;
        let follower = (leader + 1) % 3;
        let d = group.start_joining("d", &refs(&nodes)).await;
        // d answers its admission but takes no log: it never catches up.
        d.rpc.unregister("quicmesh.raft.append");
        d.rpc.unregister("quicmesh.raft.snapshot");
        let slow = {
            let (c, d) = (nodes[leader].consensus.clone(), d.name().clone());
            tokio::spawn(async move { c.add_voter(&d, Duration::from_secs(4)).await })
        };
        membership_until(&nodes[follower], "d is a learner", |m| {
            m.learners.contains(d.name())
        })
        .await;
        // The first change is under way: a second one is refused.
        match nodes[follower]
            .consensus
            .remove_voter(&name("c"), LONG)
            .await
        {
            Err(ConsensusError::MembershipChangeInProgress) => {}
            other => panic!("a second change while one is in progress: {other:?}"),
        }
        match slow.await.expect("task") {
            Err(ConsensusError::NotCaughtUp { node, .. }) => assert_eq!(node, *d.name()),
            other => panic!("d cannot catch up: {other:?}"),
        }
        let m = nodes[0].consensus.membership().await.expect("read");
        assert_eq!(m.voters, names(&["a", "b", "c"]));
        assert_eq!(m.learners, vec![d.name().clone()]);

        let c = &nodes[follower].consensus;
        match c.add_voter(&name("b"), LONG).await {
            Err(ConsensusError::AlreadyAVoter { node }) => assert_eq!(node, name("b")),
            other => panic!("b is a voter: {other:?}"),
        }
        match c.remove_voter(d.name(), LONG).await {
            Err(ConsensusError::NotAMember { node }) => assert_eq!(node, *d.name()),
            other => panic!("d is a learner, no voter: {other:?}"),
        }
        match c.add_voter(&name("nowhere"), LONG).await {
            Err(ConsensusError::CannotJoin { node, .. }) => assert_eq!(node, name("nowhere")),
            other => panic!("no such node runs: {other:?}"),
        }
        // A hidden node may not change the voters.
        let hidden = group.start_as("h", &refs(&nodes), Start::Hidden).await;
        match hidden.consensus.remove_voter(&name("c"), LONG).await {
            Err(ConsensusError::Refused { detail, .. }) => {
                assert!(detail.contains("visible"), "{detail}")
            }
            other => panic!("a hidden node changed the voters: {other:?}"),
        }
        hidden.kill().await;
        d.kill().await;
        shutdown_all(nodes).await;

        // A group of one cannot lose its last voter.
        let alone = Group::new(&["s"]);
        let (solo, _) = alone.start_led().await;
        match solo[0].consensus.remove_voter(&name("s"), LONG).await {
            Err(ConsensusError::WouldEmptyGroup { node }) => assert_eq!(node, name("s")),
            other => panic!("the last voter removed: {other:?}"),
        }
        shutdown_all(solo).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_with_an_empty_data_dir_votes_only_once_removed_and_added_again() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (mut nodes, _) = group.start_led().await;
        let t0 = lock_once(&nodes[1], "r").await;
        // a (the founder) loses its data directory and comes back.
        nodes.remove(0).kill().await;
        group.wipe("a");
        let a = group.start("a", &refs(&nodes)).await;
        assert_eq!(a.consensus.status().role, "joining");
        nodes.insert(0, a);
        // It follows the group's leader, and founds no group of its own.
        let leader = agreed_leader(&refs(&nodes)).await;
        assert_ne!(leader, 0, "a new store leads");
        let t1 = lock_once(&nodes[1], "r").await;
        assert!(t1 > t0, "{t1} <= {t0}");
        eventually("a has the log", || {
            let applied = nodes[0].consensus.status().last_applied?;
            (applied >= t1).then_some(())
        })
        .await;
        assert_eq!(nodes[0].consensus.status().role, "joining");

        // Its vote does not count: with the leader gone, the last
        // original voter finds no quorum.
        let old = nodes.remove(leader);
        let old_name = old.name().clone();
        old.kill().await;
        no_quorum(&nodes[1], "s", "a's new store voted").await;
        let back = group.start(old_name.short(), &refs(&nodes)).await;
        nodes.push(back);
        let t2 = lock_once(&nodes[1], "r").await;

        // Removed and added again, it votes.
        let c = &nodes[1].consensus;
        match c.add_voter(&name("a"), LONG).await {
            Err(ConsensusError::AlreadyAVoter { .. }) => {}
            other => panic!("a is still a voter: {other:?}"),
        }
        let m = c.remove_voter(&name("a"), LONG).await.expect("removed");
        assert!(!m.voters.contains(&name("a")), "{m:?}");
        let m = c.add_voter(&name("a"), LONG).await.expect("added");
        assert_eq!(m.voters, names(&["a", "b", "c"]));
        eventually("a is admitted", || {
            (nodes[0].consensus.status().role == "follower").then_some(())
        })
        .await;
        // The leader goes (or, if a leads, another voter): a and the last
        // one are a quorum only if a votes.
        let leader = agreed_leader(&refs(&nodes)).await;
        nodes
            .remove(if leader == 0 { 1 } else { leader })
            .kill()
            .await;
        let t3 = lock_once(&nodes[0], "r").await;
        assert!(t3 > t2, "{t3} <= {t2}");
        shutdown_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_founder_restarted_with_an_empty_data_dir_founds_no_second_group() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let nodes = group.start_all().await;
        lock_once(&nodes[1], "r").await;
        for n in nodes {
            n.kill().await;
        }
        // The founder and another voter lose their stores; the third
        // voter, the only one with the log, is down.
        group.wipe("a");
        group.wipe("c");
        let a = group.start("a", &[]).await;
        let c = group.start("c", &[&a]).await;
        no_quorum(&c, "r", "a second group was founded").await;
        assert_eq!(a.consensus.status().role, "joining");
        assert_eq!(c.consensus.status().role, "joining");
        // The voter with the log comes back: it alone cannot lead, and
        // the new stores neither found a group nor vote.
        let b = group.start("b", &[&a, &c]).await;
        no_quorum(&b, "s", "a new store voted").await;
        for n in [&a, &b, &c] {
            assert_ne!(n.consensus.status().role, "leader", "{} leads", n.name());
        }
        for n in [a, b, c] {
            n.kill().await;
        }
    })
    .await;
}
