//! Cluster coordination between real nodes on loopback: the global
//! registry, cluster locks with fencing tokens, elections and process
//! groups.

#[path = "../support/mod.rs"]
mod support;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicmesh::{
    GroupEvent, LeaderChange, LockError, LockOptions, Member, Node, NodeName, RegistryError,
    RegistryEvent, Token,
};
use support::*;
use tokio::sync::broadcast;

const COOKIE: &str = "coord-test-cookie";

/// `n` nodes, all connected to each other.
async fn cluster(prefix: &str, n: usize) -> Vec<Node> {
    let mut nodes = Vec::with_capacity(n);
    for i in 0..n {
        nodes.push(node(&format!("{prefix}{i}"), COOKIE).await);
    }
    for other in &nodes[1..] {
        other.connect(&nodes[0].addr()).await.expect("connect");
    }
    for node in &nodes {
        node.wait_for_nodes(n - 1, WAIT).await.expect("full mesh");
    }
    nodes
}

async fn shutdown_all(nodes: &[Node]) {
    for node in nodes {
        node.shutdown().await;
    }
}

/// Waits for the first event matching `pred` on a coordination stream.
async fn next<T: Clone>(
    rx: &mut broadcast::Receiver<T>,
    what: &str,
    pred: impl Fn(&T) -> bool,
) -> T {
    let wait = async {
        loop {
            let e = rx.recv().await.expect("stream open");
            if pred(&e) {
                return e;
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no {what} within {WAIT:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_name_registered_by_every_node_at_once_goes_to_exactly_one() {
    bounded(async {
        let nodes = cluster("reg", 3).await;
        for round in 0..50 {
            let name = format!("worker-{round}");
            let mut attempts = Vec::new();
            for n in &nodes {
                let (registry, name) = (n.registry(), name.clone());
                attempts.push(tokio::spawn(async move {
                    registry.register(&name, "work").await
                }));
            }
            let mut winners = Vec::new();
            let mut owners_seen = HashSet::new();
            for attempt in attempts {
                match attempt.await.expect("task") {
                    Ok(r) => winners.push(r.owner),
                    Err(RegistryError::AlreadyRegistered { owner, .. }) => {
                        owners_seen.insert(owner);
                    }
                    Err(e) => panic!("round {round}: {e}"),
                }
            }
            assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
            let winner = &winners[0];
            assert!(
                owners_seen.iter().all(|o| o == winner),
                "round {round}: losers were told {owners_seen:?}, the winner is {winner}"
            );
            for n in &nodes {
                let r = n.registry().whereis(&name).expect("registered everywhere");
                assert_eq!(&r.owner, winner, "{} disagrees in round {round}", n.name());
                assert_eq!(r.service, "work");
            }
        }
        assert_eq!(nodes[2].registry().registered_names().len(), 50);
        shutdown_all(&nodes).await;
    })
    .await;
}

#[tokio::test]
async fn a_registered_name_is_called_and_goes_with_its_owner() {
    bounded(async {
        let nodes = cluster("owner", 3).await;
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        // The seed's GlobalCache: whoever holds `cache_worker` serves it.
        let cache = Arc::new(Mutex::new(std::collections::HashMap::<String, String>::new()));
        let store = cache.clone();
        c.register("cache", move |_ctx, (key, value): (String, Option<String>)| {
            let store = store.clone();
            async move {
                let mut map = store.lock().expect("cache");
                Ok::<_, String>(match value {
                    Some(v) => map.insert(key, v),
                    None => map.get(&key).cloned(),
                })
            }
        })
        .expect("service");
        c.registry().register("cache_worker", "cache").await.expect("register");
        let put: Option<String> = a
            .registry()
            .call("cache_worker", &("colour", Some("blue")))
            .await
            .expect("put");
        assert_eq!(put, None);
        let got: Option<String> = b
            .registry()
            .call("cache_worker", &("colour", None::<String>))
            .await
            .expect("get");
        assert_eq!(got.as_deref(), Some("blue"));

        // Only the owner can unregister; then it is gone everywhere.
        assert!(!a.registry().unregister("cache_worker").await);
        c.registry().register("other", "cache").await.expect("register");
        assert!(c.registry().unregister("other").await);
        eventually("`other` unregistered everywhere", || {
            nodes.iter().all(|n| n.registry().whereis("other").is_none())
        })
        .await;

        // The owner goes: its names go on every node, with an event.
        let mut events = a.registry().events();
        c.shutdown().await;
        let gone = next(&mut events, "Unregistered", |e| {
            matches!(e, RegistryEvent::Unregistered { registration, owner_down: true } if registration.name == "cache_worker")
        })
        .await;
        drop(gone);
        eventually("cache_worker gone everywhere", || {
            [a, b].iter().all(|n| n.registry().whereis("cache_worker").is_none())
        })
        .await;
        let err = a
            .registry()
            .call::<_, Option<String>>("cache_worker", &("colour", None::<String>))
            .await
            .expect_err("no owner");
        assert!(matches!(err, RegistryError::NotRegistered(_)), "{err}");
        // Reserved service names cannot be taken by applications.
        assert!(a.register("quicmesh.lock.acquire", |_ctx, (): ()| async { Ok::<_, String>(()) }).is_err());
        shutdown_all(&[a.clone(), b.clone()]).await;
    })
    .await;
}

/// The protected resource: a counter on its own node that accepts a write
/// only with a fencing token above every token it has seen, and records
/// any overlap of two holders.
#[derive(Debug, Default)]
struct Fenced {
    last_token: Token,
    inside: Option<Token>,
    tokens: Vec<Token>,
    overlaps: u32,
    stale: u32,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_tasks_on_three_nodes_take_one_lock_two_hundred_times_without_overlap() {
    bounded(async {
        let nodes = cluster("lock", 4).await;
        let counter = &nodes[3];
        let state = Arc::new(Mutex::new(Fenced::default()));
        let s = state.clone();
        counter
            .register("enter", move |_ctx, token: Token| {
                let s = s.clone();
                async move {
                    let mut f = s.lock().expect("state");
                    if token <= f.last_token {
                        f.stale += 1;
                        return Err(format!("stale token {token} ≤ {}", f.last_token));
                    }
                    if f.inside.is_some() {
                        f.overlaps += 1;
                    }
                    f.last_token = token;
                    f.inside = Some(token);
                    f.tokens.push(token);
                    Ok(())
                }
            })
            .expect("enter");
        let s = state.clone();
        counter
            .register("leave", move |_ctx, token: Token| {
                let s = s.clone();
                async move {
                    let mut f = s.lock().expect("state");
                    if f.inside == Some(token) {
                        f.inside = None;
                    }
                    Ok::<_, String>(())
                }
            })
            .expect("leave");

        let taken = Arc::new(AtomicU32::new(0));
        let mut tasks = tokio::task::JoinSet::new();
        for node in &nodes[..3] {
            for _ in 0..10 {
                let (node, taken, counter) = (node.clone(), taken.clone(), counter.name().clone());
                tasks.spawn(async move {
                    while taken.fetch_add(1, Ordering::SeqCst) < 200 {
                        let guard = node.lock("counter").await.expect("lock");
                        let token = guard.token();
                        node.call::<_, ()>(&counter, "enter", &token)
                            .await
                            .expect("a live holder's write is accepted");
                        tokio::task::yield_now().await;
                        node.call::<_, ()>(&counter, "leave", &token)
                            .await
                            .expect("leave");
                        drop(guard);
                    }
                });
            }
        }
        while let Some(done) = tasks.join_next().await {
            done.expect("task");
        }
        {
            let f = state.lock().expect("state");
            assert_eq!(f.tokens.len(), 200);
            assert_eq!(f.overlaps, 0, "two holders at once");
            assert_eq!(f.stale, 0);
            assert!(
                f.tokens.windows(2).all(|w| w[0] < w[1]),
                "tokens not increasing"
            );
        }
        shutdown_all(&nodes).await;
    })
    .await;
}

#[tokio::test]
async fn a_lock_is_released_by_its_guard_its_task_and_its_node_going_down() {
    bounded(async {
        let nodes = cluster("held", 3).await;
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        let quick = LockOptions::default().timeout(Duration::from_millis(300));

        let guard = a.lock("r").await.expect("lock");
        let first = guard.token();
        let err = b.lock_with("r", &quick).await.expect_err("held by a");
        assert!(matches!(err, LockError::Timeout { .. }), "{err}");
        drop(guard);
        let guard = b.lock("r").await.expect("free after the guard is dropped");
        assert!(guard.token() > first);
        guard.release().await;

        // A task that ends (here: panics) releases what it held.
        let holder = c.clone();
        let task = tokio::spawn(async move {
            let _guard = holder.lock("r").await.expect("lock");
            panic!("the task holding the lock fails");
        });
        assert!(task.await.is_err());
        let guard = a.lock("r").await.expect("free after the task ended");

        // `trans` runs under the lock with a larger token.
        let token = guard.token();
        drop(guard);
        let inner = b.trans("r", |t| async move { t }).await.expect("trans");
        assert!(inner > token);

        // The holder's node goes down: the others release its lock.
        let guard = c.lock("r").await.expect("lock");
        let held_token = guard.token();
        let started = tokio::time::Instant::now();
        c.shutdown().await;
        let next = a
            .lock("r")
            .await
            .expect("free after its holder's node went down");
        assert!(next.token() > held_token);
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{:?}",
            started.elapsed()
        );
        drop(guard);
        drop(next);
        shutdown_all(&[a.clone(), b.clone()]).await;
    })
    .await;
}

#[tokio::test]
async fn hidden_nodes_take_no_part_in_coordination() {
    bounded(async {
        let nodes = cluster("shy", 2).await;
        let (a, b) = (&nodes[0], &nodes[1]);
        a.registry()
            .register("before", "svc")
            .await
            .expect("register");
        let hidden = Node::builder()
            .name("shy-admin@127.0.0.1")
            .listen("127.0.0.1:0".parse().expect("addr"))
            .cookie(COOKIE)
            .hidden(true)
            .start()
            .await
            .expect("hidden node");
        hidden.connect(&a.addr()).await.expect("connect a");
        hidden.connect(&b.addr()).await.expect("connect b");
        let guard = a.lock("r").await.expect("lock");
        assert_eq!(
            guard.nodes(),
            [a.name().clone(), b.name().clone()],
            "no grant asked of it"
        );
        a.registry()
            .register("after", "svc")
            .await
            .expect("register");
        let leadership = b.election("e").campaign().await.expect("lead");
        // The visible nodes agree; the hidden one was told nothing.
        assert!(b.registry().whereis("after").is_some());
        assert_eq!(a.election("e").leader().leader.as_ref(), Some(b.name()));
        assert!(hidden.registry().whereis("before").is_none());
        assert!(hidden.registry().whereis("after").is_none());
        assert_eq!(hidden.election("e").leader().leader, None);
        // It leaving releases nothing and makes no one retry.
        hidden.shutdown().await;
        assert!(!guard.is_lost() && !leadership.is_lost());
        drop(guard);
        drop(leadership);
        shutdown_all(&nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_leader_at_a_time_through_resignation_and_shutdown() {
    bounded(async {
        let nodes = cluster("elect", 3).await;
        let mut observers: Vec<_> = nodes.iter().map(|n| n.election("boss").observe()).collect();

        // Everyone campaigns; a sampler checks that never two lead.
        let sampled = nodes.clone();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop2 = stop.clone();
        let sampler = tokio::spawn(async move {
            let mut samples = 0u32;
            while !stop2.load(Ordering::SeqCst) {
                let leading: Vec<&NodeName> = sampled
                    .iter()
                    .filter(|n| !n.is_shutdown() && n.election("boss").am_leader())
                    .map(|n| n.name())
                    .collect();
                assert!(leading.len() <= 1, "two leaders: {leading:?}");
                samples += 1;
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            samples
        });
        let mut campaigns: Vec<_> = nodes
            .iter()
            .map(|n| {
                let election = n.election("boss");
                Some(tokio::spawn(async move { election.campaign().await }))
            })
            .collect();

        // The first leader resigns: another takes over.
        let first = wait_for_leader(&nodes, None).await;
        let first_term = nodes[0].election("boss").leader().term;
        let i = nodes
            .iter()
            .position(|n| n.name() == &first)
            .expect("leader");
        let leadership = campaigns[i]
            .take()
            .expect("campaign")
            .await
            .expect("task")
            .expect("leads");
        assert_eq!(leadership.term(), first_term);
        leadership.resign().await;
        let second = wait_for_leader(&nodes, Some(&first)).await;
        let j = nodes
            .iter()
            .position(|n| n.name() == &second)
            .expect("leader");
        let second_leadership = campaigns[j]
            .take()
            .expect("campaign")
            .await
            .expect("task")
            .expect("leads");
        assert!(second_leadership.term() > first_term);

        // The second leader's node goes away: the last campaigner leads.
        let k = (0..3).find(|k| *k != i && *k != j).expect("third");
        let started = tokio::time::Instant::now();
        nodes[j].shutdown().await;
        std::mem::forget(second_leadership);
        let third = campaigns[k]
            .take()
            .expect("campaign")
            .await
            .expect("task")
            .expect("leads");
        assert!(started.elapsed() < Duration::from_secs(2));
        assert_eq!(
            nodes[i].election("boss").leader().leader.as_ref(),
            Some(nodes[k].name())
        );
        stop.store(true, Ordering::SeqCst);
        assert!(sampler.await.expect("sampler") > 10);

        // Every node still up saw the same leaders, in term order.
        for (n, obs) in nodes.iter().zip(observers.iter_mut()) {
            if n.is_shutdown() {
                continue;
            }
            let mut leaders = Vec::new();
            while let Ok(LeaderChange { leader, term }) = obs.try_recv() {
                if let Some(l) = leader {
                    leaders.push((l, term));
                }
            }
            let names: Vec<&NodeName> = leaders.iter().map(|(l, _)| l).collect();
            assert_eq!(
                names,
                vec![&first, &second, nodes[k].name()],
                "{} saw {leaders:?}",
                n.name()
            );
            assert!(leaders.windows(2).all(|w| w[0].1 < w[1].1));
        }
        drop(third);
        shutdown_all(&nodes).await;
    })
    .await;
}

/// Waits until every node still up names the same leader, other than
/// `not`.
async fn wait_for_leader(nodes: &[Node], not: Option<&NodeName>) -> NodeName {
    let mut agreed = None;
    eventually("one leader known everywhere", || {
        let views: HashSet<Option<NodeName>> = nodes
            .iter()
            .filter(|n| !n.is_shutdown())
            .map(|n| n.election("boss").leader().leader)
            .collect();
        agreed = match views.into_iter().collect::<Vec<_>>().as_slice() {
            [Some(l)] if Some(l) != not => Some(l.clone()),
            _ => None,
        };
        agreed.is_some()
    })
    .await;
    agreed.expect("leader")
}

#[tokio::test]
async fn group_membership_follows_join_leave_and_node_death() {
    bounded(async {
        let nodes = cluster("pg", 3).await;
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        let mut events = a.groups().events();
        assert!(b.groups().join("workers", "work").await);
        assert!(c.groups().join("workers", "work").await);
        assert!(c.groups().join("workers", "work").await);
        let member = |n: &Node| Member {
            node: n.name().clone(),
            service: "work".to_owned(),
        };
        eventually("three memberships everywhere", || {
            nodes
                .iter()
                .all(|n| n.groups().members("workers").len() == 3)
        })
        .await;
        assert_eq!(
            c.groups().local_members("workers"),
            vec![member(c), member(c)]
        );
        assert_eq!(a.groups().which_groups(), vec!["workers".to_owned()]);

        assert!(b.groups().leave("workers", "work").await);
        assert!(!b.groups().leave("workers", "work").await);
        eventually("b left everywhere", || {
            nodes
                .iter()
                .all(|n| n.groups().members("workers") == vec![member(c), member(c)])
        })
        .await;

        // A node that joins later learns the whole membership.
        let d = node("pg3", COOKIE).await;
        d.connect(&a.addr()).await.expect("connect");
        eventually("d learns the groups", || {
            d.groups().members("workers").len() == 2
        })
        .await;

        // c goes: its members leave every group, with events.
        c.shutdown().await;
        eventually("c's members gone", || {
            [a, b, &d]
                .iter()
                .all(|n| n.groups().members("workers").is_empty())
        })
        .await;
        let mut left = 0;
        while let Ok(e) = events.try_recv() {
            if matches!(&e, GroupEvent::Left { member: m, .. } if m.node == *c.name()) {
                left += 1;
            }
        }
        assert_eq!(left, 2, "one Left per membership of c");
        shutdown_all(&[a.clone(), b.clone(), d]).await;
    })
    .await;
}

/// The answer of `quicmesh.registry.put`, as it travels.
#[derive(Debug, serde::Deserialize)]
#[allow(dead_code)] // `Stored` is never expected here
enum PutAnswer {
    Stored,
    Taken(NodeName),
}

#[tokio::test]
async fn a_node_cannot_register_release_or_sync_for_another() {
    bounded(async {
        let nodes = cluster("forge", 3).await;
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        let forged = quicmesh::Registration {
            name: "forged".to_owned(),
            owner: c.name().clone(),
            service: "s".to_owned(),
            registered_at: quicmesh::Hlc {
                millis: 1,
                counter: 0,
            },
            supersedes: None,
        };
        // a claims a registration of c's: b refuses it.
        let answer: PutAnswer = a
            .call(b.name(), "quicmesh.registry.put", &forged)
            .await
            .expect("answered");
        assert!(matches!(answer, PutAnswer::Taken(_)), "{answer:?}");
        a.call::<_, ()>(b.name(), "quicmesh.registry.sync", &vec![forged.clone()])
            .await
            .expect("answered");
        assert!(b.registry().whereis("forged").is_none());

        // c holds a lock on b and c; a cannot release it on b for c.
        let on_b = LockOptions::default().nodes(vec![b.name().clone()]);
        let guard = c.lock_with("held", &on_b).await.expect("lock");
        let forged_release = ("held".to_owned(), (c.name().clone(), c.incarnation(), 1u64));
        a.call::<_, ()>(b.name(), "quicmesh.lock.release", &forged_release)
            .await
            .expect("answered");
        let a_and_b = LockOptions::default()
            .nodes(vec![b.name().clone()])
            .timeout(Duration::from_millis(300));
        assert!(
            a.lock_with("held", &a_and_b).await.is_err(),
            "still c's on b"
        );
        drop(guard);
        let freed = a.lock_with("held", &on_b).await;
        assert!(freed.is_ok(), "free once c releases it");
        shutdown_all(&nodes).await;
    })
    .await;
}

/// Milliseconds since the Unix epoch, as the nodes' clocks read.
fn wall_millis() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_millis() as u64
}

#[tokio::test]
async fn forged_claims_and_announcements_from_a_connected_node_change_nothing() {
    bounded(async {
        use quicmesh_wire::coord::{Announce, PutAnswer};
        let nodes = cluster("lie", 3).await;
        let (liar, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        // b registers `x`; every node stores it (the liar acknowledges it).
        let x = b.registry().register("x", "s").await.expect("b registers");
        eventually("every node knows b has x", || {
            nodes
                .iter()
                .all(|n| n.registry().whereis("x").as_ref() == Some(&x))
        })
        .await;
        let mut b_events = b.registry().events();
        let mut c_events = c.registry().events();
        let claim = |name: &str, millis: u64| quicmesh::Registration {
            name: name.to_owned(),
            owner: liar.name().clone(),
            service: "s".to_owned(),
            registered_at: quicmesh::Hlc { millis, counter: 0 },
            supersedes: None,
        };
        // The liar claims `x` with the earliest clock there is, and a new
        // name with a clock an hour ahead.
        let hour = 3_600_000;
        let forged = vec![claim("x", 0), claim("ahead", wall_millis() + hour)];
        for victim in [b, c] {
            liar.call::<_, ()>(victim.name(), "quicmesh.registry.sync", &forged)
                .await
                .expect("answered");
        }
        // A registration written as new with an old clock is refused.
        let answer: PutAnswer = liar
            .call(b.name(), "quicmesh.registry.put", &claim("old", 1))
            .await
            .expect("answered");
        assert_eq!(answer, PutAnswer::BadClock);
        // A sync is served at once: its effects are in place now.
        for n in [b, c] {
            assert_eq!(n.registry().whereis("x"), Some(x.clone()), "x is still b's");
            assert!(n.registry().whereis("ahead").is_none());
            assert!(n.registry().whereis("old").is_none());
        }
        for events in [&mut b_events, &mut c_events] {
            assert!(
                events.try_recv().is_err(),
                "no registry event came of the forgeries"
            );
        }

        // c leads `boss`; the liar announces that it leads with a larger
        // term, and that c resigned.
        let leadership = c.election("boss").campaign().await.expect("c leads");
        let led_by_c = LeaderChange {
            leader: Some(c.name().clone()),
            term: leadership.term(),
        };
        eventually("every node follows c", || {
            nodes
                .iter()
                .all(|n| n.election("boss").leader() == led_by_c)
        })
        .await;
        let lies = [
            Announce {
                election: "boss".into(),
                term: u128::MAX,
                leading: true,
            },
            Announce {
                election: "boss".into(),
                term: leadership.term().get(),
                leading: false,
            },
            Announce {
                election: "nobody-leads".into(),
                term: 1,
                leading: true,
            },
        ];
        for lie in &lies {
            liar.call::<_, ()>(b.name(), "quicmesh.election.announce", lie)
                .await
                .expect("answered");
        }
        assert_eq!(b.election("boss").leader(), led_by_c, "b still follows c");
        assert_eq!(b.election("nobody-leads").leader().leader, None);
        assert!(!leadership.is_lost());
        // Each refusal is counted where it happened.
        let counted = b.coordination_counters();
        assert_eq!(counted.claims_refused, 1, "{counted:?}");
        assert_eq!(counted.clocks_refused, 2, "the hour ahead, the old put");
        assert_eq!(counted.announcements_refused, 2, "{counted:?}");
        assert_eq!(
            c.coordination_counters().claims_refused,
            0,
            "c only holds it waiting"
        );
        leadership.resign().await;
        shutdown_all(&nodes).await;
    })
    .await;
}

#[tokio::test]
async fn nodes_that_meet_with_the_same_name_keep_one_by_the_rule_in_force() {
    bounded(async {
        // Two pairs that never met: each registers `x`, then they connect.
        for latest_wins in [false, true] {
            let prefix = if latest_wins { "late" } else { "early" };
            let nodes = [
                node(&format!("{prefix}0"), COOKIE).await,
                node(&format!("{prefix}1"), COOKIE).await,
            ];
            let (a, b) = (&nodes[0], &nodes[1]);
            if latest_wins {
                for n in &nodes {
                    n.registry().set_resolver(|x, y| {
                        if x.registered_at >= y.registered_at {
                            quicmesh::Keep::First
                        } else {
                            quicmesh::Keep::Second
                        }
                    });
                }
            }
            let first = a.registry().register("x", "s").await.expect("a alone");
            // The clocks count milliseconds: let the second be later.
            tokio::time::sleep(Duration::from_millis(5)).await;
            let second = b.registry().register("x", "s").await.expect("b alone");
            assert!(first.registered_at < second.registered_at);
            let mut a_events = a.registry().events();
            let mut b_events = b.registry().events();
            b.connect(&a.addr()).await.expect("connect");
            let (winner, loser) = if latest_wins { (b, a) } else { (a, b) };
            for events in [&mut a_events, &mut b_events] {
                let conflict = next(events, "Conflict", |e| {
                    matches!(e, RegistryEvent::Conflict { .. })
                })
                .await;
                let RegistryEvent::Conflict { kept, dropped } = conflict else {
                    unreachable!()
                };
                assert_eq!(&kept.owner, winner.name());
                assert_eq!(&dropped.owner, loser.name());
            }
            for n in &nodes {
                eventually("one owner on both", || {
                    n.registry()
                        .whereis("x")
                        .is_some_and(|r| &r.owner == winner.name())
                })
                .await;
            }
            shutdown_all(&nodes).await;
        }
    })
    .await;
}

#[tokio::test]
async fn bad_names_and_exhausted_retries_are_named_errors() {
    bounded(async {
        let nodes = cluster("bad", 2).await;
        let (a, b) = (&nodes[0], &nodes[1]);
        let err = a.lock("").await.expect_err("empty resource");
        assert!(matches!(err, LockError::BadResource(_)), "{err}");
        let err = a.lock(&"r".repeat(1025)).await.expect_err("too long");
        assert!(matches!(err, LockError::BadResource(_)), "{err}");

        // Held elsewhere: with no retries, one attempt and a Timeout.
        let guard = b.lock("held").await.expect("lock");
        let once = LockOptions::default().retries(0);
        let err = a.lock_with("held", &once).await.expect_err("held by b");
        assert!(
            matches!(err, LockError::Timeout { attempts: 1, .. }),
            "{err}"
        );
        drop(guard);

        for bad in [String::new(), "n".repeat(256)] {
            let err = a
                .registry()
                .register(&bad, "s")
                .await
                .expect_err("bad name");
            assert!(matches!(err, RegistryError::BadName(_)), "{err}");
        }
        assert!(!a.groups().join("", "s").await);
        assert!(!a.groups().leave("never-joined", "s").await);
        shutdown_all(&nodes).await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_attempt_given_up_half_way_leaves_nothing_held() {
    bounded(async {
        let nodes = cluster("drop", 3).await;
        let (a, b) = (&nodes[0], &nodes[1]);
        // Attempts cut off after a few hundred microseconds: some while
        // nodes have granted and others not answered yet.
        for i in 0..200u64 {
            let cut = Duration::from_micros(50 + (i * 37) % 900);
            let _ = tokio::time::timeout(cut, a.lock("contended")).await;
        }
        // Whatever the cut-off attempts were granted goes back: b takes it.
        let options = LockOptions::default().timeout(Duration::from_secs(5));
        let guard = b.lock_with("contended", &options).await;
        assert!(guard.is_ok(), "the lock stayed held: {guard:?}");
        drop(guard);
        shutdown_all(&nodes).await;
    })
    .await;
}

/// How many locks `node`'s own table holds (its `quicmesh_locks_held`).
fn locks_held(node: &Node) -> u64 {
    use quicmesh::prometheus_client::{encoding::text::encode, registry::Registry};
    let mut registry = Registry::default();
    node.register_metrics(&mut registry);
    let mut text = String::new();
    encode(&mut text, &registry).expect("metrics encode");
    text.lines()
        .find_map(|l| l.strip_prefix("quicmesh_locks_held "))
        .and_then(|v| v.trim().parse().ok())
        .expect("quicmesh_locks_held reported")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_held_before_a_node_came_up_is_released_there_too() {
    bounded(async {
        let nodes = cluster("late", 2).await;
        let a = &nodes[0];
        let guard = a.lock("r").await.expect("lock");
        let c = node("late-c", COOKIE).await;
        c.connect(&a.addr()).await.expect("connect");
        c.wait_for_nodes(2, WAIT).await.expect("full mesh");
        eventually("the new node to hear of a's lock", || locks_held(&c) == 1).await;
        drop(guard);
        eventually("the new node to release a's lock", || locks_held(&c) == 0).await;
        let options = LockOptions::default().timeout(Duration::from_secs(5));
        let taken = c.lock_with("r", &options).await;
        assert!(taken.is_ok(), "the lock stayed held: {taken:?}");
        drop(taken);
        shutdown_all(&nodes).await;
        c.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_released_while_a_new_node_is_told_of_it_is_not_left_there() {
    bounded(async {
        let a = node("race-a", COOKIE).await;
        // Each round a node comes up and the lock is dropped at once: the
        // release and the news of the lock race to the new node.
        for round in 0..30u32 {
            let resource = format!("r{round}");
            let guard = a.lock(&resource).await.expect("lock");
            let mut events = a.events();
            let c = node(&format!("race-c{round}"), COOKIE).await;
            c.connect(&a.addr()).await.expect("connect");
            next_event(
                &mut events,
                "the new node up",
                |e| matches!(e, quicmesh::NodeEvent::NodeUp { node, .. } if node == c.name()),
            )
            .await;
            for _ in 0..round % 4 {
                tokio::task::yield_now().await;
            }
            drop(guard);
            eventually(
                &format!("round {round}: nothing held on the new node"),
                || locks_held(&c) == 0 && locks_held(&a) == 0,
            )
            .await;
            // Held a little longer: a release still in flight shows.
            tokio::time::sleep(Duration::from_millis(20)).await;
            assert_eq!(locks_held(&c), 0, "round {round}: a's lock came back");
            c.shutdown().await;
        }
        a.shutdown().await;
    })
    .await;
}
