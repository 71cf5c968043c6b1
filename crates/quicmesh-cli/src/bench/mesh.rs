//! `quicmesh bench mesh`: what a full mesh of N nodes costs.
//!
//! For each N, every node is told of one other (the first) and all start
//! at once. Measured: the time until every node has every other up, CPU
//! and memory per node at rest, loopback traffic per node at rest (the
//! heartbeats), and, with processes, the time until every other node sees
//! a SIGKILLed node down and sees it up again after it restarts.
//!
//! With `--processes` each node is a `quicmesh node` process in
//! certificate mode (certificates issued into a temporary directory, so no
//! process spends its start deriving a CA from a cookie); without, all
//! nodes run in this process, which is what the test suite runs.
//!
//! Each node listens on an address of its own in 127.0.0.0/8 (Linux
//! routes all of it to the loopback interface), as nodes of a real cluster
//! have addresses of their own: a node lets at most
//! `MAX_HANDSHAKES_PER_SOURCE` handshakes from one address run at once, so
//! N nodes behind one address join one another in turns.
//! `--shared-address` puts them all on 127.0.0.1 instead.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use quicmesh::{Node, NodeAddr, NodeName};
use quicmesh_identity::{CertificateAuthority, write_issued};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};
use tokio::time::Instant;

use super::stats::{cpu_us_of, loopback_tx_bytes, rss_kib_of};

#[derive(Debug, Args)]
pub(crate) struct MeshArgs {
    /// Cluster sizes, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "10,50")]
    nodes: Vec<usize>,
    /// Run each node as a `quicmesh node` process (default: all in this
    /// process).
    #[arg(long)]
    processes: bool,
    /// Give up on a full mesh after this many seconds.
    #[arg(long, default_value_t = 120)]
    deadline: u64,
    /// Watch the nodes at rest for this many seconds.
    #[arg(long, default_value_t = 5)]
    rest: u64,
    /// Every node on 127.0.0.1 (as behind one address), instead of an
    /// address of its own in 127.0.0.0/8.
    #[arg(long)]
    shared_address: bool,
}

/// Where node `i` listens: port 0 of its own loopback address, or of
/// 127.0.0.1 for all when `shared`.
fn listen_of(i: usize, shared: bool) -> SocketAddr {
    let ip = if shared {
        Ipv4Addr::LOCALHOST
    } else {
        // 127.0.0.1, 127.0.0.2, …, 127.0.0.254, 127.0.1.1, … (`run`
        // allows at most 254 × 256 nodes, so both parts fit a byte).
        let (high, low) = (i / 254, i % 254 + 1);
        Ipv4Addr::new(127, 0, u8::try_from(high).unwrap_or(u8::MAX), low as u8)
    };
    SocketAddr::new(IpAddr::V4(ip), 0)
}

/// What one cluster size measured.
#[derive(Debug, Default)]
struct Report {
    nodes: usize,
    full_mesh: Option<Duration>,
    /// CPU time all nodes spent until the full mesh (processes only).
    cpu_to_mesh: Option<Duration>,
    missing: usize,
    cpu_per_node: f64,
    rss_kib_per_node: u64,
    lo_bytes_per_node_s: u64,
    detected: Option<Duration>,
    rejoined: Option<Duration>,
}

pub(crate) async fn run(args: MeshArgs) -> anyhow::Result<()> {
    let deadline = Duration::from_secs(args.deadline);
    let rest = Duration::from_secs(args.rest.max(1));
    let mut reports = Vec::new();
    for &n in &args.nodes {
        anyhow::ensure!(n >= 2, "a mesh needs at least 2 nodes, not {n}");
        anyhow::ensure!(n <= 254 * 256, "at most {} nodes", 254 * 256);
        let shared = args.shared_address;
        let report = if args.processes {
            processes(n, deadline, rest, shared).await?
        } else {
            in_process(n, deadline, rest, shared).await?
        };
        print_report(&report);
        reports.push(report);
    }
    let incomplete: Vec<usize> = reports
        .iter()
        .filter(|r| r.full_mesh.is_none())
        .map(|r| r.nodes)
        .collect();
    anyhow::ensure!(
        incomplete.is_empty(),
        "no full mesh within {deadline:?} for {incomplete:?} nodes"
    );
    Ok(())
}

fn print_report(r: &Report) {
    let ms =
        |d: Option<Duration>| d.map_or_else(|| "-".to_owned(), |d| format!("{} ms", d.as_millis()));
    println!(
        "nodes {}: full mesh {}{}{}; at rest per node: {:.2} % of a core, {} KiB RSS, {} B/s on loopback; SIGKILLed node down everywhere {}, back everywhere {}",
        r.nodes,
        ms(r.full_mesh),
        r.cpu_to_mesh.map_or_else(String::new, |c| format!(
            " ({:.1} CPU-s in all)",
            c.as_secs_f64()
        )),
        if r.missing > 0 {
            format!(" ({} links missing)", r.missing)
        } else {
            String::new()
        },
        r.cpu_per_node,
        r.rss_kib_per_node,
        r.lo_bytes_per_node_s,
        ms(r.detected),
        ms(r.rejoined),
    );
}

/// CPU (percent of a core), loopback bytes per second, over `rest`.
async fn at_rest(rest: Duration, cpu_now: impl Fn() -> u64) -> (f64, u64) {
    let (cpu0, lo0, t0) = (cpu_now(), loopback_tx_bytes(), Instant::now());
    tokio::time::sleep(rest).await;
    let secs = t0.elapsed().as_secs_f64();
    let cpu = (cpu_now().saturating_sub(cpu0)) as f64 / 1e6 / secs * 100.0;
    let lo = (loopback_tx_bytes().saturating_sub(lo0)) as f64 / secs;
    (cpu, lo as u64)
}

async fn in_process(
    n: usize,
    deadline: Duration,
    rest: Duration,
    shared: bool,
) -> anyhow::Result<Report> {
    let cookie = "bench-mesh";
    let rss0 = rss_kib_of("self");
    let start = |i: usize, seed: Option<NodeAddr>| async move {
        let mut builder = Node::builder()
            .name(format!("m{i}@127.0.0.1"))
            .listen(listen_of(i, shared))
            .cookie(cookie);
        if let Some(seed) = seed {
            builder = builder.seed(seed);
        }
        anyhow::Ok(builder.start().await?)
    };
    let first = start(0, None).await?;
    let seed = first.addr();
    let started = Instant::now();
    let mut nodes = vec![first];
    for i in 1..n {
        nodes.push(start(i, Some(seed.clone())).await?);
    }
    let until = started + deadline;
    let mut full_mesh = None;
    loop {
        let missing: usize = nodes
            .iter()
            .map(|m| (n - 1).saturating_sub(m.nodes().len()))
            .sum();
        if missing == 0 {
            full_mesh = Some(started.elapsed());
            break;
        }
        if Instant::now() >= until {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing = nodes
        .iter()
        .map(|m| (n - 1).saturating_sub(m.nodes().len()))
        .sum();
    let (cpu, lo) = at_rest(rest, || cpu_us_of("self")).await;
    let report = Report {
        nodes: n,
        full_mesh,
        cpu_to_mesh: None,
        missing,
        cpu_per_node: cpu / n as f64,
        rss_kib_per_node: rss_kib_of("self").saturating_sub(rss0) / n as u64,
        lo_bytes_per_node_s: lo / n as u64,
        detected: None,
        rejoined: None,
    };
    for m in &nodes {
        m.shutdown().await;
    }
    Ok(report)
}

/// A `quicmesh node` process and the nodes it has up, as it prints them.
struct Proc {
    child: Child,
    name: String,
    up: Arc<Mutex<HashSet<String>>>,
    listening: Arc<Mutex<Option<String>>>,
}

impl Proc {
    fn start(
        exe: &Path,
        dir: &Path,
        name: &str,
        listen: &str,
        seed: Option<&str>,
    ) -> anyhow::Result<Self> {
        let mut cmd = Command::new(exe);
        cmd.args(["node", "--name", name, "--listen", listen])
            .arg("--ca")
            .arg(dir.join("ca.pem"))
            .arg("--cert")
            .arg(dir.join(format!("{name}.pem")))
            .arg("--key")
            .arg(dir.join(format!("{name}.key")));
        if let Some(seed) = seed {
            cmd.args(["--connect", seed]);
        }
        let mut child = cmd
            .env("RUST_LOG", "error")
            .env_remove("QUICMESH_COOKIE")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .context("start quicmesh node")?;
        let up = Arc::new(Mutex::new(HashSet::new()));
        let listening = Arc::new(Mutex::new(None));
        let stdout = child.stdout.take().context("stdout")?;
        let (up2, listening2) = (up.clone(), listening.clone());
        tokio::spawn(async move {
            let mut lines = BufReader::new(stdout).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(addr) = line.strip_prefix("listening ") {
                    *listening2.lock().unwrap_or_else(|e| e.into_inner()) = Some(addr.to_owned());
                } else if let Some(peer) = line.strip_prefix("up ") {
                    up2.lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(peer.to_owned());
                } else if let Some(rest) = line.strip_prefix("down ") {
                    let peer = rest.split_whitespace().next().unwrap_or_default();
                    up2.lock().unwrap_or_else(|e| e.into_inner()).remove(peer);
                }
            }
        });
        Ok(Self {
            child,
            name: name.to_owned(),
            up,
            listening,
        })
    }

    fn has_up(&self) -> HashSet<String> {
        self.up.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn pid(&self) -> String {
        self.child.id().map(|p| p.to_string()).unwrap_or_default()
    }
}

/// Polls `done` every 10 ms until it holds or `until`; how long it took.
async fn wait_until(started: Instant, until: Instant, done: impl Fn() -> bool) -> Option<Duration> {
    loop {
        if done() {
            return Some(started.elapsed());
        }
        if Instant::now() >= until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn processes(
    n: usize,
    deadline: Duration,
    rest: Duration,
    shared: bool,
) -> anyhow::Result<Report> {
    let exe = std::env::current_exe().context("this executable")?;
    let dir = CertDir::new()?;
    let ca = CertificateAuthority::generate("quicmesh bench mesh CA", 1)?;
    ca.write_dir(dir.path(), false)?;
    let names: Vec<String> = (0..n).map(|i| format!("m{i}@127.0.0.1")).collect();
    for name in &names {
        let node: NodeName = name.parse()?;
        write_issued(&ca.issue(&node, 1)?, dir.path(), &node, false)?;
    }
    let mut procs = vec![Proc::start(
        &exe,
        dir.path(),
        &names[0],
        &listen_of(0, shared).to_string(),
        None,
    )?];
    wait_until(Instant::now(), Instant::now() + deadline, || {
        procs[0]
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    })
    .await
    .context("the first node did not start")?;
    let seed = procs[0]
        .listening
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone()
        .context("the first node's address")?;
    let started = Instant::now();
    for (i, name) in names.iter().enumerate().skip(1) {
        procs.push(Proc::start(
            &exe,
            dir.path(),
            name,
            &listen_of(i, shared).to_string(),
            Some(&seed),
        )?);
    }
    let everyone = |procs: &[Proc], except: Option<usize>| {
        procs.iter().enumerate().all(|(i, p)| {
            Some(i) == except || {
                let up = p.has_up();
                names
                    .iter()
                    .enumerate()
                    .all(|(j, other)| j == i || Some(j) == except || up.contains(other))
            }
        })
    };
    let full_mesh = wait_until(started, started + deadline, || everyone(&procs, None)).await;
    let missing: usize = procs
        .iter()
        .map(|p| (n - 1).saturating_sub(p.has_up().len()))
        .sum();
    let pids: Vec<String> = procs.iter().map(Proc::pid).collect();
    let cpu_all = || pids.iter().map(|p| cpu_us_of(p)).sum::<u64>();
    let cpu_to_mesh = full_mesh.map(|_| Duration::from_micros(cpu_all()));
    let (cpu, lo) = at_rest(rest, cpu_all).await;
    let rss: u64 = pids.iter().map(|p| rss_kib_of(p)).sum();
    let mut report = Report {
        nodes: n,
        full_mesh,
        cpu_to_mesh,
        missing,
        cpu_per_node: cpu / n as f64,
        rss_kib_per_node: rss / n as u64,
        lo_bytes_per_node_s: lo / n as u64,
        detected: None,
        rejoined: None,
    };
    if full_mesh.is_some() {
        // SIGKILL the last node; the others must see it down, then up
        // again once it restarts on the same address.
        let victim = n - 1;
        let addr = procs[victim]
            .listening
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .context("the victim's address")?;
        // The node's address names its host (127.0.0.1), not the address
        // it listens on: the port comes from there, the IP from its slot.
        let port: u16 = addr
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .context("name@host:port")?;
        let listen = SocketAddr::new(listen_of(victim, shared).ip(), port).to_string();
        procs[victim].child.start_kill()?;
        let _ = procs[victim].child.wait().await;
        let killed = Instant::now();
        let gone = &names[victim];
        report.detected = wait_until(killed, killed + deadline, || {
            procs
                .iter()
                .enumerate()
                .all(|(i, p)| i == victim || !p.has_up().contains(gone))
        })
        .await;
        let restarted = Instant::now();
        procs[victim] = Proc::start(
            &exe,
            dir.path(),
            &procs[victim].name.clone(),
            &listen,
            Some(&seed),
        )?;
        report.rejoined =
            wait_until(restarted, restarted + deadline, || everyone(&procs, None)).await;
    }
    drop(procs);
    Ok(report)
}

/// A directory for the bench's certificates, removed when dropped.
struct CertDir(std::path::PathBuf);

impl CertDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "quicmesh-bench-mesh-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_nanos())
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        Ok(Self(dir))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for CertDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
