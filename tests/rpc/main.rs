//! Typed RPC between real nodes: every error kind, cancellation, deadline
//! propagation, back-pressure, multicall.

#[path = "../support/mod.rs"]
mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use quicmesh::{Node, RegisterError, RpcError, Side};
use quicmesh_wire::LANE_MAX_BODY;
use support::*;

const COOKIE: &str = "rpc-cookie";

/// Two connected nodes: `a` calls, `b` serves.
async fn pair() -> (Node, Node) {
    pair_with(|_| {}).await
}

async fn pair_with(configure_b: impl FnOnce(&mut quicmesh::NodeConfig)) -> (Node, Node) {
    let a = node("a", COOKIE).await;
    let b = builder("b", COOKIE)
        .configure(configure_b)
        .start()
        .await
        .expect("b starts");
    a.connect(&b.addr()).await.expect("connect");
    b.wait_for_nodes(1, WAIT).await.expect("b sees a");
    (a, b)
}

/// Sets its flag when dropped: shows that a handler's future was dropped.
struct DropFlag(Arc<AtomicBool>);
impl Drop for DropFlag {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

#[tokio::test]
async fn typed_call_round_trip() {
    bounded(async {
        let (a, b) = pair().await;
        b.register("add", |ctx, (x, y): (i64, i64)| async move {
            assert_eq!(ctx.from.as_str(), "a@127.0.0.1");
            Ok::<_, String>(x + y)
        })
        .expect("register");
        let sum: i64 = a.call(b.name(), "add", &(40i64, 2i64)).await.expect("call");
        assert_eq!(sum, 42);
        // Services can be added while running; names are unique.
        assert_eq!(
            b.register("add", |_, ()| async { Ok::<(), String>(()) }),
            Err(RegisterError::AlreadyRegistered("add".into()))
        );
        assert!(b.unregister("add"));
        let err = a
            .call::<_, i64>(b.name(), "add", &(1i64, 1i64))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::NoSuchService { .. }), "{err}");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn not_connected_and_no_such_service_did_not_run() {
    bounded(async {
        let (a, b) = pair().await;
        let err = a
            .call::<_, ()>(&name("z@127.0.0.1"), "x", &())
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::NotConnected { .. }), "{err}");
        assert!(!err.may_have_run());
        let err = a.cast(&name("z@127.0.0.1"), "x", &()).await.unwrap_err();
        assert!(matches!(err, RpcError::NotConnected { .. }), "{err}");
        let err = a.call::<_, ()>(b.name(), "missing", &()).await.unwrap_err();
        assert_eq!(
            err,
            RpcError::NoSuchService {
                peer: b.name().clone(),
                service: "missing".into()
            }
        );
        assert!(!err.may_have_run());
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn handler_error_and_panic_are_reported_and_the_node_keeps_serving() {
    bounded(async {
        let (a, b) = pair().await;
        b.register("div", |_, (x, y): (i64, i64)| async move {
            if y == 0 {
                return Err("division by zero");
            }
            if y < 0 {
                panic!("negative divisor {y}");
            }
            Ok(x / y)
        })
        .expect("register");
        let err = a
            .call::<_, i64>(b.name(), "div", &(1i64, 0i64))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RpcError::Remote { message, .. } if message == "division by zero"),
            "{err}"
        );
        let err = a
            .call::<_, i64>(b.name(), "div", &(1i64, -1i64))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, RpcError::Panicked { message, .. } if message == "negative divisor -1"),
            "{err}"
        );
        assert!(err.may_have_run());
        let q: i64 = a
            .call(b.name(), "div", &(9i64, 3i64))
            .await
            .expect("still serving");
        assert_eq!(q, 3);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn undecodable_request_and_response_name_the_side() {
    bounded(async {
        let (a, b) = pair().await;
        b.register("greet", |_, who: String| async move {
            Ok::<_, String>(format!("hi {who}"))
        })
        .expect("register");
        // A u64 is not a String on the wire.
        let err = a
            .call::<_, String>(b.name(), "greet", &u64::MAX)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::Decode {
                    side: Side::Request,
                    ..
                }
            ),
            "{err}"
        );
        assert!(!err.may_have_run());
        // A String is not a (u64, u64).
        let err = a
            .call::<_, (u64, u64)>(b.name(), "greet", "x")
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::Decode {
                    side: Side::Response,
                    ..
                }
            ),
            "{err}"
        );
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn too_large_is_refused_with_the_limit() {
    bounded(async {
        let (a, b) = pair_with(|c| c.rpc.max_message = 1024).await;
        b.register("echo", |_, v: Vec<u8>| async move { Ok::<_, String>(v) })
            .expect("register");
        b.register("grow", |_, n: usize| async move {
            Ok::<_, String>(vec![7u8; n])
        })
        .expect("register");
        // The callee's limit refuses a request the caller's allows.
        let err = a
            .call::<_, Vec<u8>>(b.name(), "echo", &vec![1u8; 10_000])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::TooLarge {
                    side: Side::Request,
                    limit: 1024,
                    ..
                }
            ),
            "{err}"
        );
        // A response over the callee's limit is not sent.
        let err = a
            .call::<_, Vec<u8>>(b.name(), "grow", &5000usize)
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::TooLarge {
                    side: Side::Response,
                    limit: 1024,
                    ..
                }
            ),
            "{err}"
        );
        // The caller's own limit is checked before sending.
        let err = b
            .call::<_, Vec<u8>>(a.name(), "echo", &vec![0u8; 2000])
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                RpcError::TooLarge {
                    side: Side::Request,
                    limit: 1024,
                    ..
                }
            ),
            "{err}"
        );
        let small: Vec<u8> = a
            .call(b.name(), "echo", &vec![5u8; 100])
            .await
            .expect("fits");
        assert_eq!(small.len(), 100);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn timeout_cancels_the_handler() {
    bounded(async {
        let (a, b) = pair().await;
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        b.register("slow", move |_, ()| {
            let guard = DropFlag(flag.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>(())
            }
        })
        .expect("register");
        let err = a
            .call_timeout::<_, ()>(b.name(), "slow", &(), Duration::from_millis(200))
            .await
            .unwrap_err();
        assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
        assert!(err.may_have_run());
        eventually("the handler's future was dropped", || {
            dropped.load(Ordering::SeqCst)
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn dropping_the_call_cancels_the_handler() {
    bounded(async {
        let (a, b) = pair().await;
        // A small request travels on the lane (cancelled by a Cancel
        // frame), a large one on a stream of its own (cancelled by a reset).
        for size in [16, LANE_MAX_BODY + 1] {
            let dropped = Arc::new(AtomicBool::new(false));
            let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(1);
            let flag = dropped.clone();
            let service = format!("wait{size}");
            b.register(&service, move |_, _: Vec<u8>| {
                let (guard, started) = (DropFlag(flag.clone()), started_tx.clone());
                async move {
                    let _guard = guard;
                    let _ = started.send(()).await;
                    tokio::time::sleep(Duration::from_secs(60)).await;
                    Ok::<_, String>(())
                }
            })
            .expect("register");
            let call = {
                let (a, peer) = (a.clone(), b.name().clone());
                tokio::spawn(async move {
                    let body = vec![1u8; size];
                    a.call_timeout::<_, ()>(&peer, &service, &body, Duration::from_secs(60))
                        .await
                })
            };
            started_rx.recv().await.expect("handler started");
            assert!(!dropped.load(Ordering::SeqCst));
            call.abort();
            eventually("the handler's future was dropped", || {
                dropped.load(Ordering::SeqCst)
            })
            .await;
        }
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn small_and_large_requests_and_responses_round_trip() {
    bounded(async {
        let (a, b) = pair_with(|c| c.rpc.max_message = 200_000).await;
        b.register("echo", |_, v: serde_bytes::ByteBuf| async move {
            Ok::<_, String>(v)
        })
        .expect("register");
        b.register("grow", |_, n: usize| async move {
            Ok::<_, String>(serde_bytes::ByteBuf::from(vec![7u8; n]))
        })
        .expect("register");
        // Around the lane's limit both ways, and far over it.
        for n in [0, 1, LANE_MAX_BODY - 8, LANE_MAX_BODY + 8, 150_000] {
            let body = serde_bytes::ByteBuf::from(vec![3u8; n]);
            let back: serde_bytes::ByteBuf = a.call(b.name(), "echo", &body).await.expect("echo");
            assert_eq!(back, body, "echo of {n} bytes");
            // A small request with a response too large for the lane: the
            // reply comes on a stream of its own.
            let grown: serde_bytes::ByteBuf = a.call(b.name(), "grow", &n).await.expect("grow");
            assert_eq!(grown.len(), n);
        }
        // Many concurrent small calls whose large replies overtake each other.
        let mut calls = tokio::task::JoinSet::new();
        for i in 0..64usize {
            let (a, peer) = (a.clone(), b.name().clone());
            let n = if i % 2 == 0 { 40 } else { 60_000 + i };
            calls.spawn(async move {
                let got: serde_bytes::ByteBuf = a.call(&peer, "grow", &n).await.expect("grow");
                assert_eq!(got.len(), n);
            });
        }
        while let Some(done) = calls.join_next().await {
            done.expect("call");
        }
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn caller_limit_applies_to_replies_on_either_path() {
    bounded(async {
        let a = builder("a", COOKIE)
            .configure(|c| c.rpc.max_message = 1000)
            .start()
            .await
            .expect("a starts");
        let b = node("b", COOKIE).await;
        a.connect(&b.addr()).await.expect("connect");
        b.register("grow", |_, n: usize| async move {
            Ok::<_, String>(serde_bytes::ByteBuf::from(vec![7u8; n]))
        })
        .expect("register");
        // One reply within the lane frame, one on its own stream; both over
        // the caller's limit of 1000 bytes.
        for n in [2000usize, LANE_MAX_BODY * 2] {
            let err = a
                .call::<_, serde_bytes::ByteBuf>(b.name(), "grow", &n)
                .await
                .unwrap_err();
            assert!(
                matches!(
                    err,
                    RpcError::TooLarge {
                        side: Side::Response,
                        limit: 1000,
                        ..
                    }
                ),
                "{n}: {err}"
            );
        }
        let ok: serde_bytes::ByteBuf = a.call(b.name(), "grow", &900usize).await.expect("fits");
        assert_eq!(ok.len(), 900);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn deadline_travels_with_the_request() {
    bounded(async {
        let (a, b) = pair_with(|c| c.rpc.timeout = Duration::from_millis(300)).await;
        b.register("left", |ctx, ()| async move {
            Ok::<_, String>(
                ctx.deadline
                    .saturating_duration_since(tokio::time::Instant::now()),
            )
        })
        .expect("register");
        let left: Duration = a
            .call_timeout(b.name(), "left", &(), Duration::from_millis(700))
            .await
            .expect("call");
        assert!(
            left > Duration::ZERO && left <= Duration::from_millis(700),
            "{left:?}"
        );
        assert!(
            left > Duration::from_millis(300),
            "the callee used the caller's timeout: {left:?}"
        );

        // A cast is not cancelled by its caller; the deadline alone stops it.
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        a.register("sleepy", move |_, ()| {
            let guard = DropFlag(flag.clone());
            async move {
                let _guard = guard;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>(())
            }
        })
        .expect("register");
        b.cast(a.name(), "sleepy", &()).await.expect("cast");
        eventually(
            "the deadline (b's rpc.timeout, 300 ms) dropped the handler",
            || dropped.load(Ordering::SeqCst),
        )
        .await;
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn cast_runs_the_handler_without_a_reply() {
    bounded(async {
        let (a, b) = pair().await;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<u32>(4);
        b.register("note", move |_, n: u32| {
            let tx = tx.clone();
            async move {
                tx.send(n).await.map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            }
        })
        .expect("register");
        a.cast(b.name(), "note", &7u32).await.expect("cast");
        let got = tokio::time::timeout(WAIT, rx.recv())
            .await
            .expect("handler ran");
        assert_eq!(got, Some(7));
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn peer_going_down_mid_call_is_node_down() {
    bounded(async {
        let (a, b) = pair().await;
        let (started_tx, mut started_rx) = tokio::sync::mpsc::channel::<()>(1);
        b.register("hang", move |_, ()| {
            let started = started_tx.clone();
            async move {
                let _ = started.send(()).await;
                tokio::time::sleep(Duration::from_secs(60)).await;
                Ok::<_, String>(())
            }
        })
        .expect("register");
        let call = {
            let (a, peer) = (a.clone(), b.name().clone());
            tokio::spawn(async move {
                a.call_timeout::<_, ()>(&peer, "hang", &(), Duration::from_secs(60))
                    .await
            })
        };
        started_rx.recv().await.expect("handler started");
        drop(b); // the last handle: the node stops without a graceful shutdown
        let err = call.await.expect("joined").unwrap_err();
        assert!(matches!(err, RpcError::NodeDown { .. }), "{err}");
        assert!(err.may_have_run());
        a.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_flood_of_calls_is_bounded_per_peer() {
    bounded(async {
        const LIMIT: usize = 8;
        let (a, b) = pair_with(|c| c.rpc.max_inbound_per_peer = LIMIT).await;
        let running = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (r, p) = (running.clone(), peak.clone());
        b.register("work", move |_, payload: Vec<u8>| {
            let (running, peak) = (r.clone(), p.clone());
            async move {
                let now = running.fetch_add(1, Ordering::SeqCst) + 1;
                peak.fetch_max(now, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(50)).await;
                running.fetch_sub(1, Ordering::SeqCst);
                Ok::<_, String>(payload.len())
            }
        })
        .expect("register");
        let mut calls = tokio::task::JoinSet::new();
        for _ in 0..300 {
            let (a, peer) = (a.clone(), b.name().clone());
            calls.spawn(async move { a.call::<_, usize>(&peer, "work", &vec![0u8; 4096]).await });
        }
        let (mut ok, mut overloaded) = (0, 0);
        while let Some(r) = calls.join_next().await {
            match r.expect("joined") {
                Ok(4096) => ok += 1,
                Err(RpcError::Overloaded { .. }) => overloaded += 1,
                other => panic!("unexpected {other:?}"),
            }
        }
        assert!(
            peak.load(Ordering::SeqCst) <= LIMIT,
            "peak {}",
            peak.load(Ordering::SeqCst)
        );
        assert!(
            ok >= LIMIT && overloaded > 0,
            "ok {ok}, overloaded {overloaded}"
        );
        assert_eq!(ok + overloaded, 300);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn multicall_reports_each_node_including_a_down_one() {
    bounded(async {
        let a = node("a", COOKIE).await;
        let b = node("b", COOKIE).await;
        let c = node("c", COOKIE).await;
        a.connect(&b.addr()).await.expect("connect b");
        a.connect(&c.addr()).await.expect("connect c");
        for n in [&b, &c] {
            let me = n.name().to_string();
            n.register("whoami", move |_, ()| {
                let me = me.clone();
                async move { Ok::<_, String>(me) }
            })
            .expect("register");
        }
        let mut events = a.events();
        c.shutdown().await;
        wait_down(&mut events, c.name()).await;
        let peers = vec![b.name().clone(), c.name().clone()];
        let results = a.multicall::<_, String>(&peers, "whoami", &(), WAIT).await;
        assert_eq!(results.len(), 2);
        assert_eq!(&results[0].0, b.name());
        assert_eq!(results[0].1.as_deref(), Ok("b@127.0.0.1"));
        assert_eq!(&results[1].0, c.name());
        assert!(
            matches!(results[1].1, Err(RpcError::NotConnected { .. })),
            "{:?}",
            results[1].1
        );
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn custom_protocol_exchanges_data_both_ways() {
    bounded(async {
        let (a, b) = pair().await;
        let mut listener = b.protocol("upper").expect("register");
        assert_eq!(
            b.protocol("upper").unwrap_err(),
            RegisterError::AlreadyRegistered("upper".into())
        );
        let server = tokio::spawn(async move {
            let s = listener.accept().await.expect("a stream");
            let mut send = s.send.expect("bidirectional");
            let mut recv = s.recv;
            let mut total = 0usize;
            // Echo upper-cased as data arrives: both directions at once.
            let mut buf = vec![0u8; 64 * 1024];
            while let Some(n) = recv.read(&mut buf).await.expect("read") {
                total += n;
                send.write_all(&buf[..n].to_ascii_uppercase())
                    .await
                    .expect("write");
            }
            send.finish().expect("finish");
            (s.peer, total, listener)
        });
        let (mut send, mut recv) = a.open_bi(b.name(), "upper").await.expect("open");
        let chunk = b"hello quicmesh ".repeat(1000);
        let writer = tokio::spawn(async move {
            for _ in 0..100 {
                send.write_all(&chunk).await.expect("write");
            }
            send.finish().expect("finish");
        });
        let reply = recv.read_to_end(16 << 20).await.expect("reply");
        writer.await.expect("writer");
        let (peer, total, mut listener) = server.await.expect("server");
        assert_eq!(&peer, a.name());
        assert_eq!(total, 1_500_000);
        assert_eq!(reply, b"HELLO QUICMESH ".repeat(100_000));

        // A unidirectional stream arrives without a send half.
        let mut uni = a.open_uni(b.name(), "upper").await.expect("open uni");
        uni.write_all(b"one way").await.expect("write");
        uni.finish().expect("finish");
        let s = tokio::time::timeout(WAIT, listener.accept())
            .await
            .expect("accepted")
            .expect("stream");
        assert!(s.send.is_none());
        let mut recv = s.recv;
        assert_eq!(recv.read_to_end(64).await.expect("read"), b"one way");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn unknown_protocol_is_refused_with_its_code() {
    bounded(async {
        let (a, b) = pair().await;
        let listener = b.protocol("known").expect("register");
        drop(listener); // unregisters
        for protocol in ["never-registered", "known"] {
            let (mut send, mut recv) = a.open_bi(b.name(), protocol).await.expect("open");
            let _ = send.write_all(b"x").await;
            match recv.read_to_end(64).await {
                Err(quinn::ReadToEndError::Read(quinn::ReadError::Reset(code))) => {
                    assert!(
                        quicmesh::is_unknown_protocol(code),
                        "{protocol}: code {code}"
                    );
                }
                other => panic!("{protocol}: expected a reset, got {other:?}"),
            }
        }
        // The peer is still connected and serving.
        a.ping(b.name(), WAIT).await.expect("still up");
        let _again = b.protocol("known").expect("re-register after drop");
        let err = a.open_bi(&name("z@127.0.0.1"), "known").await.unwrap_err();
        assert_eq!(err, quicmesh::OpenError::NotConnected(name("z@127.0.0.1")));
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// 64 KiB chunks as bytes (`serde_bytes`), not as a sequence of u8.
type Chunk = serde_bytes::ByteBuf;

#[tokio::test]
async fn streaming_call_moves_100_mb_with_bounded_buffering() {
    bounded(async {
        const CHUNK: usize = 64 * 1024;
        const CHUNKS: usize = 1600; // 100 MiB
        let (a, b) = pair().await;
        let produced = Arc::new(AtomicUsize::new(0));
        let p = produced.clone();
        b.register_stream(
            "download",
            move |_, n: usize, _in: quicmesh::Requests<()>, mut out| {
                let produced = p.clone();
                async move {
                    let chunk = Chunk::from(vec![0xab; CHUNK]);
                    for _ in 0..n {
                        out.send(&chunk).await.map_err(|e| e.to_string())?;
                        produced.fetch_add(1, Ordering::SeqCst);
                    }
                    Ok::<_, String>(())
                }
            },
        )
        .expect("register");
        let mut call = a
            .call_stream::<_, (), Chunk>(b.name(), "download", &CHUNKS)
            .await
            .expect("open");
        let (mut bytes, mut consumed, mut max_ahead) = (0usize, 0usize, 0usize);
        while let Some(item) = call.next().await {
            let item = item.expect("item");
            assert!(item.iter().all(|&x| x == 0xab));
            bytes += item.len();
            consumed += 1;
            max_ahead = max_ahead.max(produced.load(Ordering::SeqCst).saturating_sub(consumed));
            if consumed < 200 {
                // A slow reader at first: the producer must wait for it.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        }
        assert_eq!(bytes, CHUNK * CHUNKS);
        // Flow control: the producer never got further ahead than the QUIC
        // windows allow (a few MiB), far from the whole 100 MiB.
        assert!(max_ahead < 400, "producer ran {max_ahead} chunks ahead");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn streaming_upload_and_refusals() {
    bounded(async {
        let (a, b) = pair().await;
        b.register_stream(
            "sum",
            |_, label: String, mut input: quicmesh::Requests<Chunk>, mut out| async move {
                let mut total = 0u64;
                while let Some(chunk) = input.next().await {
                    total += chunk.map_err(|e| e.to_string())?.len() as u64;
                }
                out.send(&format!("{label}: {total}"))
                    .await
                    .map_err(|e| e.to_string())?;
                Ok::<_, String>(())
            },
        )
        .expect("register");
        b.register_stream(
            "fail",
            |_, (): (), _in: quicmesh::Requests<()>, mut out| async move {
                out.send(&1u8).await.map_err(|e| e.to_string())?;
                Err::<(), _>("gave up after one item".to_owned())
            },
        )
        .expect("register");

        let mut call = a
            .call_stream::<_, Chunk, String>(b.name(), "sum", "up")
            .await
            .expect("open");
        for _ in 0..100 {
            call.send(&Chunk::from(vec![1u8; 10_000]))
                .await
                .expect("send");
        }
        call.finish();
        assert_eq!(
            call.next().await.expect("an item").expect("ok"),
            "up: 1000000"
        );
        assert!(call.next().await.is_none());

        let mut call = a
            .call_stream::<_, (), u8>(b.name(), "fail", &())
            .await
            .expect("open");
        assert_eq!(call.next().await.expect("item").expect("ok"), 1);
        let err = call.next().await.expect("the failure").unwrap_err();
        assert!(
            matches!(&err, RpcError::Remote { message, .. } if message == "gave up after one item"),
            "{err}"
        );
        assert!(call.next().await.is_none());

        let mut call = a
            .call_stream::<_, (), u8>(b.name(), "nope", &())
            .await
            .expect("open");
        let err = call.next().await.expect("the refusal").unwrap_err();
        assert!(matches!(err, RpcError::NoSuchService { .. }), "{err}");
        // A streaming service is not callable as a unary one, and back.
        let err = a.call::<_, u8>(b.name(), "sum", "x").await.unwrap_err();
        assert!(err.to_string().contains("call_stream"), "{err}");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn dropping_a_streaming_call_cancels_the_handler() {
    bounded(async {
        let (a, b) = pair().await;
        let dropped = Arc::new(AtomicBool::new(false));
        let flag = dropped.clone();
        b.register_stream(
            "forever",
            move |_, (): (), _in: quicmesh::Requests<()>, mut out| {
                let guard = DropFlag(flag.clone());
                async move {
                    let _guard = guard;
                    // Sends until the caller goes away.
                    while out.send(&0u64).await.is_ok() {}
                    Ok::<(), String>(())
                }
            },
        )
        .expect("register");
        let mut call = a
            .call_stream::<_, (), u64>(b.name(), "forever", &())
            .await
            .expect("open");
        for _ in 0..10 {
            call.next().await.expect("item").expect("ok");
        }
        drop(call);
        eventually("the streaming handler was dropped", || {
            dropped.load(Ordering::SeqCst)
        })
        .await;
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// The name of the thread a handler runs on.
fn thread_name() -> String {
    std::thread::current().name().unwrap_or("").to_owned()
}

/// Registers `where` on `node`: an echo that answers with the name of
/// the thread it ran on.
fn serve_where(node: &Node) {
    node.register("where", |_, body: serde_bytes::ByteBuf| async move {
        Ok::<_, String>((body.len(), thread_name()))
    })
    .expect("register");
}

#[tokio::test]
async fn large_calls_take_the_bulk_path_and_small_ones_stay_on_the_link() {
    bounded(async {
        let (a, b) = pair().await;
        serve_where(&b);
        let large = serde_bytes::ByteBuf::from(vec![1u8; 200_000]);
        let small = serde_bytes::ByteBuf::from(vec![1u8; 64]);
        // The first large call starts the bulk dial and goes on the link;
        // once the path is up, large calls are served on the bulk threads.
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let (n, thread): (usize, String) =
                a.call(b.name(), "where", &large).await.expect("large call");
            assert_eq!(n, large.len());
            if thread == "quicmesh-bulk" {
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "no large call took the bulk path"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for _ in 0..20 {
            let (_, thread): (usize, String) =
                a.call(b.name(), "where", &large).await.expect("large call");
            assert_eq!(thread, "quicmesh-bulk", "a large call left the bulk path");
            let (_, thread): (usize, String) =
                a.call(b.name(), "where", &small).await.expect("small call");
            assert_ne!(thread, "quicmesh-bulk", "a small call took the bulk path");
        }
        // One bulk connection carried them all.
        let status = b.status();
        assert_eq!(status.counters.bulk_accepted, 1);
        assert_eq!(status.counters.bulk_refused, 0);
        assert_eq!(a.status().bulk_connections, 1);
        // It ends with the link.
        assert!(a.disconnect(b.name()));
        // At once, not after QUIC's idle timeout (6 s here).
        let closed = async {
            while a.status().bulk_connections + b.status().bulk_connections > 0 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::time::timeout(Duration::from_secs(2), closed)
            .await
            .expect("the bulk connections close with their link");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn with_the_bulk_path_off_large_calls_share_the_link() {
    bounded(async {
        let (a, b) = pair_with(|c| c.bulk_path = false).await;
        serve_where(&b);
        assert_eq!(b.status().bulk_listen, None);
        let large = serde_bytes::ByteBuf::from(vec![1u8; 200_000]);
        for _ in 0..10 {
            let (n, thread): (usize, String) =
                a.call(b.name(), "where", &large).await.expect("large call");
            assert_eq!(n, large.len());
            assert_ne!(thread, "quicmesh-bulk");
        }
        assert_eq!(a.status().bulk_connections, 0);
        assert_eq!(b.status().counters.bulk_accepted, 0);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_bulk_connection_from_a_node_without_a_link_is_refused() {
    bounded(async {
        let b = node("b", COOKIE).await;
        let port = b.status().bulk_listen.expect("a bulk path").port();
        // A member of the cluster (same cookie) with no link to b.
        let stranger = name("x@127.0.0.1");
        let identity = quicmesh::identity::Identity::from_cookie(
            stranger,
            &quicmesh::Cookie::new(COOKIE).expect("cookie"),
            Duration::from_secs(3600),
        )
        .expect("identity");
        let (tls, _) = identity.client_config(b.name()).expect("client config");
        let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic config");
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).expect("endpoint");
        let addr = std::net::SocketAddr::new("127.0.0.1".parse().unwrap(), port);
        let conn = endpoint
            .connect_with(quinn::ClientConfig::new(Arc::new(quic)), addr, "quicmesh")
            .expect("connect")
            .await
            .expect("the TLS handshake succeeds: its identity is valid");
        let reason = tokio::time::timeout(WAIT, conn.closed())
            .await
            .expect("closed");
        match reason {
            quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(
                c.error_code.into_inner(),
                u64::from(quicmesh_wire::CloseCode::NotAPeer.code()),
                "{c:?}"
            ),
            other => panic!("closed with {other:?}"),
        }
        assert_eq!(b.status().counters.bulk_refused, 1);
        assert_eq!(b.status().counters.bulk_accepted, 0);
        b.shutdown().await;
    })
    .await;
}
