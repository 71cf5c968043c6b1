//! A consensus group of real nodes on loopback: elections, locks through
//! followers and clients, failover, a minority, restarts and expiry.

mod members;
mod queue;
mod support;

use std::time::Duration;

use quicmesh_consensus::{ConsensusError, Voters};
use support::{Group, TestNode, agreed_leader, bounded, name, shutdown_all};
use tokio::time::Instant;

/// The lock wait of tests that expect a grant.
const LONG: Duration = Duration::from_secs(10);

/// The index of a node of `nodes` that is not `leader`.
fn follower(leader: usize) -> usize {
    (leader + 1) % 3
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_taken_through_a_follower_is_held_once_and_tokens_increase() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (nodes, leader) = group.start_led().await;
        let f = follower(leader);
        let other = (leader + 2) % 3;

        let first = nodes[f].consensus.lock("r", LONG).await.expect("granted");
        // While it is held, nobody else gets it: a short wait times out
        // naming the holder.
        match nodes[other]
            .consensus
            .lock("r", Duration::from_millis(300))
            .await
        {
            Err(ConsensusError::Timeout { owner, .. }) => assert_eq!(owner, *nodes[f].name()),
            Ok(g) => panic!(
                "lock granted twice: token {} while {} held",
                g.token(),
                first.token()
            ),
            Err(e) => panic!("unexpected error {e}"),
        }
        // A waiting holder gets it once it is released, with a larger token.
        let waiter = {
            let c = nodes[leader].consensus.clone();
            tokio::spawn(async move { c.lock("r", LONG).await })
        };
        let t1 = first.token();
        first.release().await.expect("released");
        let second = waiter.await.expect("task").expect("granted after release");
        assert!(second.token() > t1, "{} <= {t1}", second.token());

        // Tokens strictly increase over grants from every node.
        let mut last = second.token();
        second.release().await.expect("released");
        for round in 0..6 {
            let n = &nodes[round % 3];
            let g = n.consensus.lock("r", LONG).await.expect("granted");
            assert!(g.token() > last, "round {round}: {} <= {last}", g.token());
            last = g.token();
            g.release().await.expect("released");
        }
        shutdown_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_leader_is_replaced_and_the_survivors_grant_again() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (mut nodes, leader) = group.start_led().await;
        let before = nodes[follower(leader)]
            .consensus
            .lock("before", LONG)
            .await
            .expect("granted");
        let t0 = before.token();
        before.release().await.expect("released");

        let old = nodes.remove(leader);
        let old_name = old.name().clone();
        let killed = Instant::now();
        old.kill().await;
        let g = nodes[0]
            .consensus
            .lock("after", LONG)
            .await
            .expect("granted by survivors");
        let failover = killed.elapsed();
        println!(
            "failover: lock granted through the survivors {failover:?} after the leader was killed"
        );
        assert!(g.token() > t0);
        let new_leader = nodes[0].consensus.current_leader().expect("a leader");
        assert_ne!(new_leader, old_name);
        g.release().await.expect("released");
        shutdown_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_voter_restarted_from_its_data_dir_carries_the_next_failover() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (mut nodes, leader) = group.start_led().await;
        let t0 = nodes[follower(leader)]
            .consensus
            .lock("x", LONG)
            .await
            .expect("granted");
        let t0 = {
            let token = t0.token();
            t0.release().await.expect("released");
            token
        };

        // The first leader goes; the two others carry on.
        let first = nodes.remove(leader);
        let first_name = first.name().clone();
        first.kill().await;
        let g = nodes[0].consensus.lock("x", LONG).await.expect("granted");
        let t1 = g.token();
        g.release().await.expect("released");
        let second = agreed_leader(&nodes.iter().collect::<Vec<_>>()).await;
        let second_name = nodes[second].name().clone();
        assert_ne!(second_name, first_name);

        // It comes back from its data dir and follows the new leader...
        let peers: Vec<&TestNode> = nodes.iter().collect();
        let back = group.start(first_name.short(), &peers).await;
        nodes.push(back);
        let all: Vec<&TestNode> = nodes.iter().collect();
        let agreed = agreed_leader(&all).await;
        assert_eq!(
            *nodes[agreed].name(),
            second_name,
            "it follows, it does not take over"
        );

        // ...so when the second leader goes, it and the third voter are a
        // quorum: a third leader, and tokens still growing.
        let second = nodes.remove(agreed);
        second.kill().await;
        let back = nodes.len() - 1;
        let g = nodes[back]
            .consensus
            .lock("x", LONG)
            .await
            .expect("granted by the restarted voter and the third");
        assert!(t0 < t1 && t1 < g.token(), "{t0} < {t1} < {}", g.token());
        let third = agreed_leader(&nodes.iter().collect::<Vec<_>>()).await;
        assert_ne!(*nodes[third].name(), second_name);
        g.release().await.expect("released");
        shutdown_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_left_alone_never_grants() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (mut nodes, leader) = group.start_led().await;
        // Open the leader's session while there is a quorum.
        nodes[leader]
            .consensus
            .register("alone")
            .await
            .expect("registered with a quorum");
        let held = nodes[leader]
            .consensus
            .lock("held", LONG)
            .await
            .expect("granted with a quorum");
        let alone = nodes.remove(leader);
        for n in nodes {
            n.kill().await;
        }
        let cut = Instant::now();
        // Cut off, it can renew no more: by its own clock it counts the
        // lock as lost within a TTL (and a renewal period) of the cut.
        tokio::time::timeout(support::WAIT, held.lost())
            .await
            .expect("the cut-off holder is told of the loss");
        let told = cut.elapsed();
        println!("cut off: the holder counted its lock lost {told:?} after the cut");
        let ttl = group.config.session_ttl;
        assert!(
            told <= ttl + ttl / 3 + Duration::from_millis(500),
            "told late: {told:?}"
        );
        assert!(!held.is_held());
        std::mem::forget(held);
        let asked = Instant::now();
        match alone.consensus.lock("r", Duration::from_secs(2)).await {
            Err(ConsensusError::NoQuorum { waited }) => {
                assert!(
                    waited >= Duration::from_secs(2),
                    "gave up early: {waited:?}"
                );
            }
            Ok(g) => panic!("a minority granted lock r with token {}", g.token()),
            Err(e) => panic!("unexpected error {e}"),
        }
        assert!(
            asked.elapsed() < Duration::from_secs(4),
            "overran its timeout"
        );
        assert!(matches!(
            alone.consensus.register("other").await,
            Err(ConsensusError::NoQuorum { .. })
        ));
        assert!(matches!(
            alone.consensus.whereis("alone").await,
            Err(ConsensusError::NoQuorum { .. })
        ));
        alone.kill().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_group_restart_keeps_the_state_and_tokens_go_on_increasing() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let nodes = group.start_all().await;
        let held = nodes[0].consensus.lock("r", LONG).await.expect("granted");
        let t1 = held.token();
        nodes[1]
            .consensus
            .register("svc")
            .await
            .expect("registered");
        std::mem::forget(held);
        for n in nodes {
            n.kill().await;
        }

        let (nodes, _) = group.start_led().await;
        // Right after the election every old session has a full TTL: the
        // state from before the restart is all there.
        nodes[2].consensus.register("c").await.expect("c's session");
        assert_eq!(
            nodes[2]
                .consensus
                .whereis("svc")
                .await
                .expect("read")
                .map(|o| o.node),
            Some(name("b"))
        );
        match nodes[2]
            .consensus
            .lock("r", Duration::from_millis(300))
            .await
        {
            Err(ConsensusError::Timeout { owner, .. }) => assert_eq!(owner, name("a")),
            other => panic!("lock r should still be a's: {other:?}"),
        }
        // Once the old session expires, the lock goes on with a larger token.
        let g = nodes[2].consensus.lock("r", LONG).await.expect("granted");
        assert!(g.token() > t1, "{} <= {t1}", g.token());
        g.release().await.expect("released");
        shutdown_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_not_kept_alive_expires_and_its_lock_leadership_and_name_go_with_it() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (nodes, _) = group.start_led().await;
        // A client node (not a voter): its requests go to the leader.
        let client = group.start("d", &nodes.iter().collect::<Vec<_>>()).await;
        assert!(!client.consensus.is_voter());
        let held = client
            .consensus
            .lock("r", LONG)
            .await
            .expect("granted to the client");
        let t1 = held.token();
        assert_eq!(
            nodes[0].consensus.leader_stale("x").expect("voter read"),
            None
        );
        // It also leads an election and owns a name.
        let leading = client
            .consensus
            .campaign("e", LONG)
            .await
            .expect("the client leads");
        client.consensus.register("n").await.expect("registered");
        std::mem::forget(held);
        std::mem::forget(leading);
        let stopped = Instant::now();
        client.kill().await;
        let (lock, campaign) = tokio::join!(
            async {
                let g = nodes[0].consensus.lock("r", LONG).await;
                (g, stopped.elapsed())
            },
            async {
                let l = nodes[1].consensus.campaign("e", LONG).await;
                (l, stopped.elapsed())
            },
        );
        let (g, lock_after) = lock;
        let g = g.expect("lock granted after expiry");
        let (l, lead_after) = campaign;
        let l = l.expect("leadership won after expiry");
        let name_gone = nodes[2].consensus.whereis("n").await.expect("read");
        let name_after = stopped.elapsed();
        let ttl = group.config.session_ttl;
        println!(
            "expiry (ttl {ttl:?}): lock granted {lock_after:?}, leadership won \
             {lead_after:?}, name read as gone {name_after:?} after its holder stopped"
        );
        assert_eq!(name_gone, None, "the name went with the session");
        // The holder renewed at most a third of a TTL before it stopped.
        for (what, after) in [("lock", lock_after), ("leadership", lead_after)] {
            assert!(after >= ttl * 2 / 3, "{what} expired early: {after:?}");
        }
        assert!(g.token() > t1);
        assert!(l.token() > t1);
        g.release().await.expect("released");
        l.release().await.expect("resigned");
        shutdown_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_messages_are_refused_from_a_node_that_is_not_the_voter_they_claim() {
    use openraft::Vote;
    use openraft::error::RaftError;
    use openraft::raft::{VoteRequest, VoteResponse};
    use quicmesh_rpc::RpcError;

    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let nodes = group.start_all().await;
        let client = group.start("d", &nodes.iter().collect::<Vec<_>>()).await;
        let voters = Voters::new(&group.config.voters).expect("voters");
        let a = voters.id(&name("a")).expect("a is a voter");
        // Claims to be a, in a huge term that would depose any leader.
        let request = VoteRequest::new(Vote::new(1_000_000, a), None);
        for (caller, why) in [(&client, "not a voter"), (&nodes[1], "as voter")] {
            let answer: Result<Result<VoteResponse<u64>, RaftError<u64>>, RpcError> = caller
                .rpc
                .call(
                    nodes[2].name(),
                    "quicmesh.raft.vote",
                    &request,
                    Duration::from_secs(2),
                )
                .await;
            match answer {
                Err(RpcError::Remote { message, .. }) => {
                    assert!(message.contains(why), "{message}")
                }
                other => panic!("{} was not refused: {other:?}", caller.name()),
            }
        }
        shutdown_all(nodes).await;
        client.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_far_behind_catches_up_from_a_snapshot() {
    bounded(async {
        let mut group = Group::new(&["a", "b", "c"]);
        group.config.snapshot_every = 10;
        group.config.logs_kept_after_snapshot = 0;
        let (mut nodes, leader) = group.start_led().await;
        let behind = follower(leader);
        let behind_name = nodes[behind].name().to_string();
        let short = behind_name.split('@').next().unwrap_or_default().to_owned();
        nodes.remove(behind).kill().await;
        // Enough entries for snapshots that purge what the follower lacks.
        nodes[0]
            .consensus
            .register("snap")
            .await
            .expect("registered");
        let mut last = 0;
        for _ in 0..15 {
            let g = nodes[0].consensus.lock("r", LONG).await.expect("granted");
            last = g.token();
            g.release().await.expect("released");
        }
        let refs: Vec<&TestNode> = nodes.iter().collect();
        let back = group.start(&short, &refs).await;
        let owner = nodes[0].name().clone();
        support::eventually("the follower has the state from the snapshot", || {
            let found = back.consensus.whereis_stale("snap").ok()??;
            (found.node == owner && found.service == "snap").then_some(())
        })
        .await;
        let g = back.consensus.lock("r", LONG).await.expect("granted");
        assert!(g.token() > last);
        g.release().await.expect("released");
        nodes.push(back);
        shutdown_all(nodes).await;
    })
    .await;
}

/// Two tasks of one node share its session, so the group alone would
/// grant both the lock; the node gives its tasks one turn at a time.
#[tokio::test]
async fn two_tasks_of_one_node_take_a_lock_and_a_leadership_in_turn() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (nodes, leader) = group.start_led().await;
        let c = &nodes[follower(leader)].consensus;
        for take in ["lock", "campaign"] {
            let attempt = |wait| async move {
                match take {
                    "lock" => c.lock("shared", wait).await,
                    _ => c.campaign("shared", wait).await,
                }
            };
            let first = attempt(LONG).await.expect("granted");
            match attempt(Duration::from_millis(300)).await {
                Err(ConsensusError::Timeout { owner, .. }) => assert_eq!(owner, *c.name()),
                Ok(g) => panic!("{take}: granted twice on one node, token {}", g.token()),
                Err(e) => panic!("{take}: unexpected error {e}"),
            }
            let (t1, waiter) = (
                first.token(),
                tokio::spawn({
                    let c = c.clone();
                    async move {
                        match take {
                            "lock" => c.lock("shared", LONG).await,
                            _ => c.campaign("shared", LONG).await,
                        }
                    }
                }),
            );
            first.release().await.expect("released");
            let second = waiter.await.expect("task").expect("granted in turn");
            assert!(second.token() > t1, "{take}: {} <= {t1}", second.token());
            second.release().await.expect("released");
        }
        shutdown_all(nodes).await;
    })
    .await;
}

/// A release no quorum answered is retried in the background: once the
/// voters are back, the lock goes to the next asker while the releasing
/// node's session still lives (else that session would hold it for good).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_release_without_a_quorum_is_committed_once_the_quorum_is_back() {
    bounded(async {
        let mut group = Group::new(&["a", "b", "c"]);
        group.config.request_timeout = Duration::from_millis(400);
        group.config.session_ttl = Duration::from_secs(4);
        let (mut nodes, leader) = group.start_led().await;
        let peers: Vec<&TestNode> = nodes.iter().collect();
        let d = group.start("d", &peers).await;
        let guard = d.consensus.lock("x", LONG).await.expect("granted");
        let session = d.consensus.session_id();

        // The leader and another voter down: the release reaches no log
        // (the voter left is no leader), so only a later attempt can
        // commit it.
        let kept = follower(leader);
        let mut gone: Vec<TestNode> = Vec::new();
        for i in (0..3).rev().filter(|i| *i != kept) {
            gone.push(nodes.remove(i));
        }
        let (b, c) = (gone.remove(0), gone.remove(0));
        let (b_name, c_name) = (b.name().clone(), c.name().clone());
        b.kill().await;
        c.kill().await;
        match guard.release().await {
            Err(ConsensusError::NoQuorum { .. }) => {}
            other => panic!("release without a quorum: {other:?}"),
        }
        let peers: Vec<&TestNode> = nodes.iter().chain([&d]).collect();
        let b = group.start(b_name.short(), &peers).await;
        let c = group.start(c_name.short(), &peers).await;
        nodes.extend([b, c]);

        // Within less than d's session TTL: granted, so released.
        let other = nodes[0]
            .consensus
            .lock("x", Duration::from_secs(3))
            .await
            .expect("granted once d's release was committed");
        assert_eq!(d.consensus.session_id(), session, "d's session lived on");
        other.release().await.expect("released");
        nodes.push(d);
        shutdown_all(nodes).await;
    })
    .await;
}
