//! The consensus-mode checker: five real `quicmesh node` processes, all
//! voters, on hosts of a sealed lab; a workload of locks guarding a
//! fenced counter, registry writes and reads, and elections, driven
//! through each node's `--commands` stdin; faults injected while it runs
//! (partitions with a minority side, the Raft leader isolated, a bridge,
//! SIGKILL, SIGSTOP/SIGCONT, packet loss, a whole-cluster restart); and
//! the recorded history checked afterwards (`model.rs`: linearizability
//! with a Wing–Gong–Lowe checker, the fenced counter, the minority side,
//! tokens across the restart, acknowledged registrations).
//!
//! Knobs (environment): `QUICMESH_CHECKER_ROUNDS` (default 1: each fault
//! once), `QUICMESH_CHECKER_SEED` (default: from the clock; printed),
//! `QUICMESH_CHECKER_MODE=global` (the same run against global mode,
//! which is expected to fail), `QUICMESH_CHECKER_HISTORY=FILE` (the
//! `recheck_a_saved_history` test checks a saved run again;
//! `name_the_culprits_of_a_saved_history` with `QUICMESH_CHECKER_KEY`
//! names the operations of a key that break it). A failing run
//! saves its history and the nodes' logs and names the directory.
//!
//! Needs root for the lab; without it the lab test says why and passes,
//! except under `CI=true`.

mod model;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader};
use tokio::process::{Child, ChildStdin, Command};
use tokio::sync::{oneshot, watch};

use model::{Fault, Kind, Micros, Op, Outcome, Run};
use support::EXE;
use support::lab::{in_lab, make_hosts, sh};

const HOSTS: u8 = 5;
const PORT: u16 = 4370;
const COOKIE: &str = "checker-cookie";
/// Each node's session TTL, and the Raft timings.
const TTL_MS: u64 = 1500;
const HEARTBEAT_MS: u64 = 50;
const ELECTION_TIMEOUT_MS: u64 = 300;
const REQUEST_TIMEOUT_MS: u64 = 1000;
/// How long each fault lasts: longer than a session TTL, so sessions on
/// the cut-off side expire.
const FAULT: Duration = Duration::from_millis(3000);
/// Load between two faults, with everything healed.
const SETTLE: Duration = Duration::from_millis(2500);
/// The longest wait for one command's reply; past it the outcome is
/// unknown.
const REPLY_WAIT: Duration = Duration::from_secs(20);
/// The longest wait for the cluster to serve after a start or a heal.
const SERVE_WAIT: Duration = Duration::from_secs(30);
const WORKERS_PER_HOST: usize = 2;
/// The longest time the linearizability searches of a run may take.
const KEY_BUDGET: Duration = Duration::from_secs(60);
/// A worker's pause after an operation whose outcome is unknown (its node
/// is cut off or down), so the history holds fewer of them.
const BACKOFF: Duration = Duration::from_millis(300);
/// A lock holder's work between reading the counter and writing it.
const WORK: Duration = Duration::from_millis(20);
const NAMES: [&str; 3] = ["name0", "name1", "name2"];
const ELECTION: &str = "election";
const LOCK: &str = "counter";

fn host_name(host: u8) -> String {
    format!("app@10.77.0.{host}")
}

/// `app@10.77.0.N` → N.
fn host_of(name: &str) -> Option<u8> {
    name.rsplit('.').next()?.parse().ok()
}

/// A small deterministic generator (xorshift64*), so a seed replays the
/// same choices.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// A command for a node's `--commands` stdin.
#[derive(Debug, Default, Serialize)]
struct Ask {
    id: u64,
    op: &'static str,
    key: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    timeout_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<u128>,
}

impl Ask {
    fn new(op: &'static str, key: &str) -> Self {
        Self {
            op,
            key: key.to_owned(),
            ..Self::default()
        }
    }
}

/// A node's reply line (`reply {json}`); tokens may pass 64 bits.
#[derive(Debug, Clone, Deserialize)]
struct Reply {
    id: u64,
    outcome: String,
    token: Option<u128>,
    owner: Option<String>,
    kind: Option<String>,
    session: Option<u64>,
}

type Waiting = Arc<Mutex<HashMap<u64, oneshot::Sender<Reply>>>>;

/// A running node process: its stdin, and the replies waited for.
struct Live {
    stdin: ChildStdin,
    child: Child,
    waiting: Waiting,
    incarnation: u32,
}

/// One host of the lab and the node process on it.
struct Host {
    index: u8,
    live: tokio::sync::Mutex<Option<Live>>,
    /// `false` while its process is killed or stopped: its workers (the
    /// node's application) wait.
    usable: watch::Sender<bool>,
    incarnations: Mutex<u32>,
}

/// The lab, the nodes and what they recorded.
struct Lab {
    dir: PathBuf,
    consensus: bool,
    hosts: Vec<Host>,
    started: Instant,
    next_id: Mutex<u64>,
    /// The keys in use end with the phase's number: each fault (and the
    /// calm around it) has keys of its own, so each key's history is
    /// short enough to check (as Jepsen's independent keys).
    phase: std::sync::atomic::AtomicU64,
    /// A host whose lock holder is between its read and its write.
    in_critical: Mutex<Option<u8>>,
    /// Commands sent and not answered yet.
    in_flight: std::sync::atomic::AtomicUsize,
    run: Mutex<Run>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Lab {
    /// `base` in the current phase.
    fn key(&self, base: &str) -> String {
        let phase = self.phase.load(std::sync::atomic::Ordering::Relaxed);
        format!("{base}-{phase}")
    }

    fn now(&self) -> Micros {
        self.started.elapsed().as_micros() as Micros
    }

    fn config(&self, host: u8) -> PathBuf {
        let path = self.dir.join(format!("h{host}.toml"));
        let mut text = format!(
            "name = \"{}\"\nlisten = \"10.77.0.{host}:{PORT}\"\n",
            host_name(host)
        );
        if self.consensus {
            let voters: Vec<String> = (1..=HOSTS)
                .map(|h| format!("\"{}\"", host_name(h)))
                .collect();
            text.push_str(&format!(
                "coordination = \"consensus\"\n\
                 [consensus]\nvoters = [{}]\ndata_dir = \"{}\"\n\
                 session_ttl = \"{TTL_MS}ms\"\nheartbeat = \"{HEARTBEAT_MS}ms\"\n\
                 election_timeout = \"{ELECTION_TIMEOUT_MS}ms\"\n\
                 request_timeout = \"{REQUEST_TIMEOUT_MS}ms\"\n",
                voters.join(", "),
                self.dir.join(format!("data-h{host}")).display(),
            ));
        }
        text.push_str(&format!(
            "[identity]\nmode = \"cookie\"\ncookie = \"{COOKIE}\"\n\
             [heartbeat]\ninterval = \"200ms\"\ntimeout = \"1000ms\"\n"
        ));
        std::fs::write(&path, text).expect("config written");
        path
    }

    /// Starts the node of `host` and waits for its `listening` line.
    async fn start(self: &Arc<Self>, host: u8) {
        let config = self.config(host);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("h{host}.log")))
            .expect("log file");
        let mut cmd = Command::new("ip");
        cmd.args([
            "netns",
            "exec",
            &format!("h{host}"),
            EXE,
            "node",
            "--commands",
        ])
        .arg("--config")
        .arg(&config);
        for other in (1..=HOSTS).filter(|h| *h != host) {
            cmd.args(["--connect", &format!("{}:{PORT}", host_name(other))]);
        }
        let mut child = cmd
            .env("RUST_LOG", "warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn quicmesh node");
        let stdin = child.stdin.take().expect("stdin");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(SERVE_WAIT, lines.next_line())
            .await
            .expect("the node printed its address")
            .expect("read stdout");
        assert!(
            first
                .as_deref()
                .is_some_and(|l| l.starts_with("listening ")),
            "h{host} printed {first:?} first"
        );
        let waiting: Waiting = Arc::default();
        let replies = waiting.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Some(json) = line.strip_prefix("reply ") else {
                    continue;
                };
                let Ok(reply) = serde_json::from_str::<Reply>(json) else {
                    continue;
                };
                if let Some(tx) = locked(&replies).remove(&reply.id) {
                    let _ = tx.send(reply);
                }
            }
            // The process ended: every reply still waited for is lost.
            locked(&replies).clear();
        });
        let h = &self.hosts[usize::from(host - 1)];
        let incarnation = {
            let mut n = locked(&h.incarnations);
            *n += 1;
            *n
        };
        *h.live.lock().await = Some(Live {
            stdin,
            child,
            waiting,
            incarnation,
        });
        h.usable.send_replace(true);
    }

    /// Sends `command` to `host`'s node; its reply, or `None` if the
    /// process is gone or did not answer within [`REPLY_WAIT`]. The
    /// incarnation is the process's.
    async fn ask(&self, host: u8, mut command: Ask) -> (Option<Reply>, u32) {
        let id = {
            let mut next = locked(&self.next_id);
            *next += 1;
            *next
        };
        command.id = id;
        let (tx, rx) = oneshot::channel();
        let h = &self.hosts[usize::from(host - 1)];
        let incarnation = {
            let mut live = h.live.lock().await;
            let Some(live) = live.as_mut() else {
                return (None, 0);
            };
            locked(&live.waiting).insert(id, tx);
            let line = serde_json::to_string(&command).expect("a command encodes") + "\n";
            if live.stdin.write_all(line.as_bytes()).await.is_err() {
                return (None, live.incarnation);
            }
            self.in_flight
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            live.incarnation
        };
        let reply = tokio::time::timeout(REPLY_WAIT, rx)
            .await
            .ok()
            .and_then(Result::ok);
        self.in_flight
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        (reply, incarnation)
    }

    /// Runs one operation on `host` and records it.
    async fn op(&self, host: u8, kind: Kind, command: Ask) -> Outcome {
        let key = command.key.clone();
        let invoked = self.now();
        let (reply, incarnation) = self.ask(host, command).await;
        let completed = self.now();
        let (outcome, session) = match &reply {
            Some(r) => (outcome_of(kind, r), r.session),
            None => (Outcome::Unknown, None),
        };
        // Held by this very node: another of its tasks has its turn at the
        // key, which says nothing of the group.
        let outcome = match outcome {
            Outcome::Held(owner) if owner == host => Outcome::NoEffect,
            other => other,
        };
        if incarnation > 0 {
            locked(&self.run).ops.push(Op {
                host,
                key,
                kind,
                invoked,
                completed,
                outcome: outcome.clone(),
                session,
                incarnation,
            });
        }
        if outcome == Outcome::Unknown {
            tokio::time::sleep(BACKOFF).await;
        }
        outcome
    }

    /// Waits while `host`'s process is killed or stopped.
    async fn wait_usable(&self, host: u8) {
        let mut usable = self.hosts[usize::from(host - 1)].usable.subscribe();
        let _ = usable.wait_for(|u| *u).await;
    }

    fn set_usable(&self, host: u8, usable: bool) {
        self.hosts[usize::from(host - 1)]
            .usable
            .send_replace(usable);
    }

    async fn signal(&self, host: u8, sig: &str) {
        let live = self.hosts[usize::from(host - 1)].live.lock().await;
        if let Some(pid) = live.as_ref().and_then(|l| l.child.id()) {
            // `ip netns exec` execs the node: the PID is the node's.
            sh(&format!("kill {sig} {pid}"));
        }
    }

    async fn kill(&self, host: u8) {
        self.set_usable(host, false);
        let taken = self.hosts[usize::from(host - 1)].live.lock().await.take();
        if let Some(mut live) = taken {
            let _ = live.child.start_kill();
            let _ = live.child.wait().await;
        }
    }

    /// Waits until no command is waiting for its reply (or [`REPLY_WAIT`]).
    async fn quiet(&self) {
        let deadline = Instant::now() + REPLY_WAIT;
        while self.in_flight.load(std::sync::atomic::Ordering::Relaxed) > 0
            && Instant::now() < deadline
        {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The Raft leader as the first node that answers names it.
    async fn raft_leader(&self) -> Option<u8> {
        for host in 1..=HOSTS {
            let (reply, _) = self.ask(host, Ask::new("status", "")).await;
            if let Some(owner) = reply.as_ref().and_then(|r| r.owner.as_deref()) {
                return host_of(owner);
            }
        }
        None
    }

    /// Waits until every node answers a linearizable read.
    async fn serving(&self) {
        let deadline = Instant::now() + SERVE_WAIT;
        for host in 1..=HOSTS {
            loop {
                let (reply, _) = self.ask(host, Ask::new("whereis", "probe")).await;
                if reply.as_ref().is_some_and(|r| r.outcome == "value") {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "h{host} does not serve: {reply:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }

    fn fault(&self, what: String, from: Micros, minority: Vec<u8>) {
        let to = self.now();
        locked(&self.run).faults.push(Fault {
            what,
            from,
            to,
            minority,
        });
    }
}

/// What `reply` says an operation of `kind` did. A take whose session
/// ended while it waited in the key's queue may have been granted before
/// the end: its outcome is open.
fn outcome_of(kind: Kind, reply: &Reply) -> Outcome {
    let owner = || reply.owner.as_deref().and_then(host_of);
    match reply.outcome.as_str() {
        "granted" => Outcome::Granted(reply.token),
        "registered" => Outcome::Granted(None),
        "held" | "taken" => owner().map_or(Outcome::Unknown, Outcome::Held),
        "released" => Outcome::Released,
        "not_held" => Outcome::NoEffect,
        "value" => Outcome::Value(owner().map(|o| (o, reply.token))),
        "error" => match reply.kind.as_deref() {
            Some("session_expired") if kind == Kind::Take => Outcome::Unknown,
            Some("session_expired" | "refused" | "invalid") => Outcome::NoEffect,
            _ => Outcome::Unknown,
        },
        _ => Outcome::Unknown,
    }
}

/// One worker of `host`: an application thread of its node, taking the
/// lock to update the fenced counter, registering and reading names,
/// campaigning and reading the leader, until `stop`.
async fn worker(lab: Arc<Lab>, host: u8, seed: u64, stop: watch::Receiver<bool>) {
    let mut rng = Rng(seed | 1);
    // One worker per node takes the lock: ten contending takers make a
    // history too dense to check in reasonable time.
    let locks = seed % 2 == 0;
    while !*stop.borrow() {
        lab.wait_usable(host).await;
        match rng.below(10) {
            0..=3 if locks => locked_update(&lab, host).await,
            0..=6 => {
                let name = &lab.key(NAMES[rng.below(NAMES.len() as u64) as usize]);
                let (kind, op) = match rng.below(3) {
                    0 => (Kind::Take, "register"),
                    1 => (Kind::Give, "unregister"),
                    _ => (Kind::Read, "whereis"),
                };
                lab.op(host, kind, Ask::new(op, name)).await;
            }
            7 | 8 => {
                let election = &lab.key(ELECTION);
                let campaign = Ask {
                    timeout_ms: Some(REQUEST_TIMEOUT_MS),
                    ..Ask::new("campaign", election)
                };
                if let Outcome::Granted(term) = lab.op(host, Kind::Take, campaign).await {
                    // Leads a while (an application's step).
                    tokio::time::sleep(Duration::from_millis(50 + rng.below(150))).await;
                    lab.wait_usable(host).await;
                    let resign = Ask {
                        token: term,
                        ..Ask::new("resign", election)
                    };
                    lab.op(host, Kind::Give, resign).await;
                }
            }
            _ => {
                let election = &lab.key(ELECTION);
                lab.op(host, Kind::Read, Ask::new("leader", election)).await;
            }
        }
    }
}

/// Lock, read the counter, write it plus one, unlock: each step refused
/// by the counter if a larger token came first.
async fn locked_update(lab: &Lab, host: u8) {
    let key = lab.key(LOCK);
    let lock = Ask {
        timeout_ms: Some(800),
        ..Ask::new("lock", &key)
    };
    let Outcome::Granted(Some(token)) = lab.op(host, Kind::Take, lock).await else {
        return;
    };
    let read = locked(&lab.run)
        .fenced
        .entry(key.clone())
        .or_default()
        .read(token);
    if let Some(value) = read {
        // The application's work between read and write; if its node is
        // stopped meanwhile, so is it.
        *locked(&lab.in_critical) = Some(host);
        tokio::time::sleep(WORK).await;
        lab.wait_usable(host).await;
        *locked(&lab.in_critical) = None;
        let mut run = locked(&lab.run);
        run.fenced
            .entry(key.clone())
            .or_default()
            .write(token, value + 1);
    }
    let release = Ask {
        token: Some(token),
        ..Ask::new("release", &key)
    };
    lab.op(host, Kind::Give, release).await;
}

/// The faults of one round, in order.
const FAULTS: [&str; 7] = [
    "partition",
    "isolate-leader",
    "bridge",
    "kill",
    "pause",
    "loss",
    "restart-all",
];

/// Drops packets between every pair of hosts not in one of `groups`.
fn cut(groups: &[Vec<u8>]) {
    let mut rules = String::new();
    for a in 1..=HOSTS {
        for b in 1..=HOSTS {
            let together = groups.iter().any(|g| g.contains(&a) && g.contains(&b));
            if a != b && !together {
                rules.push_str(&format!(
                    "add rule bridge faults forward iifname \"h{a}-br\" oifname \"h{b}-br\" drop\n"
                ));
            }
        }
    }
    nft(&rules);
}

fn nft(rules: &str) {
    let file = std::env::temp_dir().join(format!("checker-{}.nft", std::process::id()));
    std::fs::write(&file, rules).expect("nft rules written");
    sh(&format!("nft -f {}", file.display()));
}

fn heal() {
    sh("nft flush chain bridge faults forward");
}

/// Injects `fault`, holds it for [`FAULT`], heals it. A fault counts
/// from when it is in place (`from`, taken right after).
async fn inject(lab: &Arc<Lab>, fault: &str, rng: &mut Rng) {
    let mut hosts: Vec<u8> = (1..=HOSTS).collect();
    // A random order: the first hosts are the ones a fault picks.
    for i in (1..hosts.len()).rev() {
        hosts.swap(i, rng.below(i as u64 + 1) as usize);
    }
    match fault {
        "partition" => {
            let (minority, majority) = hosts.split_at(2);
            cut(&[minority.to_vec(), majority.to_vec()]);
            let from = lab.now();
            tokio::time::sleep(FAULT).await;
            heal();
            lab.fault(
                format!("partition {minority:?} | {majority:?}"),
                from,
                minority.to_vec(),
            );
        }
        "isolate-leader" => {
            let leader = lab.raft_leader().await.unwrap_or(hosts[0]);
            let rest: Vec<u8> = (1..=HOSTS).filter(|h| *h != leader).collect();
            cut(&[vec![leader], rest]);
            let from = lab.now();
            tokio::time::sleep(FAULT).await;
            heal();
            lab.fault(format!("isolate leader h{leader}"), from, vec![leader]);
        }
        "bridge" => {
            let (left, right) = (hosts[..3].to_vec(), hosts[2..].to_vec());
            cut(&[left.clone(), right.clone()]);
            let from = lab.now();
            tokio::time::sleep(FAULT).await;
            heal();
            lab.fault(format!("bridge {left:?} | {right:?}"), from, Vec::new());
        }
        "kill" => {
            let victim = match rng.below(2) {
                0 => lab.raft_leader().await.unwrap_or(hosts[0]),
                _ => hosts[0],
            };
            lab.kill(victim).await;
            let from = lab.now();
            tokio::time::sleep(FAULT).await;
            lab.start(victim).await;
            lab.fault(format!("SIGKILL h{victim}"), from, Vec::new());
        }
        "pause" => {
            // A lock holder at work, if one comes within a while: its
            // write after the pause must be fenced off.
            let deadline = Instant::now() + Duration::from_secs(2);
            let mut holder = None;
            while holder.is_none() && Instant::now() < deadline {
                holder = *locked(&lab.in_critical);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let victim = holder.unwrap_or(hosts[0]);
            lab.set_usable(victim, false);
            lab.signal(victim, "-STOP").await;
            let from = lab.now();
            tokio::time::sleep(FAULT).await;
            lab.signal(victim, "-CONT").await;
            lab.set_usable(victim, true);
            lab.fault(format!("SIGSTOP h{victim}"), from, Vec::new());
        }
        "loss" => {
            nft(
                "add rule bridge faults forward meta l4proto udp numgen random mod 100 < 20 drop\n",
            );
            let from = lab.now();
            tokio::time::sleep(FAULT).await;
            heal();
            lab.fault("20% packet loss".to_owned(), from, Vec::new());
        }
        "restart-all" => {
            // Every node's application stops first and its commands are
            // answered: this fault is about what the disks keep (a kill
            // with commands in flight is the SIGKILL fault's), and every
            // unknown outcome costs the search a factor.
            for host in 1..=HOSTS {
                lab.set_usable(host, false);
            }
            lab.quiet().await;
            let from = lab.now();
            for host in 1..=HOSTS {
                lab.kill(host).await;
            }
            locked(&lab.run).restarts.push(lab.now());
            for host in 1..=HOSTS {
                lab.start(host).await;
            }
            lab.fault("whole-cluster restart".to_owned(), from, Vec::new());
        }
        other => panic!("no fault {other}"),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

/// Runs the workload under every fault and checks the history.
async fn checked_run(consensus: bool) {
    let rounds = env_u64("QUICMESH_CHECKER_ROUNDS").unwrap_or(1);
    let seed = env_u64("QUICMESH_CHECKER_SEED").unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    let mode = if consensus { "consensus" } else { "global" };
    eprintln!("checker: mode {mode}, seed {seed}, {rounds} round(s)");
    make_hosts(usize::from(HOSTS));
    sh("nft add table bridge faults && \
        nft 'add chain bridge faults forward { type filter hook forward priority 0; policy accept; }'");
    let dir = tempfile::tempdir().expect("temporary directory");
    let lab = Arc::new(Lab {
        dir: dir.path().to_owned(),
        consensus,
        hosts: (1..=HOSTS)
            .map(|index| Host {
                index,
                live: tokio::sync::Mutex::new(None),
                usable: watch::channel(false).0,
                incarnations: Mutex::new(0),
            })
            .collect(),
        started: Instant::now(),
        next_id: Mutex::new(0),
        phase: std::sync::atomic::AtomicU64::new(0),
        in_critical: Mutex::new(None),
        in_flight: std::sync::atomic::AtomicUsize::new(0),
        run: Mutex::new(Run {
            mode: mode.to_owned(),
            seed,
            hosts: HOSTS,
            ..Run::default()
        }),
    });
    for host in 1..=HOSTS {
        lab.start(host).await;
    }
    lab.serving().await;
    let (stop_tx, stop) = watch::channel(false);
    let mut rng = Rng(seed | 1);
    let mut workers = tokio::task::JoinSet::new();
    for host in lab.hosts.iter().map(|h| h.index) {
        for n in 0..WORKERS_PER_HOST as u64 {
            // An even seed for the node's first worker, odd for the rest.
            let seed = (rng.next() & !1) | u64::from(n > 0);
            workers.spawn(worker(lab.clone(), host, seed, stop.clone()));
        }
    }
    tokio::time::sleep(SETTLE / 2).await;
    for round in 0..rounds {
        for fault in FAULTS {
            eprintln!("checker: round {round}: {fault}");
            inject(&lab, fault, &mut rng).await;
            tokio::time::sleep(SETTLE / 2).await;
            lab.phase.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tokio::time::sleep(SETTLE / 2).await;
        }
    }
    stop_tx.send_replace(true);
    while workers.join_next().await.is_some() {}
    // The final reads, everything healed.
    lab.serving().await;
    for host in 1..=HOSTS {
        for phase in 0..=lab.phase.load(std::sync::atomic::Ordering::Relaxed) {
            for name in NAMES {
                let key = format!("{name}-{phase}");
                lab.op(host, Kind::Read, Ask::new("whereis", &key)).await;
            }
            let key = format!("{ELECTION}-{phase}");
            lab.op(host, Kind::Read, Ask::new("leader", &key)).await;
        }
    }
    for host in 1..=HOSTS {
        lab.kill(host).await;
    }
    let run = locked(&lab.run).clone();
    report(&run, &lab.dir);
}

/// Checks `run`; on a finding, saves it (and the logs in `logs`) and
/// fails with what was found.
fn report(run: &Run, logs: &Path) {
    let started = Instant::now();
    let findings = model::check(run, KEY_BUDGET);
    let granted = run
        .ops
        .iter()
        .filter(|o| matches!(o.outcome, Outcome::Granted(_)))
        .count();
    let unknown = run
        .ops
        .iter()
        .filter(|o| o.outcome == Outcome::Unknown)
        .count();
    let fenced = |f: fn(&model::Fenced) -> u64| run.fenced.values().map(f).sum::<u64>();
    eprintln!(
        "checker: {} operations ({granted} grants, {unknown} unknown), {} faults, \
         {} fenced writes, {} stale steps fenced off; checked in {:?}",
        run.ops.len(),
        run.faults.len(),
        fenced(|f| f.writes),
        fenced(|f| f.refused),
        started.elapsed(),
    );
    if findings.is_clean() {
        return;
    }
    let found = findings.summary();
    let saved =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("checker-{}-{}", run.mode, run.seed));
    std::fs::create_dir_all(&saved).expect("history directory");
    std::fs::write(
        saved.join("history.json"),
        serde_json::to_vec_pretty(run).expect("history encodes"),
    )
    .expect("history saved");
    for host in 1..=run.hosts {
        let log = format!("h{host}.log");
        let _ = std::fs::copy(logs.join(&log), saved.join(&log));
    }
    panic!(
        "the {} run (seed {}) broke:\n{found}history and logs saved in {}; check it \
         again with QUICMESH_CHECKER_HISTORY={}/history.json cargo test -p quicmesh-cli \
         --test checker recheck_a_saved_history -- --ignored",
        run.mode,
        run.seed,
        saved.display(),
        saved.display()
    );
}

#[test]
fn consensus_mode_holds_under_every_fault() {
    let global = std::env::var("QUICMESH_CHECKER_MODE").as_deref() == Ok("global");
    if !in_lab("consensus_mode_holds_under_every_fault") {
        return;
    }
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(checked_run(!global));
}

#[test]
#[ignore = "checks the run saved at $QUICMESH_CHECKER_HISTORY"]
fn recheck_a_saved_history() {
    let path = std::env::var("QUICMESH_CHECKER_HISTORY").expect("QUICMESH_CHECKER_HISTORY=FILE");
    let run: Run = serde_json::from_slice(&std::fs::read(&path).expect("history file"))
        .expect("a saved history");
    report(
        &run,
        Path::new(&path).parent().unwrap_or_else(|| Path::new(".")),
    );
}

#[test]
#[ignore = "names the culprits in $QUICMESH_CHECKER_KEY of the run at $QUICMESH_CHECKER_HISTORY"]
fn name_the_culprits_of_a_saved_history() {
    let path = std::env::var("QUICMESH_CHECKER_HISTORY").expect("QUICMESH_CHECKER_HISTORY=FILE");
    let key = std::env::var("QUICMESH_CHECKER_KEY").expect("QUICMESH_CHECKER_KEY=KEY");
    let run: Run = serde_json::from_slice(&std::fs::read(&path).expect("history file"))
        .expect("a saved history");
    for op in model::culprits(&run, &key) {
        eprintln!("{op:?}");
    }
}

#[cfg(test)]
mod checks {
    //! The checks themselves, on small histories written by hand: each
    //! property's check passes a good history and fails a broken one.

    use super::model::*;

    const BUDGET: std::time::Duration = std::time::Duration::from_secs(10);

    fn op(host: u8, key: &str, kind: Kind, at: (u64, u64), outcome: Outcome, session: u64) -> Op {
        Op {
            host,
            key: key.to_owned(),
            kind,
            invoked: at.0,
            completed: at.1,
            outcome,
            session: Some(session),
            incarnation: 1,
        }
    }

    fn run(ops: Vec<Op>) -> Run {
        Run {
            ops,
            ..Run::default()
        }
    }

    #[test]
    fn a_lock_held_by_one_node_at_a_time_is_linearizable() {
        let r = run(vec![
            op(1, "l", Kind::Take, (0, 10), Outcome::Granted(Some(5)), 1),
            op(2, "l", Kind::Take, (5, 15), Outcome::Held(1), 2),
            op(1, "l", Kind::Give, (20, 30), Outcome::Released, 1),
            op(2, "l", Kind::Take, (25, 40), Outcome::Granted(Some(9)), 2),
        ]);
        assert!(check(&r, BUDGET).is_clean(), "{:?}", check(&r, BUDGET));
    }

    #[test]
    fn a_second_holder_while_the_first_still_holds_is_found() {
        // Node 1 releases its grant after node 2 was granted: both held it.
        let r = run(vec![
            op(1, "l", Kind::Take, (0, 10), Outcome::Granted(Some(5)), 1),
            op(2, "l", Kind::Take, (20, 30), Outcome::Granted(Some(9)), 2),
            op(1, "l", Kind::Give, (40, 50), Outcome::Released, 1),
        ]);
        assert_eq!(check(&r, BUDGET).not_linearizable.len(), 1);
    }

    #[test]
    fn a_token_smaller_than_an_earlier_one_is_found() {
        let r = run(vec![
            op(1, "l", Kind::Take, (0, 10), Outcome::Granted(Some(9)), 1),
            op(1, "l", Kind::Give, (20, 30), Outcome::Released, 1),
            op(2, "l", Kind::Take, (40, 50), Outcome::Granted(Some(5)), 2),
        ]);
        assert_eq!(check(&r, BUDGET).not_linearizable.len(), 1);
    }

    #[test]
    fn a_registration_gone_while_its_session_lives_is_found() {
        let mut r = run(vec![
            op(1, "name0", Kind::Take, (0, 10), Outcome::Granted(None), 1),
            op(2, "name0", Kind::Read, (20, 30), Outcome::Value(None), 2),
            op(1, "name0", Kind::Give, (40, 50), Outcome::Released, 1),
        ]);
        assert_eq!(check(&r, BUDGET).not_linearizable.len(), 1);
        // Expired in between (the session's own end), it is fine.
        r.ops[2].outcome = Outcome::NoEffect;
        assert!(check(&r, BUDGET).not_linearizable.is_empty());
    }

    #[test]
    fn an_unknown_outcome_may_or_may_not_have_happened() {
        for seen in [None, Some((1, None))] {
            let r = run(vec![
                op(1, "name0", Kind::Take, (0, 10), Outcome::Unknown, 1),
                op(2, "name0", Kind::Read, (20, 30), Outcome::Value(seen), 2),
            ]);
            assert!(check(&r, BUDGET).is_clean(), "{seen:?}");
        }
    }

    #[test]
    fn an_unknown_grant_explains_a_holder_seen_and_its_session_end_its_absence() {
        let mut unknown = op(5, "e", Kind::Take, (100, 500), Outcome::Unknown, 1680);
        unknown.session = Some(1680);
        let r = run(vec![
            op(
                2,
                "e",
                Kind::Take,
                (50, 150),
                Outcome::Granted(Some(10)),
                543,
            ),
            unknown,
            op(2, "e", Kind::Give, (200, 250), Outcome::Released, 543),
            op(1, "e", Kind::Take, (180, 600), Outcome::Held(5), 941),
            op(
                2,
                "e",
                Kind::Take,
                (700, 800),
                Outcome::Granted(Some(20)),
                543,
            ),
            op(3, "e", Kind::Read, (1000, 1010), Outcome::Value(None), 7),
        ]);
        assert!(check(&r, BUDGET).is_clean(), "{:?}", check(&r, BUDGET));
    }

    #[test]
    fn a_grant_whose_session_went_unnamed_may_end_with_it() {
        let mut unnamed = op(1, "name0", Kind::Take, (0, 10), Outcome::Granted(None), 0);
        unnamed.session = None;
        let r = run(vec![
            unnamed,
            op(
                2,
                "name0",
                Kind::Read,
                (20, 30),
                Outcome::Value(Some((1, None))),
                7,
            ),
            op(2, "name0", Kind::Read, (40, 50), Outcome::Value(None), 7),
        ]);
        assert!(check(&r, BUDGET).is_clean(), "{:?}", check(&r, BUDGET));
    }

    #[test]
    fn a_grant_on_the_minority_side_is_found() {
        let mut r = run(vec![op(
            1,
            "l",
            Kind::Take,
            (100, 200),
            Outcome::Granted(Some(3)),
            1,
        )]);
        r.faults.push(Fault {
            what: "partition".into(),
            from: 50,
            to: 300,
            minority: vec![1],
        });
        assert_eq!(check(&r, BUDGET).minority_grants.len(), 1);
        r.faults[0].minority = vec![2];
        assert!(check(&r, BUDGET).minority_grants.is_empty());
    }

    #[test]
    fn a_token_that_went_back_after_a_restart_is_found() {
        let mut r = run(vec![
            op(1, "e", Kind::Take, (0, 10), Outcome::Granted(Some(40)), 1),
            op(
                2,
                "e",
                Kind::Take,
                (200, 210),
                Outcome::Granted(Some(30)),
                2,
            ),
        ]);
        r.restarts.push(100);
        assert_eq!(check(&r, BUDGET).tokens_across_restart.len(), 1);
        r.restarts.clear();
        assert_eq!(check(&r, BUDGET).tokens_out_of_order.len(), 1);
    }

    #[test]
    fn the_fenced_counter_refuses_stale_tokens_and_sees_shared_ones() {
        let mut f = Fenced::default();
        assert_eq!(f.read(5), Some(0));
        assert_eq!(f.read(7), Some(0), "a larger token supersedes");
        assert!(!f.write(5, 1), "the stale holder is fenced off");
        assert!(f.write(7, 1));
        assert_eq!(f.refused, 1);
        assert!(f.overlaps.is_empty() && f.lost_updates.is_empty());
        // Two holders with one token: the counter sees them interleave.
        let mut f = Fenced::default();
        f.read(3);
        f.read(3);
        f.write(3, 1);
        f.write(3, 1);
        assert_eq!(f.overlaps.len(), 2, "{:?}", f.overlaps);
        assert_eq!(f.lost_updates.len(), 1);
    }
}
