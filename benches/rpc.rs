//! In-process costs of the RPC path:
//!
//! - `codec/*`: encoding and decoding the wire headers every call carries;
//! - `call/64B`: one typed 64-byte echo call between two nodes in this
//!   process, over loopback QUIC with mutual TLS (one stream per call).
//!
//! Cross-process figures against a raw quinn baseline come from
//! `quicmesh bench serve` / `quicmesh bench rpc`.
//!
//! Run: `cargo bench --bench rpc`

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use quicmesh::Node;
use quicmesh_wire::{RpcHeader, RpcMode, RpcStatus, encode_item, frame};
use serde_bytes::ByteBuf;

fn codec(c: &mut Criterion) {
    let header = RpcHeader {
        service: "bench.echo".into(),
        timeout_ms: 5000,
        mode: RpcMode::Call,
    };
    let bytes = frame::encode(&header, 4096).expect("encode");
    c.bench_function("codec/encode RpcHeader", |b| {
        b.iter(|| frame::encode(black_box(&header), 4096).expect("encode"))
    });
    c.bench_function("codec/decode RpcHeader", |b| {
        b.iter(|| frame::decode::<RpcHeader>(black_box(&bytes[4..])).expect("decode"))
    });
    c.bench_function("codec/encode RpcStatus", |b| {
        b.iter(|| frame::encode(black_box(&RpcStatus::Ok), 64).expect("encode"))
    });
    let chunk = ByteBuf::from(vec![0u8; 64 * 1024]);
    c.bench_function("codec/encode 64KiB stream item", |b| {
        b.iter(|| encode_item(black_box(&chunk), 1 << 20).expect("encode"))
    });
}

fn call(c: &mut Criterion) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    let (a, b) = rt.block_on(async {
        let start = |name: &'static str| {
            Node::builder()
                .name(name)
                .listen("127.0.0.1:0".parse().expect("addr"))
                .cookie("bench-cookie")
                .start()
        };
        let (a, b) = (
            start("a@127.0.0.1").await.expect("a"),
            start("b@127.0.0.1").await.expect("b"),
        );
        b.register("echo", |_, v: ByteBuf| async move { Ok::<_, String>(v) })
            .expect("register");
        a.connect(&b.addr()).await.expect("connect");
        (a, b)
    });
    let payload = ByteBuf::from(vec![7u8; 64]);
    let peer = b.name().clone();
    c.bench_function("call/64B", |bench| {
        bench.to_async(&rt).iter(|| async {
            let r: ByteBuf = a.call(&peer, "echo", &payload).await.expect("call");
            r
        })
    });
    rt.block_on(async {
        a.shutdown().await;
        b.shutdown().await;
    });
}

criterion_group!(benches, codec, call);
criterion_main!(benches);
