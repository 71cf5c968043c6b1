//! Coordination across three nodes in one process on loopback: a global
//! name, a cluster lock with its fencing token, and a leader election
//! that moves to another node when the leader's node shuts down.
//!
//! Run: `cargo run --example coordination`

use std::sync::Mutex;
use std::time::Duration;

use quicmesh::{LeaderChange, LockError, LockOptions, Node, RegistryError, Token};

const WAIT: Duration = Duration::from_secs(10);

/// What a cluster lock protects: it remembers the largest token it has
/// seen and refuses writes with a smaller one, so a holder whose lock was
/// given away while it was cut off or paused cannot write any more.
#[derive(Debug, Default)]
struct FencedStore {
    state: Mutex<(Token, Vec<String>)>,
}

impl FencedStore {
    fn write(&self, token: Token, line: &str) -> Result<(), String> {
        let mut state = self.state.lock().expect("store lock");
        if token < state.0 {
            return Err(format!("refused: token {token} is older than {}", state.0));
        }
        state.0 = token;
        state.1.push(line.to_owned());
        Ok(())
    }
}

/// Who leads, for printing.
fn leader(change: &LeaderChange) -> String {
    change
        .leader
        .as_ref()
        .map_or_else(|| "none".into(), ToString::to_string)
}

async fn start(short: &str, seed: Option<&Node>) -> Result<Node, Box<dyn std::error::Error>> {
    let mut builder = Node::builder()
        .name(format!("{short}@127.0.0.1"))
        .listen("127.0.0.1:0".parse()?)
        .cookie("example cookie: use QUICMESH_COOKIE or ~/.quicmesh.cookie for real");
    if let Some(seed) = seed {
        builder = builder.seed(seed.addr());
    }
    Ok(builder.start().await?)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // b and c know only a; they meet each other through it.
    let a = start("a", None).await?;
    let b = start("b", Some(&a)).await?;
    let c = start("c", Some(&a)).await?;
    for node in [&a, &b, &c] {
        node.wait_for_nodes(2, WAIT).await?;
    }
    let names: Vec<String> = a.nodes().iter().map(ToString::to_string).collect();
    println!("full mesh: a sees {}", names.join(", "));

    // --- Global registry: one owner of a name, cluster-wide. ---
    a.register("cache", |_ctx, key: String| async move {
        Ok::<_, String>(format!("cached value of {key}"))
    })?;
    let registration = a.registry().register("cache_worker", "cache").await?;
    println!(
        "a registered {:?} for its service {:?}",
        registration.name, registration.service
    );
    // Written on every connected node before register returned: b and c
    // look it up locally, without a network round trip.
    let owner = b.registry().whereis("cache_worker").map(|r| r.owner);
    println!(
        "b: whereis(cache_worker) = {}",
        owner
            .as_ref()
            .map_or_else(|| "nobody".into(), ToString::to_string)
    );
    assert_eq!(owner.as_ref(), Some(a.name()));
    let value: String = c
        .registry()
        .call("cache_worker", &"colour".to_owned())
        .await?;
    println!("c called cache_worker: {value:?}");
    match c.registry().register("cache_worker", "cache").await {
        Err(RegistryError::AlreadyRegistered { owner, .. }) => {
            println!("c cannot register cache_worker: {owner} has it");
        }
        other => panic!("expected AlreadyRegistered, got {other:?}"),
    }

    // --- Cluster lock with a fencing token. ---
    let store = FencedStore::default();
    let guard = a.lock("invoices").await?;
    let a_token = guard.token();
    println!("a holds invoices, token {a_token}");
    store.write(a_token, "a: invoice 1")?;
    // While a holds it, b gives up after its own timeout.
    let quick = LockOptions::default().timeout(Duration::from_millis(300));
    match b.lock_with("invoices", &quick).await {
        Err(LockError::Timeout { attempts, .. }) => {
            println!("b could not take invoices ({attempts} attempts): a holds it");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(!guard.is_lost(), "nobody else was granted the lock");
    guard.release().await; // or drop it
    let guard = b.lock("invoices").await?;
    let b_token = guard.token();
    println!(
        "b holds invoices, token {b_token} (larger than a's: {})",
        b_token > a_token
    );
    assert!(b_token > a_token);
    store.write(b_token, "b: invoice 2")?;
    // A write with a's old token, as from a holder that lost the lock while
    // it was cut off: the store refuses it.
    let refused = store
        .write(a_token, "a: late invoice")
        .expect_err("stale token");
    println!("the store to a's late write: {refused}");
    drop(guard);
    // trans: take the lock, run the work with the token, release.
    let store = &store;
    let c_token = c
        .trans("invoices", |token| async move {
            store.write(token, "c: invoice 3").map(|()| token)
        })
        .await??;
    println!("c wrote under invoices with token {c_token}");

    // --- Leader election. ---
    let mut changes = a.election("scheduler").observe();
    let leadership = b.election("scheduler").campaign().await?;
    let b_term = leadership.term();
    println!("b leads scheduler, term {b_term}");
    let change = tokio::time::timeout(WAIT, changes.recv()).await??;
    println!("a sees: leader {}, term {}", leader(&change), change.term);
    assert_eq!(change.leader.as_ref(), Some(b.name()));
    assert!(b.election("scheduler").am_leader());

    // c campaigns too: it waits while b leads.
    let campaign = tokio::spawn({
        let c = c.clone();
        async move { c.election("scheduler").campaign().await }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!campaign.is_finished(), "c must wait while b leads");
    // b's node shuts down gracefully: its lock goes at once on every node
    // and c takes over with a larger term.
    b.shutdown().await;
    drop(leadership);
    let c_leads = tokio::time::timeout(WAIT, campaign).await???;
    println!(
        "b shut down; c leads scheduler, term {} (larger than b's: {})",
        c_leads.term(),
        c_leads.term() > b_term
    );
    assert!(c_leads.term() > b_term);
    let seen = tokio::time::timeout(WAIT, async {
        loop {
            let change = changes.recv().await?;
            if change.leader.as_ref() == Some(c.name()) {
                return Ok::<_, tokio::sync::broadcast::error::RecvError>(change);
            }
        }
    })
    .await??;
    println!("a sees: leader {}, term {}", leader(&seen), seen.term);
    c_leads.resign().await;

    // b's names went with it; a's are still there.
    assert!(a.registry().whereis("cache_worker").is_some());
    c.shutdown().await;
    a.shutdown().await;
    Ok(())
}
