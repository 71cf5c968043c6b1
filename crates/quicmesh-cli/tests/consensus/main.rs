//! Consensus mode with real `quicmesh node` processes: three voters on
//! loopback, client nodes taking locks through them, and the times until
//! writes are served again after the Raft leader's process is SIGKILLed
//! and until a SIGKILLed client's lock is granted to the next asker.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use support::{COOKIE, NodeProcess, WAIT, quicmesh_with};

/// The Raft timings of every node (a config file's `[consensus]`).
const HEARTBEAT_MS: u64 = 50;
const ELECTION_TIMEOUT_MS: u64 = 300;
/// Each node's session TTL (`--session-ttl`).
const TTL: Duration = Duration::from_millis(1500);
const VOTERS: [&str; 3] = ["a", "b", "c"];

/// One test's cluster at a time: their elections and expiries are timed,
/// and this machine may have few cores.
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Three voters `a`, `b`, `c` (`b` and `c` joined through `a`), each with
/// its data directory under one temporary directory; `c` started with
/// `c_flags`.
struct Cluster {
    dir: tempfile::TempDir,
    config: String,
    voters: Vec<NodeProcess>,
}

impl Cluster {
    /// No node started yet; every node's config file holds the Raft
    /// timings and `extra` (more `[consensus]` settings).
    fn new(extra: &str) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let config = dir.path().join("node.toml");
        std::fs::write(
            &config,
            format!(
                "[consensus]\nheartbeat = \"{HEARTBEAT_MS}ms\"\n\
                 election_timeout = \"{ELECTION_TIMEOUT_MS}ms\"\n{extra}"
            ),
        )
        .expect("config written");
        Self {
            config: config.to_string_lossy().into_owned(),
            dir,
            voters: Vec::new(),
        }
    }

    async fn start(c_flags: &[&str]) -> Self {
        let mut cluster = Self::new("");
        for short in VOTERS {
            let connect = cluster.voters.first().map(|a| a.addr.to_string());
            let extra = if short == "c" { c_flags } else { &[] };
            let node = cluster.node(short, connect.as_deref(), extra).await;
            cluster.voters.push(node);
        }
        cluster
    }

    /// Starts `short@127.0.0.1` in consensus mode, connected to
    /// `connect`, with `extra` flags.
    async fn node(&self, short: &str, connect: Option<&str>, extra: &[&str]) -> NodeProcess {
        let data = self.dir.path().join(short);
        let ttl = format!("{}ms", TTL.as_millis());
        let mut args: Vec<String> = [
            "--name",
            &format!("{short}@127.0.0.1:0"),
            "--config",
            &self.config,
            "--data-dir",
            &data.to_string_lossy(),
            "--session-ttl",
            &ttl,
        ]
        .map(str::to_owned)
        .to_vec();
        for v in VOTERS {
            args.extend(["--consensus-voter".to_owned(), format!("{v}@127.0.0.1")]);
        }
        if let Some(c) = connect {
            args.extend(["--connect".to_owned(), c.to_owned()]);
        }
        args.extend(extra.iter().map(|s| (*s).to_owned()));
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        // openraft warns of every timed-out RPC to the killed voter.
        let env = [
            ("QUICMESH_COOKIE", COOKIE),
            ("RUST_LOG", "warn,openraft=off"),
        ];
        NodeProcess::start(&refs, &env).await
    }

    /// Waits until a voter has applied the log entry `token` names: the
    /// grant went through the group.
    async fn in_log(&self, token: u128) {
        let deadline = Instant::now() + WAIT;
        loop {
            let applied =
                status(&self.voters[0].addr.to_string()).await["consensus"]["last_applied"]
                    .as_u64();
            if applied.is_some_and(|a| u128::from(a) >= token) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "token {token} is no entry of the log: applied {applied:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The voter every live voter names as the Raft leader, asked with
    /// `quicmesh status --json` until they agree (or the deadline).
    async fn leader(&self) -> usize {
        let deadline = Instant::now() + WAIT;
        loop {
            let mut named = Vec::new();
            for v in &self.voters {
                let c = status(&v.addr.to_string()).await["consensus"].clone();
                named.push((c["role"].clone(), c["leader"].clone()));
            }
            let leaders: Vec<usize> = named
                .iter()
                .enumerate()
                .filter(|(_, (role, _))| role == "leader")
                .map(|(i, _)| i)
                .collect();
            if let [i] = leaders[..] {
                let name = self.voters[i].name.to_string();
                if named.iter().all(|(_, leader)| *leader == name.as_str()) {
                    return i;
                }
            }
            assert!(Instant::now() < deadline, "no agreed leader: {named:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// `quicmesh status --json --connect ADDR`.
async fn status(addr: &str) -> Value {
    let addr = addr.to_owned();
    let out = tokio::task::spawn_blocking(move || {
        quicmesh_with(
            &["status", "--json", "--connect", &addr],
            &[("QUICMESH_COOKIE", COOKIE)],
        )
    })
    .await
    .expect("command ran");
    assert!(
        out.status.success(),
        "status failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("status is JSON")
}

/// Waits for `locked RESOURCE TOKEN` from `node`; the token (any number:
/// global mode's are larger than a log index).
async fn locked(node: &mut NodeProcess, resource: &str) -> u128 {
    let got = node.expect_starts(&[&format!("locked {resource} ")]).await;
    got[0]
        .parse()
        .unwrap_or_else(|e| panic!("token of {resource} {:?}: {e}", got[0]))
}

fn data_dir_used(dir: &Path, short: &str) {
    assert!(
        dir.join(short).join("raft.redb").is_file(),
        "voter {short} keeps its log in its --data-dir"
    );
}

#[tokio::test]
async fn sigkilled_leader_process_writes_served_again_through_the_survivors() {
    let _serial = SERIAL.lock().await;
    let mut cluster = Cluster::start(&["--lock", "res"]).await;
    let res = locked(&mut cluster.voters[2], "res").await;
    for short in VOTERS {
        data_dir_used(cluster.dir.path(), short);
    }

    let leader = cluster.leader().await;
    let killed = cluster.voters[leader].name.clone();
    let survivor = cluster.voters[(leader + 1) % VOTERS.len()].addr.to_string();
    let killed_at = Instant::now();
    cluster.voters[leader].signal("-KILL");
    let mut client = cluster
        .node("d", Some(&survivor), &["--lock", "other"])
        .await;
    let other = locked(&mut client, "other").await;
    let served_again = killed_at.elapsed();
    println!(
        "leader {killed} SIGKILLed: a new client printed `locked other {other}` after \
         {served_again:?} (heartbeat {HEARTBEAT_MS} ms, election timeout {ELECTION_TIMEOUT_MS} ms)"
    );
    assert!(
        other > res,
        "tokens increase: res {res}, then other {other}"
    );
    let _ = cluster.voters.remove(leader);
    cluster.in_log(other).await;
    let now = cluster.leader().await;
    assert_ne!(cluster.voters[now].name, killed, "a survivor leads");
}

#[tokio::test]
async fn sigkilled_client_process_lock_granted_to_the_next_after_its_ttl() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[]).await;
    let first = cluster.voters[0].addr.to_string();
    let mut holder = cluster.node("e", Some(&first), &["--lock", "res2"]).await;
    let before = locked(&mut holder, "res2").await;
    let mut next = cluster.node("f", Some(&first), &["--lock", "res2"]).await;
    // f is up and asking (or about to): it can only be granted res2
    // once e's session has expired, whenever it asked.
    let killed_at = Instant::now();
    holder.signal("-KILL");
    let after = locked(&mut next, "res2").await;
    let handed_over = killed_at.elapsed();
    println!(
        "client e SIGKILLed holding res2 {before}: `locked res2 {after}` on f after \
         {handed_over:?} (session TTL {TTL:?}, heartbeat {HEARTBEAT_MS} ms)"
    );
    assert!(after > before, "tokens increase: {before}, then {after}");
    cluster.in_log(after).await;
    // e renewed its session every third of the TTL, and the group expires
    // it a whole TTL after the last renewal it saw: never sooner than two
    // thirds of the TTL after the kill.
    let earliest = TTL * 2 / 3 - Duration::from_millis(50);
    assert!(
        handed_over >= earliest,
        "granted {handed_over:?} after the kill: before the session could expire"
    );
    assert!(
        handed_over <= TTL + Duration::from_secs(2),
        "granted only {handed_over:?} after the kill"
    );
}

#[tokio::test]
async fn a_client_started_before_the_group_has_a_quorum_registers_once_it_has_one() {
    let _serial = SERIAL.lock().await;
    let attempt = Duration::from_millis(500);
    let mut cluster = Cluster::new(&format!(
        "request_timeout = \"{}ms\"\n",
        attempt.as_millis()
    ));
    let a = cluster.node("a", None, &[]).await;
    let a_addr = a.addr.to_string();
    cluster.voters.push(a);
    // One voter of three: no leader, so every attempt ends in NoQuorum.
    let mut client = cluster
        .node("d", Some(&a_addr), &["--register", "svc"])
        .await;
    let window = async {
        while let Ok(Some(line)) = client.stdout.next_line().await {
            assert!(
                !line.contains("registered"),
                "no answer while there is no quorum (the client keeps asking): {line}"
            );
        }
    };
    let _ = tokio::time::timeout(attempt * 4, window).await;
    for short in ["b", "c"] {
        let voter = cluster.node(short, Some(&a_addr), &[]).await;
        cluster.voters.push(voter);
    }
    client.expect_line("registered svc").await;
}

/// `quicmesh consensus ARGS`: its exit status, stdout and stderr.
async fn consensus_cmd(args: &[&str]) -> std::process::Output {
    let args: Vec<String> = std::iter::once("consensus".to_owned())
        .chain(args.iter().map(|s| (*s).to_owned()))
        .collect();
    tokio::task::spawn_blocking(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        quicmesh_with(&refs, &[("QUICMESH_COOKIE", COOKIE)])
    })
    .await
    .expect("command ran")
}

/// The voters of a `quicmesh consensus ... --json` answer.
fn voters_of(out: &std::process::Output) -> Vec<String> {
    assert!(
        out.status.success(),
        "command failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    v["voters"]
        .as_array()
        .expect("voters")
        .iter()
        .map(|n| n.as_str().expect("a name").to_owned())
        .collect()
}

#[tokio::test]
async fn a_voter_is_added_and_removed_with_the_consensus_commands() {
    let _serial = SERIAL.lock().await;
    let cluster = Cluster::start(&[]).await;
    let a = cluster.voters[0].addr.to_string();
    let d = cluster.node("d", Some(&a), &["--consensus-join"]).await;
    let d_addr = d.addr.to_string();
    let all = ["a", "b", "c", "d"].map(|s| format!("{s}@127.0.0.1"));

    let added = consensus_cmd(&["add-voter", "d@127.0.0.1", "--json", "--connect", &a]).await;
    assert_eq!(voters_of(&added), all);
    // d reads the same membership, and says it follows as a voter.
    let members = consensus_cmd(&["members", "--json", "--connect", &d_addr]).await;
    assert_eq!(voters_of(&members), all);
    let deadline = Instant::now() + WAIT;
    loop {
        let c = status(&d_addr).await["consensus"].clone();
        if c["role"] == "follower" && c["voters"].as_array().is_some_and(|v| v.len() == 4) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "d does not follow as a voter: {c}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    let removed = consensus_cmd(&["remove-voter", "d@127.0.0.1", "--json", "--connect", &a]).await;
    assert_eq!(voters_of(&removed), all[..3]);
    // Removing it again is refused, saying why.
    let again = consensus_cmd(&["remove-voter", "d@127.0.0.1", "--connect", &a]).await;
    assert!(!again.status.success(), "removed twice");
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(stderr.contains("is not a voter of the group"), "{stderr}");
    let table = consensus_cmd(&["members", "--connect", &a]).await;
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.contains("a@127.0.0.1  voter") && !table.contains("d@127.0.0.1"),
        "{table}"
    );
}
