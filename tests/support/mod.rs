//! Shared test support: real nodes on 127.0.0.1:0 and deadline-bound waits.
#![allow(dead_code, unreachable_pub)]

use std::future::Future;
use std::time::Duration;

use quicmesh::{DownReason, EventStream, Node, NodeEvent, NodeName};

/// The bound on a whole test body: a hang fails instead of blocking CI.
pub const TEST_TIMEOUT: Duration = Duration::from_secs(90);
/// The bound on one awaited condition.
pub const WAIT: Duration = Duration::from_secs(15);

/// Logs to the test's output, filtered by RUST_LOG (default: warnings).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_test_writer()
        .try_init();
}

/// Runs a test body under [`TEST_TIMEOUT`].
pub async fn bounded<F: Future<Output = ()>>(body: F) {
    init_tracing();
    tokio::time::timeout(TEST_TIMEOUT, body)
        .await
        .expect("test exceeded its time bound");
}

pub fn name(s: &str) -> NodeName {
    s.parse().expect("valid test node name")
}

/// A builder for `short@127.0.0.1` on a free loopback port with `cookie`.
pub fn builder(short: &str, cookie: &str) -> quicmesh::Builder {
    Node::builder()
        .name(format!("{short}@127.0.0.1"))
        .listen("127.0.0.1:0".parse().expect("addr"))
        .cookie(cookie)
}

/// A started node `short@127.0.0.1` with `cookie`.
pub async fn node(short: &str, cookie: &str) -> Node {
    builder(short, cookie).start().await.expect("node starts")
}

/// Waits for the first event matching `pred`, failing after [`WAIT`].
pub async fn next_event(
    events: &mut EventStream,
    what: &str,
    mut pred: impl FnMut(&NodeEvent) -> bool,
) -> NodeEvent {
    let wait = async {
        loop {
            let e = events.recv().await.expect("event stream open");
            if pred(&e) {
                return e;
            }
        }
    };
    tokio::time::timeout(WAIT, wait)
        .await
        .unwrap_or_else(|_| panic!("no event {what} within {WAIT:?}"))
}

/// Waits for `NodeUp` of `who`.
pub async fn wait_up(events: &mut EventStream, who: &NodeName) -> NodeEvent {
    next_event(
        events,
        &format!("NodeUp {who}"),
        |e| matches!(e, NodeEvent::NodeUp { node, .. } if node == who),
    )
    .await
}

/// Waits for `NodeDown` of `who` and returns its reason.
pub async fn wait_down(events: &mut EventStream, who: &NodeName) -> DownReason {
    match next_event(
        events,
        &format!("NodeDown {who}"),
        |e| matches!(e, NodeEvent::NodeDown { node, .. } if node == who),
    )
    .await
    {
        NodeEvent::NodeDown { reason, .. } => reason,
        other => unreachable!("{other:?}"),
    }
}

/// Polls `cond` every 10 ms until it holds, failing after [`WAIT`].
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "condition not met within {WAIT:?}: {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// The events queued now, without waiting.
pub fn drain(events: &mut EventStream) -> Vec<NodeEvent> {
    let mut v = Vec::new();
    while let Some(Ok(e)) = events.try_recv() {
        v.push(e);
    }
    v
}

/// Starts `short@127.0.0.1` on `listen`, a port another node of this test
/// just released: retries while the port is still held, up to [`WAIT`].
pub async fn start_on(short: &str, cookie: &str, listen: std::net::SocketAddr) -> Node {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        match builder(short, cookie).listen(listen).start().await {
            Ok(n) => return n,
            Err(quicmesh::StartError::Bind { .. }) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => panic!("{short} did not start on {listen}: {e}"),
        }
    }
}

/// Watches for `duration` (checking every 25 ms) that `node` stays
/// connected to `peer`: a change that must not happen, watched for as long
/// as the test's policy says it must hold.
pub async fn stays_connected(node: &Node, peer: &Node, duration: Duration) {
    let until = tokio::time::Instant::now() + duration;
    while tokio::time::Instant::now() < until {
        assert!(
            node.nodes().contains(peer.name()),
            "{} dropped {}",
            node.name(),
            peer.name()
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}
