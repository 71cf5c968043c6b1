//! Consensus mode beside global mode and an RPC round trip, in one run:
//! two 3-node clusters in one process on loopback, the consensus one with
//! its Raft log on disk (each append and vote fsync'd before it is
//! acknowledged).
//!
//! - sequential, one task on a node that is not the Raft leader (as most
//!   callers are): lock + unlock, register + unregister, a linearizable
//!   `whereis`, campaign + resign; p50 and p99;
//! - contended: 3 nodes × 10 tasks taking one lock in turn for a while;
//!   acquisitions per second.
//!
//! Run: `cargo bench --bench consensus` (`-- --quick` for fewer rounds).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use quicmesh::{ConsensusConfig, LockOptions, Node, NodeName};

const COOKIE: &str = "bench-cookie";
const LONG: Duration = Duration::from_secs(30);

/// Three nodes meshed; consensus mode (all three voters, stores under
/// `dir`) if `dir` is given.
async fn cluster(prefix: &str, dir: Option<&std::path::Path>) -> Vec<Node> {
    let names: Vec<NodeName> = (0..3)
        .map(|i| format!("{prefix}{i}@127.0.0.1").parse().expect("name"))
        .collect();
    let mut nodes = Vec::new();
    for name in &names {
        let mut builder = Node::builder()
            .name(name.to_string())
            .listen("127.0.0.1:0".parse().expect("addr"))
            .cookie(COOKIE);
        if let Some(dir) = dir {
            let config = ConsensusConfig {
                voters: names.clone(),
                data_dir: Some(dir.join(name.to_string())),
                ..ConsensusConfig::default()
            };
            builder = builder.consensus(config);
        }
        nodes.push(builder.start().await.expect("node starts"));
    }
    for n in &nodes[1..] {
        n.connect(&nodes[0].addr()).await.expect("connect");
    }
    for n in &nodes {
        n.wait_for_nodes(2, LONG).await.expect("mesh");
    }
    nodes[1]
        .register("noop", |_ctx, (): ()| async { Ok::<_, String>(()) })
        .expect("noop");
    nodes
}

/// A node of the consensus cluster that is not the Raft leader, once the
/// group has one.
async fn follower(nodes: &[Node]) -> Node {
    let deadline = Instant::now() + LONG;
    loop {
        let c = nodes[0].consensus().expect("consensus mode");
        if let Some(leader) = c.current_leader() {
            // A write through it, so the group serves.
            let first = nodes.iter().find(|n| *n.name() != leader).expect("3 nodes");
            let c = first.consensus().expect("consensus mode");
            if c.register("warm-up").await.is_ok() {
                c.unregister("warm-up").await.expect("unregister");
                return first.clone();
            }
        }
        assert!(Instant::now() < deadline, "no Raft leader");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// p50 and p99 of `rounds` runs of `step` (after a few unmeasured ones).
async fn timed<F, Fut>(rounds: usize, mut step: F) -> (Duration, Duration)
where
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = ()>,
{
    for i in 0..rounds / 10 + 1 {
        step(usize::MAX - i).await;
    }
    let mut took = Vec::with_capacity(rounds);
    for i in 0..rounds {
        let started = Instant::now();
        step(i).await;
        took.push(started.elapsed());
    }
    took.sort();
    let at = |q: f64| took[((took.len() as f64 * q) as usize).min(took.len() - 1)];
    (at(0.50), at(0.99))
}

/// Acquisitions per second of one lock by 10 tasks on each node, each
/// taking it, holding it for no time, releasing it, again, for `run`.
async fn contended(nodes: &[Node], consensus: bool, run: Duration) -> f64 {
    let count = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = tokio::task::JoinSet::new();
    for node in nodes {
        for _ in 0..10 {
            let (node, count, stop) = (node.clone(), count.clone(), stop.clone());
            tasks.spawn(async move {
                while !stop.load(Ordering::Relaxed) {
                    if consensus {
                        let c = node.consensus().expect("consensus mode");
                        let guard = c.lock("contended", LONG).await.expect("lock");
                        guard.release().await.expect("release");
                    } else {
                        let options = LockOptions::default().timeout(LONG);
                        let guard = node.lock_with("contended", &options).await.expect("lock");
                        guard.release().await;
                    }
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    }
    let started = Instant::now();
    tokio::time::sleep(run).await;
    let (done, took) = (count.load(Ordering::Relaxed), started.elapsed());
    stop.store(true, Ordering::Relaxed);
    while tasks.join_next().await.is_some() {}
    done as f64 / took.as_secs_f64()
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, run) = if quick {
        (100, Duration::from_secs(2))
    } else {
        (500, Duration::from_secs(5))
    };
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let dir = tempfile::tempdir().expect("temporary directory");
    rt.block_on(async {
        let global = cluster("g", None).await;
        let raft = cluster("r", Some(dir.path())).await;
        let node = follower(&raft).await;
        let c = node.consensus().expect("consensus mode").clone();
        let (a, b) = (global[0].clone(), global[1].clone());
        let g = global[2].clone();

        let rpc = timed(rounds, |_| async {
            a.call::<_, ()>(b.name(), "noop", &()).await.expect("call");
        })
        .await;
        let mut rows = vec![("RPC round trip", rpc, rpc)];

        let lock_c = timed(rounds, |_| async {
            c.lock("seq", LONG)
                .await
                .expect("lock")
                .release()
                .await
                .expect("release");
        })
        .await;
        let lock_g = timed(rounds, |_| async {
            let options = LockOptions::default().timeout(LONG);
            g.lock_with("seq", &options)
                .await
                .expect("lock")
                .release()
                .await;
        })
        .await;
        rows.push(("lock + unlock", lock_c, lock_g));

        let reg_c = timed(rounds, |i| {
            let c = c.clone();
            async move {
                let name = format!("name-{i}");
                c.register(&name).await.expect("register");
                c.unregister(&name).await.expect("unregister");
            }
        })
        .await;
        let reg_g = timed(rounds, |i| {
            let g = g.clone();
            async move {
                let name = format!("name-{i}");
                g.registry().register(&name, "svc").await.expect("register");
                g.registry().unregister(&name).await;
            }
        })
        .await;
        rows.push(("register + unregister", reg_c, reg_g));

        c.register("known").await.expect("register");
        g.registry()
            .register("known", "svc")
            .await
            .expect("register");
        let whereis_c = timed(rounds, |_| async {
            c.whereis("known")
                .await
                .expect("whereis")
                .expect("registered");
        })
        .await;
        let whereis_g = timed(rounds, |_| async {
            g.registry().whereis("known").expect("registered");
        })
        .await;
        rows.push(("whereis (consensus: linearizable)", whereis_c, whereis_g));

        let campaign_c = timed(rounds, |_| async {
            let lead = c.campaign("seq-election", LONG).await.expect("campaign");
            lead.release().await.expect("resign");
        })
        .await;
        let campaign_g = timed(rounds, |_| async {
            g.election("seq-election")
                .campaign()
                .await
                .expect("campaign")
                .resign()
                .await;
        })
        .await;
        rows.push(("campaign + resign", campaign_c, campaign_g));

        let per_s_c = contended(&raft, true, run).await;
        let per_s_g = contended(&global, false, run).await;

        println!("3 nodes in one process on loopback; consensus: log fsync'd, asked of a follower");
        println!(
            "{:<36} {:>20} {:>20}",
            "", "consensus p50 / p99", "global p50 / p99"
        );
        for (what, (c50, c99), (g50, g99)) in rows {
            println!(
                "{what:<36} {:>20} {:>20}",
                format!("{} / {}", ms(c50), ms(c99)),
                format!("{} / {}", ms(g50), ms(g99)),
            );
        }
        println!(
            "{:<36} {:>20} {:>20}",
            "contended lock, 3 nodes x 10 tasks",
            format!("{per_s_c:.0} /s"),
            format!("{per_s_g:.0} /s"),
        );
        println!(
            "reference, etcd 3.4.23 (3 members, loopback, fsync, same machine class): \
             lock + unlock p50 3.2-4.6 ms; contended 218-262 /s"
        );
        for n in global.iter().chain(&raft) {
            n.shutdown().await;
        }
    });
}
