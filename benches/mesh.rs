//! Mesh formation costs, in one process on loopback:
//!
//! - `connect`: one dial from scratch to an up node: QUIC + mutual TLS 1.3
//!   handshake (both certificates verified, names checked) plus the
//!   `Hello`/`Welcome` exchange, until `connect` returns;
//! - `connect_baseline`: the same mutual-TLS QUIC handshake with the same
//!   identities and rustls configs on bare quinn endpoints, until both
//!   sides hold the connection: what `connect` adds on top is the
//!   `Hello`/`Welcome` round trip and installing the peer;
//! - `full_mesh/8`: eight started nodes, each told about one other, until
//!   every node sees the seven others (transitive discovery and
//!   simultaneous-dial tie-breaks included).
//!
//! Run: `cargo bench --bench mesh`

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use quicmesh::Node;
use quicmesh::identity::{Cookie, Identity};

const COOKIE: &str = "bench-cookie";

async fn node(short: String) -> Node {
    Node::builder()
        .name(format!("{short}@127.0.0.1"))
        .listen("127.0.0.1:0".parse().expect("addr"))
        .cookie(COOKIE)
        .start()
        .await
        .expect("node starts")
}

async fn wait_until(mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "condition not met in 30 s");
        tokio::time::sleep(Duration::from_micros(200)).await;
    }
}

fn connect(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (a, b) = rt.block_on(async { (node("a".into()).await, node("b".into()).await) });
    c.bench_function("connect", |bench| {
        bench.to_async(&rt).iter_custom(|iters| {
            let (a, b) = (a.clone(), b.clone());
            async move {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    // Start each dial from a clean slate on both sides.
                    a.disconnect(b.name());
                    wait_until(|| a.nodes().is_empty() && b.nodes().is_empty()).await;
                    let start = Instant::now();
                    a.connect(&b.addr()).await.expect("connect");
                    total += start.elapsed();
                }
                total
            }
        });
    });
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
}

fn connect_baseline(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let cookie = Cookie::new(COOKIE).expect("cookie");
    let validity = Duration::from_secs(3600);
    let server_id = Identity::from_cookie("s@127.0.0.1".parse().expect("name"), &cookie, validity)
        .expect("identity");
    let client_id = Identity::from_cookie("c@127.0.0.1".parse().expect("name"), &cookie, validity)
        .expect("identity");
    let (server, client, mut accepted) = rt.block_on(async {
        let tls = server_id.server_config().expect("server config");
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic");
        let server = quinn::Endpoint::server(
            quinn::ServerConfig::with_crypto(Arc::new(quic)),
            "127.0.0.1:0".parse().expect("addr"),
        )
        .expect("bind");
        let client = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let acceptor = server.clone();
        tokio::spawn(async move {
            while let Some(incoming) = acceptor.accept().await {
                let tx = tx.clone();
                tokio::spawn(async move {
                    if let Ok(conn) = incoming.await {
                        let _ = tx.send(conn).await;
                    }
                });
            }
        });
        (server, client, rx)
    });
    let server_addr = server.local_addr().expect("addr");
    let expected = server_id.name().clone();
    c.bench_function("connect_baseline", |bench| {
        bench.iter_custom(|iters| {
            rt.block_on(async {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let start = Instant::now();
                    // A client config per dial, as a node builds one.
                    let (tls, _) = client_id.client_config(&expected).expect("client config");
                    let quic =
                        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic");
                    let conn = client
                        .connect_with(
                            quinn::ClientConfig::new(Arc::new(quic)),
                            server_addr,
                            "quicmesh",
                        )
                        .expect("connect")
                        .await
                        .expect("handshake");
                    let served = accepted.recv().await.expect("accepted");
                    total += start.elapsed();
                    conn.close(0u32.into(), b"");
                    served.close(0u32.into(), b"");
                }
                total
            })
        });
    });
}

fn full_mesh(c: &mut Criterion) {
    const N: usize = 8;
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let mut group = c.benchmark_group("full_mesh");
    group.sample_size(10);
    group.bench_function("8", |bench| {
        bench.to_async(&rt).iter_custom(|iters| async move {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let mut nodes = Vec::new();
                for i in 0..N {
                    nodes.push(node(format!("n{i}")).await);
                }
                let start = Instant::now();
                for i in 1..N {
                    let (from, to) = (nodes[i].clone(), nodes[i - 1].addr());
                    tokio::spawn(async move { from.connect(&to).await });
                }
                wait_until(|| nodes.iter().all(|n| n.nodes().len() == N - 1)).await;
                total += start.elapsed();
                for n in nodes {
                    n.shutdown().await;
                }
            }
            total
        });
    });
    group.finish();
}

criterion_group!(benches, connect, connect_baseline, full_mesh);
criterion_main!(benches);
