//! `quicmesh demo`: a 3-node cluster on loopback that meets, loses a node
//! to SIGKILL and another to a graceful SIGTERM, and shows what each node
//! saw. No setup: a fresh random cookie, loopback only.
//!
//! Node a runs in this process; b and c are `quicmesh node` child
//! processes told only about a, whose event lines are shown as `[b] …`.
//! Each node is introduced before its first line, the status table's CA
//! fingerprint is explained, and the demo ends with the commands to start
//! a cluster by hand.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use quicmesh::{Cookie, DownReason, EventStream, Node, NodeEvent, NodeName, identity::COOKIE_ENV};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

const DEADLINE: Duration = Duration::from_secs(20);

pub(crate) async fn run() -> anyhow::Result<()> {
    let cookie = Cookie::random();
    let cookie_text = String::from_utf8_lossy(cookie.expose()).into_owned();
    println!("quicmesh demo: three nodes on 127.0.0.1, cookie mode with a fresh random cookie\n");

    let started = Instant::now();
    let a = Node::builder()
        .name("a@127.0.0.1")
        .listen("127.0.0.1:0".parse()?)
        .cookie(cookie_text.clone())
        .start()
        .await?;
    let mut events = a.events();
    println!(
        "a@127.0.0.1 runs in this process, listening on {}",
        a.local_addr()
    );

    // Each node is introduced before anything it prints: its lines can
    // only come once it is started.
    let (lines_tx, mut lines) = mpsc::channel(64);
    println!(
        "b@127.0.0.1 starts as a `quicmesh node` child process told only about a; \
         its event lines are shown as [b] ..."
    );
    let b = spawn_node("b", &a, &cookie_text, lines_tx.clone()).await?;
    println!("c@127.0.0.1 starts the same way, also told only about a: [c] ...");
    let c = spawn_node("c", &a, &cookie_text, lines_tx).await?;

    // Full mesh: a sees b and c, and b and c found each other through a.
    a.wait_for_nodes(2, DEADLINE)
        .await
        .context("a did not see b and c")?;
    expect_lines(&mut lines, &["[b] up c@127.0.0.1", "[c] up b@127.0.0.1"]).await?;
    println!(
        "full mesh of 3 nodes formed in {:.0} ms",
        started.elapsed().as_secs_f64() * 1e3
    );
    for n in a.nodes() {
        let rtt = a.ping(&n, DEADLINE).await?;
        println!("a pings {n}: {:.2} ms", rtt.as_secs_f64() * 1e3);
    }
    println!("\n{}", a.status());
    println!(
        "(CA {} is the fingerprint of the cluster CA each node derives from the cookie: \
         the same on every node with the same cookie)\n",
        a.ca_fingerprint()
    );

    let c_name: NodeName = "c@127.0.0.1".parse()?;
    println!("killing c with SIGKILL (no goodbye: the failure detector must notice)...");
    let killed = Instant::now();
    let mut c = c;
    c.start_kill()?;
    let reason = wait_down(&mut events, &c_name).await?;
    println!(
        "a: NodeDown {{ node: {c_name}, reason: {reason:?} }} after {:.2} s",
        killed.elapsed().as_secs_f64()
    );
    expect_lines(&mut lines, &["[b] down c@127.0.0.1 heartbeat timeout"]).await?;
    let _ = c.wait().await;

    let b_name: NodeName = "b@127.0.0.1".parse()?;
    println!("\nstopping b with SIGTERM (graceful: it tells its peers)...");
    let stopped = Instant::now();
    let mut b = b;
    terminate(&b)?;
    let reason = wait_down(&mut events, &b_name).await?;
    println!(
        "a: NodeDown {{ node: {b_name}, reason: {reason:?} }} after {:.0} ms",
        stopped.elapsed().as_secs_f64() * 1e3
    );
    let status = b.wait().await?;
    println!("b exited: {status}");

    println!("\n{}", a.status());
    a.shutdown().await;
    println!("demo done\n");
    for line in NEXT {
        println!("{line}");
    }
    Ok(())
}

/// What the demo ends with: how to run a cluster of one's own.
const NEXT: [&str; 8] = [
    "next: a cluster of your own, one node per terminal (sharing ~/.quicmesh.cookie, made on first use):",
    "  quicmesh node --name a@127.0.0.1:4370",
    "  quicmesh node --name b@127.0.0.1:4371 --connect a@127.0.0.1:4370 --register cache",
    "  quicmesh node --name c@127.0.0.1:4372 --connect a@127.0.0.1:4370 --lock invoices",
    "then ask it, from a fourth terminal:",
    "  quicmesh members --connect a@127.0.0.1:4370",
    "  quicmesh names --connect a@127.0.0.1:4370   (or status, whereis cache, leaders, locks; --json)",
    "  quicmesh ping c@127.0.0.1:4372",
];

/// Starts `quicmesh node` as `<short>@127.0.0.1` on a free port, seeded
/// with `seed`; its event lines go to `lines` as `[<short>] <line>`.
async fn spawn_node(
    short: &str,
    seed: &Node,
    cookie: &str,
    lines: mpsc::Sender<String>,
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut process = Command::new(exe)
        .args(["node", "--name", &format!("{short}@127.0.0.1:0")])
        .args(["--connect", &seed.addr().to_string()])
        .env(COOKIE_ENV, cookie)
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let stdout = process.stdout.take().context("no stdout")?;
    let mut reader = BufReader::new(stdout).lines();
    let first = tokio::time::timeout(DEADLINE, reader.next_line())
        .await
        .context("child node did not start in time")??;
    match first {
        Some(l) if l.starts_with("listening ") => {}
        other => bail!("child node {short} failed to start: {other:?}"),
    }
    let prefix = format!("[{short}]");
    tokio::spawn(async move {
        while let Ok(Some(line)) = reader.next_line().await {
            let line = format!("{prefix} {line}");
            println!("{line}");
            if lines.send(line).await.is_err() {
                return;
            }
        }
    });
    Ok(process)
}

/// Waits until every line in `want` has been printed by the children.
async fn expect_lines(lines: &mut mpsc::Receiver<String>, want: &[&str]) -> anyhow::Result<()> {
    let mut missing: Vec<&str> = want.to_vec();
    let wait = async {
        while !missing.is_empty() {
            let line = lines.recv().await.context("child output ended")?;
            missing.retain(|w| *w != line);
        }
        Ok::<_, anyhow::Error>(())
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .with_context(|| format!("children did not print {want:?}"))?
}

async fn wait_down(events: &mut EventStream, who: &NodeName) -> anyhow::Result<DownReason> {
    let wait = async {
        loop {
            if let NodeEvent::NodeDown { node, reason } = events.recv().await?
                && &node == who
            {
                return Ok::<_, anyhow::Error>(reason);
            }
        }
    };
    tokio::time::timeout(DEADLINE, wait)
        .await
        .with_context(|| format!("no NodeDown for {who}"))?
}

fn terminate(child: &Child) -> anyhow::Result<()> {
    let pid = child.id().context("child already exited")?;
    let status = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()?;
    if !status.success() {
        bail!("kill -TERM {pid} failed");
    }
    Ok(())
}
