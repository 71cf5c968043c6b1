//! `Node::register_metrics`: the families in an application's own
//! registry move when calls, locks, names, elections and node downs
//! happen, and a registry outliving its node encodes nothing for it.

#[path = "../support/mod.rs"]
mod support;

use quicmesh::prometheus_client::encoding::text::encode;
use quicmesh::prometheus_client::registry::Registry;
use quicmesh::{Node, RpcError};
use support::*;

const COOKIE: &str = "metrics-cookie";

fn scrape(registry: &Registry) -> String {
    let mut text = String::new();
    encode(&mut text, registry).expect("metrics encode");
    text
}

/// The value of the series `series` (name and labels exactly as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

async fn pair() -> (Node, Node) {
    let a = node("a", COOKIE).await;
    let b = node("b", COOKIE).await;
    a.connect(&b.addr()).await.expect("connect");
    b.wait_for_nodes(1, WAIT).await.expect("b sees a");
    (a, b)
}

#[tokio::test]
async fn calls_locks_names_and_elections_move_their_families() {
    bounded(async {
        let (a, b) = pair().await;
        let mut registry = Registry::default();
        a.register_metrics(&mut registry);
        b.register("echo", |_ctx, x: u32| async move { Ok::<_, String>(x) })
            .expect("register");
        b.register("fails", |_ctx, _: ()| async move { Err::<(), _>("no") })
            .expect("register");

        let got: u32 = a.call(b.name(), "echo", &7u32).await.expect("a call");
        assert_eq!(got, 7);
        let err = a.call::<_, ()>(b.name(), "missing", &()).await;
        assert!(
            matches!(err, Err(RpcError::NoSuchService { .. })),
            "{err:?}"
        );
        let err = a.call::<_, ()>(b.name(), "fails", &()).await;
        assert!(matches!(err, Err(RpcError::Remote { .. })), "{err:?}");
        let t = scrape(&registry);
        let calls = |service: &str, outcome: &str| {
            let series =
                format!("quicmesh_rpc_calls_total{{service=\"{service}\",outcome=\"{outcome}\"}}");
            value(&t, &series)
        };
        assert_eq!(calls("echo", "ok"), Some(1.0), "{t}");
        // Outcomes that never happened are left out, except `ok`.
        assert_eq!(calls("echo", "timeout"), None, "{t}");
        assert_eq!(calls("missing", "ok"), Some(0.0), "{t}");
        assert_eq!(calls("missing", "no_such_service"), Some(1.0), "{t}");
        assert_eq!(calls("fails", "remote"), Some(1.0), "{t}");
        let count = "quicmesh_rpc_call_duration_seconds_count{service=\"echo\"}";
        assert_eq!(value(&t, count), Some(1.0), "{t}");
        let inf = "quicmesh_rpc_call_duration_seconds_bucket{le=\"+Inf\",service=\"echo\"}";
        assert_eq!(value(&t, inf), Some(1.0), "{t}");
        assert_eq!(value(&t, "quicmesh_peers{state=\"up\"}"), Some(1.0), "{t}");

        // A lock, a name and an election, each counted.
        let guard = a.lock("resource").await.expect("lock");
        a.registry().register("svc", "here").await.expect("name");
        let leadership = a.election("e").campaign().await.expect("leads");
        let t = scrape(&registry);
        let acquired = "quicmesh_lock_attempts_total{outcome=\"acquired\"}";
        assert_eq!(value(&t, acquired), Some(1.0), "{t}");
        assert_eq!(
            value(&t, "quicmesh_lock_wait_seconds_count"),
            Some(1.0),
            "{t}"
        );
        // The election holds a lock of its own (not counted as an attempt).
        assert_eq!(value(&t, "quicmesh_locks_held"), Some(2.0), "{t}");
        assert_eq!(value(&t, "quicmesh_registry_names"), Some(1.0), "{t}");
        let changes = "quicmesh_election_leader_changes_total";
        assert!(value(&t, changes) >= Some(1.0), "{t}");
        drop(leadership);
        guard.release().await;

        // b goes down: counted by reason.
        b.shutdown().await;
        eventually("a counts b down", || {
            let t = scrape(&registry);
            value(&t, "quicmesh_node_down_total{reason=\"shutdown\"}") == Some(1.0)
        })
        .await;
        a.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn a_registry_does_not_keep_its_node_and_forgets_it() {
    bounded(async {
        let a = node("a", COOKIE).await;
        let mut registry = Registry::default();
        a.register_metrics(&mut registry);
        assert!(scrape(&registry).contains("quicmesh_node_info{node=\"a@127.0.0.1\"} 1"));
        a.shutdown().await;
        drop(a);
        let t = scrape(&registry);
        assert!(!t.contains("quicmesh_"), "{t}");
    })
    .await;
}
