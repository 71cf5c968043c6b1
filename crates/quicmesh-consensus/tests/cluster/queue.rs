//! The waiters' queue of a lock: a contended lock is handed from holder to
//! waiter in the releasing entry, one holder at a time, and a waiter that
//! gives up leaves no grant behind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicmesh_consensus::ConsensusError;
use tokio::time::Instant;

use crate::support::{Group, TestNode, bounded, shutdown_all};

/// The lock wait of takes that expect a grant.
const LONG: Duration = Duration::from_secs(10);

/// Holders of the lock as its users see them: who holds it now, and every
/// token in the order it was granted.
#[derive(Default)]
struct Seen {
    holder: Option<u64>,
    tokens: Vec<u64>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_contended_lock_goes_round_the_nodes_one_holder_at_a_time() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (mut nodes, _) = group.start_led().await;
        // A client of the group too: it waits through a voter.
        let peers: Vec<&TestNode> = nodes.iter().collect();
        let client = group.start("d", &peers).await;
        assert!(!client.consensus.is_voter());
        nodes.push(client);

        const TASKS: usize = 3;
        const ROUNDS: usize = 8;
        let seen = Arc::new(Mutex::new(Seen::default()));
        let mut tasks = tokio::task::JoinSet::new();
        for node in &nodes {
            for _ in 0..TASKS {
                let (c, seen) = (node.consensus.clone(), seen.clone());
                tasks.spawn(async move {
                    for _ in 0..ROUNDS {
                        let guard = c.lock("q", LONG).await.expect("granted in turn");
                        {
                            let mut s = seen.lock().expect("seen");
                            assert_eq!(s.holder, None, "two holders: {}", guard.token());
                            if let Some(last) = s.tokens.last() {
                                assert!(guard.token() > *last, "{} <= {last}", guard.token());
                            }
                            s.holder = Some(guard.token());
                            s.tokens.push(guard.token());
                        }
                        tokio::time::sleep(Duration::from_millis(2)).await;
                        seen.lock().expect("seen").holder = None;
                        guard.release().await.expect("released");
                    }
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("a taker");
        }
        let granted = seen.lock().expect("seen").tokens.len();
        assert_eq!(granted, nodes.len() * TASKS * ROUNDS);
        shutdown_all(nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_waiter_that_gives_up_leaves_no_grant_behind() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (nodes, leader) = group.start_led().await;
        let holder = &nodes[leader].consensus;
        let (b, c) = (
            &nodes[(leader + 1) % 3].consensus,
            &nodes[(leader + 2) % 3].consensus,
        );
        for how in ["times out", "is dropped"] {
            let held = holder.lock("g", LONG).await.expect("granted");
            match how {
                "times out" => match b.lock("g", Duration::from_millis(300)).await {
                    Err(ConsensusError::Timeout { owner, .. }) => {
                        assert_eq!(owner, *holder.name());
                    }
                    Ok(g) => panic!("granted while held: {}", g.token()),
                    Err(e) => panic!("{e}"),
                },
                _ => {
                    let waited =
                        tokio::time::timeout(Duration::from_millis(300), b.lock("g", LONG));
                    assert!(waited.await.is_err(), "granted while held");
                }
            }
            // b left the queue: the release goes to the next asker, well
            // before b's session would have expired.
            let token = held.token();
            held.release().await.expect("released");
            let started = Instant::now();
            let next = c.lock("g", LONG).await.expect("granted");
            assert!(next.token() > token);
            assert!(
                started.elapsed() < group.config.session_ttl / 2,
                "{how}: the lock came after {:?}",
                started.elapsed()
            );
            next.release().await.expect("released");
            // And b can take it again.
            let again = b.lock("g", LONG).await.expect("granted");
            again.release().await.expect("released");
        }
        shutdown_all(nodes).await;
    })
    .await;
}

/// A release with another task of the node waiting puts the node back in
/// line for that task; if the task gives up first, what was left for it
/// goes back to the group.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_left_for_a_task_that_gave_up_goes_back() {
    bounded(async {
        let group = Group::new(&["a", "b", "c"]);
        let (nodes, leader) = group.start_led().await;
        let (a, c) = (
            &nodes[(leader + 1) % 3].consensus,
            &nodes[(leader + 2) % 3].consensus,
        );
        let held = a.lock("h", LONG).await.expect("granted");
        // A second task of the node waits for its turn (polled once, so
        // it is in line for the turn)...
        let mut second = Box::pin(a.lock("h", LONG));
        let polled = tokio::time::timeout(Duration::ZERO, second.as_mut()).await;
        assert!(polled.is_err(), "the turn is the first task's");
        // ...when the first releases, and gives up before it is done.
        let mut release = Box::pin(held.release());
        let polled = tokio::time::timeout(Duration::ZERO, release.as_mut()).await;
        assert!(polled.is_err(), "a release is a commit");
        drop(second);
        release.await.expect("released");
        // The node was granted the lock again for the second task; no task
        // has it, so it goes back and the next asker gets it.
        let started = Instant::now();
        let next = c.lock("h", LONG).await.expect("granted");
        assert!(
            started.elapsed() < group.config.session_ttl / 2,
            "the lock came after {:?}",
            started.elapsed()
        );
        next.release().await.expect("released");
        shutdown_all(nodes).await;
    })
    .await;
}
