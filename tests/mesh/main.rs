//! Mesh formation with real nodes on loopback: connect, events, transitive
//! mesh, hidden nodes, simultaneous dials, disconnect, shutdown, seeds.

#[path = "../support/mod.rs"]
mod support;

use std::time::Duration;

use quicmesh::{ConnectError, DownReason, NodeEvent, PeerState};
use support::*;

const COOKIE: &str = "mesh-test-cookie";

#[test]
fn handles_are_send_sync_clone_debug() {
    fn handle<T: Send + Sync + Clone + std::fmt::Debug + 'static>() {}
    handle::<quicmesh::Node>();
    handle::<quicmesh::NodeName>();
    handle::<NodeEvent>();
    handle::<quicmesh::Status>();
    fn error<T: std::error::Error + Send + Sync + 'static>() {}
    error::<ConnectError>();
    error::<quicmesh::StartError>();
    error::<quicmesh::PingError>();
}

#[tokio::test]
async fn same_cookie_connects_with_node_up_on_both_sides() {
    bounded(async {
        let a = node("a", COOKIE).await;
        let b = node("b", COOKIE).await;
        let (mut ea, mut eb) = (a.events(), b.events());
        b.connect(&a.addr()).await.expect("connect");
        let up_at_a = wait_up(&mut ea, b.name()).await;
        let up_at_b = wait_up(&mut eb, a.name()).await;
        assert_eq!(
            up_at_a,
            NodeEvent::NodeUp { node: b.name().clone(), incarnation: b.incarnation(), hidden: false }
        );
        assert!(matches!(up_at_b, NodeEvent::NodeUp { incarnation, .. } if incarnation == a.incarnation()));
        assert_eq!(a.nodes(), vec![b.name().clone()]);
        assert_eq!(b.nodes(), vec![a.name().clone()]);

        let rtt = a.ping(b.name(), WAIT).await.expect("ping");
        assert!(rtt < WAIT);
        let status = a.status();
        let peer = &status.peers[0];
        assert_eq!((&peer.node, peer.state), (b.name(), PeerState::Up));
        assert!(peer.rtt.is_some() && peer.connected_since.is_some());
        assert_eq!(peer.incarnation, Some(b.incarnation()));
        assert_eq!(status.connections, 1);
        // Connecting again is a no-op.
        b.connect(&a.addr()).await.expect("second connect");
        assert_eq!(a.status().connections, 1);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn four_nodes_each_dialling_one_other_form_a_full_mesh() {
    bounded(async {
        let mut nodes = Vec::new();
        for short in ["n1", "n2", "n3", "n4"] {
            nodes.push(node(short, COOKIE).await);
        }
        for i in 1..nodes.len() {
            nodes[i]
                .connect(&nodes[i - 1].addr())
                .await
                .expect("connect");
        }
        for n in &nodes {
            n.wait_for_nodes(3, WAIT).await.expect("full mesh");
            let mut want: Vec<_> = nodes
                .iter()
                .map(|o| o.name().clone())
                .filter(|o| o != n.name())
                .collect();
            want.sort();
            assert_eq!(n.nodes(), want);
        }
        for n in &nodes {
            eventually("one connection per peer", || n.status().connections == 3).await;
        }
        for n in &nodes {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn hidden_node_is_not_propagated_to_third_nodes() {
    bounded(async {
        let b = node("b", COOKIE).await;
        let h = builder("h", COOKIE)
            .hidden(true)
            .start()
            .await
            .expect("hidden node");
        let c = node("c", COOKIE).await;
        h.connect(&b.addr()).await.expect("hidden connects");
        c.connect(&b.addr()).await.expect("c connects");
        b.wait_for_nodes(2, WAIT).await.expect("b sees both");
        // A fourth node joining through c gives any stray propagation time
        // to happen before the checks below.
        let d = node("d", COOKIE).await;
        d.connect(&c.addr()).await.expect("d connects");
        d.wait_for_nodes(2, WAIT)
            .await
            .expect("d meets b through c");
        for n in [&c, &d] {
            assert!(
                !n.nodes().contains(h.name()),
                "{} learnt of the hidden node",
                n.name()
            );
        }
        assert_eq!(
            h.nodes(),
            vec![b.name().clone()],
            "a hidden node dials no one transitively"
        );
        assert_eq!(
            b.status()
                .peers
                .iter()
                .find(|p| &p.node == h.name())
                .map(|p| p.hidden),
            Some(true)
        );
        for n in [b, h, c, d] {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn simultaneous_dials_end_with_exactly_one_connection() {
    bounded(async {
        for round in 0..20 {
            let x = node("x", COOKIE).await;
            let y = node("y", COOKIE).await;
            let (mut ex, mut ey) = (x.events(), y.events());
            let (xa, ya) = (x.addr(), y.addr());
            let (rx, ry) = tokio::join!(x.connect(&ya), y.connect(&xa));
            rx.unwrap_or_else(|e| panic!("round {round}: x→y {e}"));
            ry.unwrap_or_else(|e| panic!("round {round}: y→x {e}"));
            eventually("both up", || x.nodes().len() == 1 && y.nodes().len() == 1).await;
            eventually("one connection each", || {
                x.status().connections == 1 && y.status().connections == 1
            })
            .await;
            // Exactly one NodeUp and no NodeDown on each side.
            for (who, events) in [(&x, &mut ex), (&y, &mut ey)] {
                let seen = drain(events);
                assert_eq!(seen.len(), 1, "round {round}, {}: {seen:?}", who.name());
                assert!(matches!(seen[0], NodeEvent::NodeUp { .. }));
            }
            x.shutdown().await;
            y.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn disconnect_is_seen_on_both_sides() {
    bounded(async {
        let a = node("a", COOKIE).await;
        let b = node("b", COOKIE).await;
        let (mut ea, mut eb) = (a.events(), b.events());
        a.connect(&b.addr()).await.expect("connect");
        assert!(a.disconnect(b.name()));
        assert_eq!(
            wait_down(&mut ea, b.name()).await,
            DownReason::DisconnectedByUs
        );
        assert_eq!(
            wait_down(&mut eb, a.name()).await,
            DownReason::DisconnectedByPeer
        );
        assert!(!a.disconnect(b.name()), "nothing left to disconnect");
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn graceful_shutdown_is_seen_as_shutdown_and_is_idempotent() {
    bounded(async {
        let a = node("a", COOKIE).await;
        let b = node("b", COOKIE).await;
        let mut ea = a.events();
        a.connect(&b.addr()).await.expect("connect");
        b.shutdown().await;
        assert!(b.is_shutdown());
        b.shutdown().await;
        assert_eq!(wait_down(&mut ea, b.name()).await, DownReason::Shutdown);
        assert_eq!(b.connect(&a.addr()).await, Err(ConnectError::ShuttingDown));
        a.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn seed_is_redialled_after_it_restarts() {
    bounded(async {
        let b = node("b", COOKIE).await;
        let port = b.local_addr().port();
        let a = node("a", COOKIE).await;
        let mut ea = a.events();
        a.add_seed(b.addr());
        wait_up(&mut ea, b.name()).await;
        let first = b.incarnation();
        b.shutdown().await;
        assert_eq!(wait_down(&mut ea, b.name()).await, DownReason::Shutdown);
        // b comes back on the same port (free once its handle is dropped);
        // a's keeper finds it again.
        drop(b);
        let listen: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        let b2 = start_on("b", COOKIE, listen).await;
        match wait_up(&mut ea, b2.name()).await {
            NodeEvent::NodeUp { incarnation, .. } => assert_ne!(incarnation, first),
            other => panic!("{other:?}"),
        }
        a.shutdown().await;
        b2.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn wait_for_nodes_times_out_with_the_count() {
    bounded(async {
        let a = node("a", COOKIE).await;
        let err = a
            .wait_for_nodes(1, Duration::from_millis(50))
            .await
            .unwrap_err();
        assert_eq!((err.connected, err.wanted), (0, 1));
        a.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn dial_to_a_silent_port_times_out_and_says_where() {
    bounded(async {
        let a = builder("a", COOKIE)
            .configure(|c| c.handshake_timeout = Duration::from_millis(300))
            .start()
            .await
            .expect("start");
        // A bound UDP socket that never answers.
        let silent = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let port = silent.local_addr().expect("addr").port();
        let err = a
            .connect(&format!("z@127.0.0.1:{port}").parse().expect("addr"))
            .await
            .unwrap_err();
        assert!(
            matches!(err, ConnectError::HandshakeTimeout { .. }),
            "{err}"
        );
        assert!(err.to_string().contains(&port.to_string()), "{err}");
        assert_eq!(
            a.connect(&a.addr())
                .await
                .map_err(|e| matches!(e, ConnectError::Refused { .. })),
            Err(true)
        );
        a.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_second_node_with_a_live_nodes_name_is_refused_and_nothing_flaps() {
    bounded(async {
        let a = node("a", COOKIE).await;
        let b = node("b", COOKIE).await;
        b.connect(&a.addr()).await.expect("b connects");
        let mut ea = a.events();
        // Another process would do the same: a second node named b.
        let twin = node("b", COOKIE).await;
        match twin.connect(&a.addr()).await {
            Err(ConnectError::NameInUse { peer, live }) => {
                assert_eq!(&peer, a.name());
                assert_eq!(live, vec![b.local_addr()], "the error names the live node");
            }
            other => panic!("expected NameInUse, got {other:?}"),
        }
        // Its keeper goes on trying with backoff: refused every time, and
        // neither a nor b notices anything.
        twin.add_seed(a.addr());
        eventually("the keeper was refused again", || {
            a.status().counters.names_in_use >= 2
        })
        .await;
        stays_connected(&a, &b, Duration::from_secs(2)).await;
        let events = drain(&mut ea);
        assert!(events.is_empty(), "a saw {events:?}");
        assert!(twin.nodes().is_empty());
        let b_at_a = a.status().peers.into_iter().find(|p| &p.node == b.name());
        assert_eq!(b_at_a.and_then(|p| p.incarnation), Some(b.incarnation()));
        twin.shutdown().await;
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_nodes_started_at_once_each_told_of_one_form_a_full_mesh() {
    // Not timed: on a loaded machine handshakes fail and dials collide;
    // the mesh must complete anyway.
    bounded(async {
        const N: usize = 24;
        let mut nodes = Vec::with_capacity(N);
        for i in 0..N {
            nodes.push(node(&format!("m{i}"), COOKIE).await);
        }
        // Each is told of the first as a seed, all at once: more handshakes
        // from one address than a node takes at once, so some are refused
        // and tried again.
        let first = nodes[0].addr();
        for n in &nodes[1..] {
            n.add_seed(first.clone());
        }
        let long = Duration::from_secs(60);
        for n in &nodes {
            if let Err(e) = n.wait_for_nodes(N - 1, long).await {
                let status = n.status();
                panic!("{} is missing peers: {e}; {status:?}", n.name());
            }
        }
        for n in &nodes {
            eventually("one connection per peer", || {
                n.status().connections == N - 1
            })
            .await;
        }
        for n in &nodes {
            n.shutdown().await;
        }
    })
    .await;
}
