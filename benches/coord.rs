//! Coordination costs on a 3-node cluster in one process on loopback,
//! beside their baseline, one RPC round trip on the same nodes:
//!
//! - `rpc_round_trip`: a call to a no-op service on another node (the
//!   unit every coordination step is made of);
//! - `lock_uncontended`: take a cluster lock on all three nodes and release
//!   it (waiting until every node released it);
//! - `lock_contended`: 3 nodes × 4 tasks each taking one lock in turn; the
//!   time per acquisition, hand-over included;
//! - `register`: register a fresh name in the global registry (its lock,
//!   the check, the write to every node, the release);
//! - `whereis`: look a name up (local, no network).
//!
//! Run: `cargo bench --bench coord`

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use quicmesh::Node;

const COOKIE: &str = "bench-cookie";

async fn cluster() -> Vec<Node> {
    let mut nodes = Vec::new();
    for i in 0..3 {
        nodes.push(
            Node::builder()
                .name(format!("c{i}@127.0.0.1"))
                .listen("127.0.0.1:0".parse().expect("addr"))
                .cookie(COOKIE)
                .start()
                .await
                .expect("node starts"),
        );
    }
    for n in &nodes[1..] {
        n.connect(&nodes[0].addr()).await.expect("connect");
    }
    for n in &nodes {
        n.wait_for_nodes(2, Duration::from_secs(30))
            .await
            .expect("mesh");
    }
    nodes[1]
        .register("noop", |_ctx, (): ()| async { Ok::<_, String>(()) })
        .expect("noop");
    nodes
}

fn coord(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let nodes = rt.block_on(cluster());
    let (a, b) = (nodes[0].clone(), nodes[1].clone());

    c.bench_function("rpc_round_trip", |bench| {
        bench.to_async(&rt).iter(|| async {
            a.call::<_, ()>(b.name(), "noop", &()).await.expect("call");
        });
    });

    c.bench_function("lock_uncontended", |bench| {
        bench.to_async(&rt).iter(|| async {
            a.lock("bench").await.expect("lock").release().await;
        });
    });

    c.bench_function("lock_contended", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let nodes = nodes.clone();
            async move {
                let left = Arc::new(AtomicU64::new(iters));
                let start = Instant::now();
                let mut tasks = tokio::task::JoinSet::new();
                for node in &nodes {
                    for _ in 0..4 {
                        let (node, left) = (node.clone(), left.clone());
                        tasks.spawn(async move {
                            while left
                                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                                    n.checked_sub(1)
                                })
                                .is_ok()
                            {
                                node.lock("contended").await.expect("lock").release().await;
                            }
                        });
                    }
                }
                while tasks.join_next().await.is_some() {}
                start.elapsed()
            }
        });
    });

    let fresh = AtomicU64::new(0);
    c.bench_function("register", |bench| {
        bench.to_async(&rt).iter(|| async {
            let name = format!("name-{}", fresh.fetch_add(1, Ordering::Relaxed));
            a.registry()
                .register(&name, "noop")
                .await
                .expect("register");
        });
    });

    rt.block_on(a.registry().register("known", "noop"))
        .expect("register");
    let registry = b.registry();
    c.bench_function("whereis", |bench| {
        bench.iter(|| registry.whereis("known").expect("known"));
    });

    rt.block_on(async {
        for n in &nodes {
            n.shutdown().await;
        }
    });
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(5));
    targets = coord
}
criterion_main!(benches);
