//! `quicmesh bench`: cross-process RPC benchmarks against a raw quinn
//! baseline measured in the same run, on the same server process and TLS.
//!
//! `bench serve` runs a node with the bench services and, beside it, a raw
//! quinn echo endpoint built from the same identity. `bench rpc` measures,
//! for each payload and concurrency: quicmesh calls, raw stream-per-call
//! echo and raw long-lived-lane echo; then a one-way streaming call against
//! raw single-stream bulk, and the "mixed" run (64-byte call latency while
//! 1 MiB calls stream alongside). It prints a table and the ratios the
//! targets are stated in.

mod mesh;
mod raw;
mod stats;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use quicmesh::identity::{Cookie, Identity};
use quicmesh::{Node, NodeAddr, NodeName, Requests, Responses};
use serde_bytes::ByteBuf;
use tokio::time::Instant;

use stats::{Run, histogram, parse_size, process_cpu_us, size_label};

const ECHO: &str = "bench.echo";
const SINK: &str = "bench.sink";
const CPU: &str = "bench.cpu";
const RAW_ADDR: &str = "bench.raw_addr";
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The raw modes a quicmesh call is compared with; the best one counts.
const RAW_PER_CALL: &str = "raw stream per call";
const RAW_LANES: &str = "raw lane per caller";
const RAW_SHARED: &str = "raw shared lane, ids";
const MIXED_IDLE: &str = "mixed: 64B idle";
const MIXED_BUSY: &str = "mixed: 64B beside 1MiB";
const RAW_MIXED_IDLE: &str = "raw mixed: 64B idle";
const RAW_MIXED_BUSY: &str = "raw mixed: 64B beside 1MiB";

#[derive(Debug, Subcommand)]
pub(crate) enum BenchCommand {
    /// Serve the bench services (and the raw baseline) until Ctrl-C.
    Serve(ServeArgs),
    /// Measure RPC against a `bench serve` process.
    Rpc(RpcArgs),
    /// Measure what a full mesh of N nodes costs (cold start, rest,
    /// failure detection, rejoin).
    Mesh(mesh::MeshArgs),
}

#[derive(Debug, Args)]
pub(crate) struct ServeArgs {
    /// This node, name@host:port.
    #[arg(long, default_value = "bench@127.0.0.1:4380")]
    name: NodeAddr,
    /// The cluster cookie (default: $QUICMESH_COOKIE or ~/.quicmesh.cookie).
    #[arg(long)]
    cookie: Option<String>,
}

#[derive(Debug, Args)]
pub(crate) struct RpcArgs {
    /// The `bench serve` node, name@host:port.
    #[arg(long)]
    connect: NodeAddr,
    /// This node's name.
    #[arg(long, default_value = "bench-client@127.0.0.1:0")]
    name: NodeAddr,
    /// The cluster cookie (default: $QUICMESH_COOKIE or ~/.quicmesh.cookie).
    #[arg(long)]
    cookie: Option<String>,
    /// Payload sizes, comma-separated (64, 1KiB, 1MiB).
    #[arg(long, value_delimiter = ',', default_value = "64,1KiB,1MiB", value_parser = parse_size)]
    payload: Vec<usize>,
    /// Calls in flight, comma-separated.
    #[arg(long, value_delimiter = ',', default_value = "1,16,64")]
    concurrency: Vec<usize>,
    /// Length of each measured run (e.g. 10s, 500ms).
    #[arg(long, default_value = "10s", value_parser = crate::node::parse_duration)]
    duration: Duration,
    /// How many times to measure everything; with more than one, the
    /// median of each ratio is reported too.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    repeat: u32,
    /// Also write the results as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
}

fn cookie(flag: Option<String>) -> anyhow::Result<Cookie> {
    Ok(match flag {
        Some(c) => Cookie::new(c)?,
        None => Cookie::from_env_or_file(None)?,
    })
}

fn listen_of(addr: &NodeAddr) -> anyhow::Result<SocketAddr> {
    let host = addr.name.host().trim_matches(|c| c == '[' || c == ']');
    Ok(SocketAddr::new(
        host.parse().context("bench nodes need an IP host")?,
        addr.port,
    ))
}

async fn start_node(addr: &NodeAddr, cookie: &Cookie) -> anyhow::Result<Node> {
    let text = String::from_utf8_lossy(cookie.expose()).into_owned();
    Ok(Node::builder()
        .name(addr.name.as_str())
        .listen(listen_of(addr)?)
        .cookie(text)
        .configure(|c| c.rpc.max_message = 64 << 20)
        .start()
        .await?)
}

pub(crate) async fn run(cmd: BenchCommand) -> anyhow::Result<()> {
    match cmd {
        BenchCommand::Serve(args) => serve(args).await,
        BenchCommand::Rpc(args) => client(args).await,
        BenchCommand::Mesh(args) => mesh::run(args).await,
    }
}

async fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cookie = cookie(args.cookie)?;
    let node = start_node(&args.name, &cookie).await?;
    let identity = Identity::from_cookie(node.name().clone(), &cookie, Duration::from_secs(3600))?;
    let (_raw, raw_addr) = raw::serve(&identity)?;
    node.register(
        ECHO,
        |_, body: ByteBuf| async move { Ok::<_, String>(body) },
    )?;
    node.register(CPU, |_, ()| async { Ok::<_, String>(process_cpu_us()) })?;
    node.register(
        RAW_ADDR,
        move |_, ()| async move { Ok::<_, String>(raw_addr) },
    )?;
    node.register_stream(
        SINK,
        |_, (): (), mut input: Requests<ByteBuf>, mut out: Responses<u64>| async move {
            let mut total = 0u64;
            while let Some(chunk) = input.next().await {
                total += chunk.map_err(|e| e.to_string())?.len() as u64;
            }
            out.send(&total).await.map_err(|e| e.to_string())
        },
    )?;
    crate::say::say(format_args!("listening {}", node.addr()));
    crate::say::say(format_args!("raw baseline on {raw_addr}"));
    tokio::signal::ctrl_c().await?;
    node.shutdown().await;
    Ok(())
}

/// What each worker of a run returns.
struct WorkerResult {
    hist: hdrhistogram::Histogram<u64>,
    errors: u64,
    bytes: u64,
}

/// Runs `concurrency` workers until `duration` passes, printing progress;
/// each worker gets its index and the deadline.
async fn measure<F, Fut>(
    node: &Node,
    server: &NodeName,
    label: &str,
    payload: usize,
    concurrency: usize,
    duration: Duration,
    worker: F,
) -> anyhow::Result<Run>
where
    F: Fn(usize, Instant, Arc<AtomicU64>) -> Fut,
    Fut: Future<Output = WorkerResult> + Send + 'static,
{
    let server_cpu_before: u64 = node.call(server, CPU, &()).await?;
    let cpu_before = process_cpu_us();
    let start = Instant::now();
    let deadline = start + duration;
    let done = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..concurrency {
        tasks.spawn(worker(i, deadline, done.clone()));
    }
    let progress = {
        let (done, label) = (
            done.clone(),
            format!("{label} {} x{concurrency}", size_label(payload)),
        );
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let n = done.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(1e-3);
                eprint!("\r  {label:<40} {n:>9} calls {:>9.0}/s ", n as f64 / secs);
            }
        })
    };
    let mut hist = histogram();
    let (mut errors, mut bytes) = (0, 0);
    while let Some(r) = tasks.join_next().await {
        let r = r?;
        hist.add(&r.hist).ok();
        errors += r.errors;
        bytes += r.bytes;
    }
    let elapsed = start.elapsed();
    progress.abort();
    eprintln!();
    let cpu_client = process_cpu_us() - cpu_before;
    let server_cpu_after: u64 = node.call(server, CPU, &()).await?;
    Ok(Run::new(
        label,
        payload,
        concurrency,
        &hist,
        errors,
        elapsed,
        bytes,
        cpu_client,
        server_cpu_after.saturating_sub(server_cpu_before),
    ))
}

/// A worker loop: `call` until the deadline, timing each call.
async fn loop_calls<C, CFut>(
    deadline: Instant,
    done: Arc<AtomicU64>,
    bytes_per_call: u64,
    mut call: C,
) -> WorkerResult
where
    C: FnMut() -> CFut,
    CFut: Future<Output = anyhow::Result<usize>>,
{
    let mut r = WorkerResult {
        hist: histogram(),
        errors: 0,
        bytes: 0,
    };
    while Instant::now() < deadline {
        let t = Instant::now();
        match call().await {
            Ok(_) => {
                let _ = r.hist.record(t.elapsed().as_micros().max(1) as u64);
                r.bytes += bytes_per_call;
                done.fetch_add(1, Ordering::Relaxed);
            }
            Err(_) => r.errors += 1,
        }
    }
    r
}

async fn client(args: RpcArgs) -> anyhow::Result<()> {
    let cookie = cookie(args.cookie.clone())?;
    let node = start_node(&args.name, &cookie).await?;
    node.connect(&args.connect).await?;
    let server = args.connect.name.clone();
    let identity = Identity::from_cookie(node.name().clone(), &cookie, Duration::from_secs(3600))?;
    let raw_addr: SocketAddr = node.call(&server, RAW_ADDR, &()).await?;
    let raw = raw::connect(&identity, &server, raw_addr).await?;
    println!(
        "quicmesh bench: {} → {} ({} s per run); raw baseline at {raw_addr}",
        node.name(),
        server,
        args.duration.as_secs_f64()
    );

    let mut all_ratios = Vec::new();
    let mut rounds = Vec::new();
    for round_no in 1..=args.repeat {
        if args.repeat > 1 {
            println!("\nround {round_no} of {}", args.repeat);
        }
        let (runs, big_calls) = round(&node, &server, &raw, &args).await?;
        stats::print_table(&runs);
        let ratios = ratios(&runs, big_calls);
        println!("\nratios (quicmesh / raw best mode, same run):");
        for (k, v) in &ratios {
            println!("  {k:<62} {v:.2}");
        }
        rounds.push(serde_json::json!({ "runs": runs, "ratios": ratios }));
        all_ratios.push(ratios);
    }
    let medians = medians(&all_ratios);
    if args.repeat > 1 {
        println!("\nmedian ratios over {} rounds:", args.repeat);
        for (k, v) in &medians {
            println!("  {k:<62} {v:.2}");
        }
    }
    if let Some(path) = &args.json {
        let doc = serde_json::json!({ "rounds": rounds, "median_ratios": medians });
        std::fs::write(path, serde_json::to_string_pretty(&doc)?)?;
        println!("\nwrote {}", path.display());
    }
    node.shutdown().await;
    Ok(())
}

/// One measurement of every mode: the runs and how many 1 MiB calls ran
/// beside the small ones in the mixed run.
async fn round(
    node: &Node,
    server: &NodeName,
    raw: &quinn::Connection,
    args: &RpcArgs,
) -> anyhow::Result<(Vec<Run>, u64)> {
    let mut runs = Vec::new();
    for &payload in &args.payload {
        let body = ByteBuf::from(vec![0x5a; payload]);
        for &conc in &args.concurrency {
            let bytes = payload as u64;
            runs.push(
                measure(
                    node,
                    server,
                    "quicmesh call",
                    payload,
                    conc,
                    args.duration,
                    |_, deadline, done| {
                        let (node, server, body) = (node.clone(), server.clone(), body.clone());
                        async move {
                            loop_calls(deadline, done, bytes, || async {
                                let r: ByteBuf = node
                                    .call_timeout(&server, ECHO, &body, CALL_TIMEOUT)
                                    .await?;
                                Ok(r.len())
                            })
                            .await
                        }
                    },
                )
                .await?,
            );
            runs.push(
                measure(
                    node,
                    server,
                    RAW_PER_CALL,
                    payload,
                    conc,
                    args.duration,
                    |_, deadline, done| {
                        let (raw, body) = (raw.clone(), body.clone());
                        async move {
                            loop_calls(deadline, done, bytes, || raw::call_per_stream(&raw, &body))
                                .await
                        }
                    },
                )
                .await?,
            );
            runs.push(
                measure(
                    node,
                    server,
                    RAW_LANES,
                    payload,
                    conc,
                    args.duration,
                    |_, deadline, done| {
                        let (raw, body) = (raw.clone(), body.clone());
                        async move {
                            let Ok(lane) = raw::Lane::open(&raw).await else {
                                return WorkerResult {
                                    hist: histogram(),
                                    errors: 1,
                                    bytes: 0,
                                };
                            };
                            let lane = tokio::sync::Mutex::new(lane);
                            loop_calls(deadline, done, bytes, || async {
                                lane.lock().await.call(&body).await
                            })
                            .await
                        }
                    },
                )
                .await?,
            );
            let shared = Arc::new(raw::SharedLane::open(raw).await?);
            runs.push(
                measure(
                    node,
                    server,
                    RAW_SHARED,
                    payload,
                    conc,
                    args.duration,
                    |_, deadline, done| {
                        let (shared, body) = (shared.clone(), body.clone());
                        async move {
                            loop_calls(deadline, done, bytes, || shared.call(&body)).await
                        }
                    },
                )
                .await?,
            );
        }
    }

    // One-way bulk: a streaming call against a single raw stream.
    const CHUNK: usize = 1 << 20;
    let chunk = ByteBuf::from(vec![0x33; CHUNK]);
    runs.push(
        measure(
            node,
            server,
            "quicmesh stream upload",
            CHUNK,
            1,
            args.duration,
            |_, deadline, done| {
                let (node, server, chunk) = (node.clone(), server.clone(), chunk.clone());
                async move {
                    let mut r = WorkerResult {
                        hist: histogram(),
                        errors: 0,
                        bytes: 0,
                    };
                    let Ok(mut call) = node
                        .call_stream::<_, ByteBuf, u64>(&server, SINK, &())
                        .await
                    else {
                        r.errors += 1;
                        return r;
                    };
                    while Instant::now() < deadline {
                        let t = Instant::now();
                        if call.send(&chunk).await.is_err() {
                            r.errors += 1;
                            break;
                        }
                        let _ = r.hist.record(t.elapsed().as_micros().max(1) as u64);
                        done.fetch_add(1, Ordering::Relaxed);
                    }
                    call.finish();
                    match call.next().await {
                        Some(Ok(total)) => r.bytes = total,
                        _ => r.errors += 1,
                    }
                    r
                }
            },
        )
        .await?,
    );
    runs.push(
        measure(
            node,
            server,
            "raw single stream bulk",
            CHUNK,
            1,
            args.duration,
            |_, deadline, done| {
                let raw = raw.clone();
                let chunk = vec![0x33u8; CHUNK];
                async move {
                    let mut r = WorkerResult {
                        hist: histogram(),
                        errors: 0,
                        bytes: 0,
                    };
                    match raw::bulk(&raw, &chunk, deadline, &mut r.hist).await {
                        Ok(total) => {
                            r.bytes = total;
                            done.fetch_add(total / CHUNK as u64, Ordering::Relaxed);
                        }
                        Err(_) => r.errors += 1,
                    }
                    r
                }
            },
        )
        .await?,
    );

    // Mixed: 64-byte calls one at a time, idle and then with 1 MiB calls alongside.
    runs.push(small_calls(node, server, MIXED_IDLE, args.duration).await?);
    let background = {
        let (node, server) = (node.clone(), server.clone());
        let big = ByteBuf::from(vec![2u8; 1 << 20]);
        let stop = Instant::now() + args.duration + Duration::from_secs(1);
        // One loop of 1 MiB echo calls, back to back, for the whole run.
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                let r: Result<ByteBuf, _> =
                    node.call_timeout(&server, ECHO, &big, CALL_TIMEOUT).await;
                n += u64::from(r.is_ok());
            }
            n
        })
    };
    runs.push(small_calls(node, server, MIXED_BUSY, args.duration).await?);
    let big_calls: u64 = background.await?;

    // The same for the raw baseline: its best small-call mode, with raw
    // 1 MiB stream-per-call echoes alongside.
    let shared = Arc::new(raw::SharedLane::open(raw).await?);
    runs.push(raw_small_calls(node, server, &shared, RAW_MIXED_IDLE, args.duration).await?);
    let background = {
        let raw = raw.clone();
        let big = vec![2u8; 1 << 20];
        let stop = Instant::now() + args.duration + Duration::from_secs(1);
        tokio::spawn(async move {
            let mut n = 0u64;
            while Instant::now() < stop {
                n += u64::from(raw::call_per_stream(&raw, &big).await.is_ok());
            }
            n
        })
    };
    runs.push(raw_small_calls(node, server, &shared, RAW_MIXED_BUSY, args.duration).await?);
    background.await?;
    Ok((runs, big_calls))
}

/// 64-byte quicmesh calls, one at a time.
async fn small_calls(
    node: &Node,
    server: &NodeName,
    label: &str,
    duration: Duration,
) -> anyhow::Result<Run> {
    let small = ByteBuf::from(vec![1u8; 64]);
    measure(node, server, label, 64, 1, duration, |_, deadline, done| {
        let (node, server, small) = (node.clone(), server.clone(), small.clone());
        async move {
            loop_calls(deadline, done, 64, || async {
                let r: ByteBuf = node
                    .call_timeout(&server, ECHO, &small, CALL_TIMEOUT)
                    .await?;
                Ok(r.len())
            })
            .await
        }
    })
    .await
}

/// 64-byte raw calls on the shared lane, one at a time.
async fn raw_small_calls(
    node: &Node,
    server: &NodeName,
    shared: &Arc<raw::SharedLane>,
    label: &str,
    duration: Duration,
) -> anyhow::Result<Run> {
    let small = vec![1u8; 64];
    measure(node, server, label, 64, 1, duration, |_, deadline, done| {
        let (shared, small) = (shared.clone(), small.clone());
        async move { loop_calls(deadline, done, 64, || shared.call(&small)).await }
    })
    .await
}

/// The median of each ratio over the rounds.
fn medians(rounds: &[Vec<(String, f64)>]) -> Vec<(String, f64)> {
    let Some(first) = rounds.first() else {
        return Vec::new();
    };
    first
        .iter()
        .map(|(key, _)| {
            let mut values: Vec<f64> = rounds
                .iter()
                .filter_map(|r| r.iter().find(|(k, _)| k == key).map(|(_, v)| *v))
                .collect();
            values.sort_by(f64::total_cmp);
            (key.clone(), values[values.len() / 2])
        })
        .collect()
}

/// The figures the targets are stated in.
fn ratios(runs: &[Run], big_calls: u64) -> Vec<(String, f64)> {
    let find = |label: &str, payload: usize, conc: usize| {
        runs.iter()
            .find(|r| r.label == label && r.payload == payload && r.concurrency == conc)
    };
    let raw_best = |payload: usize, conc: usize, key: fn(&Run) -> f64, higher_better: bool| {
        [RAW_PER_CALL, RAW_LANES, RAW_SHARED]
            .into_iter()
            .filter_map(|label| find(label, payload, conc).map(key))
            .reduce(|a, b| if (a > b) == higher_better { a } else { b })
    };
    let mut out = Vec::new();
    let mut push = |k: String, q: Option<f64>, r: Option<f64>| {
        if let (Some(q), Some(r)) = (q, r)
            && r > 0.0
        {
            out.push((k, q / r));
        }
    };
    let q = |p, c, key: fn(&Run) -> f64| find("quicmesh call", p, c).map(key);
    push(
        "p50 latency, 64B x1 (target ≤ 1.25)".into(),
        q(64, 1, |r| r.p50_us as f64),
        raw_best(64, 1, |r| r.p50_us as f64, false),
    );
    push(
        "calls/s, 64B x64 (target ≥ 0.8)".into(),
        q(64, 64, |r| r.calls_per_s),
        raw_best(64, 64, |r| r.calls_per_s, true),
    );
    let cpu = |r: &Run| r.cpu_us_per_call_client + r.cpu_us_per_call_server;
    push(
        "CPU per call, 64B x64 (target ≤ 1.3)".into(),
        q(64, 64, cpu),
        raw_best(64, 64, cpu, false),
    );
    push(
        "MB/s, 1MiB echo x1 (target ≥ 1.0)".into(),
        q(1 << 20, 1, |r| r.mb_per_s),
        raw_best(1 << 20, 1, |r| r.mb_per_s, true),
    );
    let stream = runs
        .iter()
        .find(|r| r.label == "quicmesh stream upload")
        .map(|r| r.mb_per_s);
    let bulk = runs
        .iter()
        .find(|r| r.label == "raw single stream bulk")
        .map(|r| r.mb_per_s);
    push(
        "MB/s, one-way stream vs raw bulk (target ≥ 0.8)".into(),
        stream,
        bulk,
    );
    let p99 = |label: &str| {
        runs.iter()
            .find(|r| r.label == label)
            .map(|r| r.p99_us as f64)
    };
    if big_calls > 0 {
        push(
            "mixed: 64B p99 beside 1MiB calls / idle (target ≤ 3)".into(),
            p99(MIXED_BUSY),
            p99(MIXED_IDLE),
        );
    }
    push(
        "raw reference: 64B p99 beside 1MiB calls / idle (no target)".into(),
        p99(RAW_MIXED_BUSY),
        p99(RAW_MIXED_IDLE),
    );
    out
}
