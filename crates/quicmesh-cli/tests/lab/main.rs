//! mDNS discovery between real `quicmesh` processes on hosts of a sealed
//! lab: each test re-runs itself under `unshare --net --mount`, so its
//! bridge, hosts (network namespaces joined by veth pairs) and every
//! multicast packet live in a network namespace with no link to the
//! outside, and vanish when the test ends. Needs root (and `unshare`, `ip`,
//! `nft`); without them each test says why and passes, except under
//! `CI=true`, where that is a failure.

#[path = "../support/mod.rs"]
mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncRead, BufReader};
use tokio::process::{Child, Command};
use tokio::sync::mpsc;

use support::lab::{in_lab, make_hosts, sh};

use support::{EXE, WAIT};
const COOKIE: &str = "lab-cookie";
const OTHER_COOKIE: &str = "another-clusters-cookie";
/// The mDNS strategy's settings in these tests.
const POLL: Duration = Duration::from_secs(1);
/// Longer than a withdrawn record takes to go (1 s, RFC 6762 10.1), so a
/// test can tell a withdrawal from a failed re-verification.
const VERIFY: Duration = Duration::from_secs(3);
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(1);

/// Packet counters on the bridge: QUIC (any UDP but mDNS) to and from
/// host `other`, and from h1 to h2 as a control that counting works.
fn count_traffic(other: usize) {
    sh(&format!(
        "nft add table bridge lab && \
         nft 'add chain bridge lab forward {{ type filter hook forward priority 0; policy accept; }}' && \
         nft add counter bridge lab to_other && \
         nft add counter bridge lab from_other && \
         nft add counter bridge lab h1_to_h2 && \
         nft add rule bridge lab forward ip daddr 10.77.0.{other} udp dport != 5353 counter name to_other && \
         nft add rule bridge lab forward ip saddr 10.77.0.{other} udp dport != 5353 counter name from_other && \
         nft add rule bridge lab forward ip saddr 10.77.0.1 ip daddr 10.77.0.2 udp dport 4370 counter name h1_to_h2"
    ));
}

fn packets(counter: &str) -> u64 {
    let listed = sh(&format!("nft list counter bridge lab {counter}"));
    listed
        .split_whitespace()
        .skip_while(|w| *w != "packets")
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no packet count in {listed}"))
}

/// A `quicmesh node` running on host `hN`, its stdout and log lines read as
/// they come, killed when dropped.
struct HostNode {
    child: Child,
    name: String,
    lines: mpsc::UnboundedReceiver<String>,
    /// Every line read so far, with when it came.
    seen: Vec<(Instant, String)>,
    started: Instant,
}

impl HostNode {
    /// A node on `hN` that finds its peers over mDNS.
    fn start(dir: &Path, host: usize, cookie: &str) -> Self {
        let discovery = format!(
            "[topologies.lan]\nstrategy = \"mdns\"\ninterfaces = [\"eth0\"]\n\
             polling_interval = \"{}ms\"\nverify_timeout = \"{}ms\"\n",
            POLL.as_millis(),
            VERIFY.as_millis(),
        );
        Self::start_with(dir, host, cookie, &discovery, &[])
    }

    /// A node on `hN` with `more` appended to its config file and `args`
    /// after `--config FILE`.
    fn start_with(dir: &Path, host: usize, cookie: &str, more: &str, args: &[&str]) -> Self {
        let name = format!("app@10.77.0.{host}");
        let config = dir.join(format!("h{host}.toml"));
        std::fs::write(
            &config,
            format!(
                "name = \"{name}\"\nlisten = \"10.77.0.{host}:4370\"\n{more}\n\
                 [identity]\nmode = \"cookie\"\ncookie = \"{cookie}\"\n\
                 [heartbeat]\ninterval = \"200ms\"\ntimeout = \"{}ms\"\n",
                HEARTBEAT_TIMEOUT.as_millis(),
            ),
        )
        .expect("write config");
        let started = Instant::now();
        let mut child = Command::new("ip")
            .args([
                "netns",
                "exec",
                &format!("h{host}"),
                EXE,
                "node",
                "--config",
            ])
            .arg(&config)
            .args(args)
            .env("RUST_LOG", "quicmesh=info,warn")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn quicmesh node");
        let (tx, lines) = mpsc::unbounded_channel();
        forward(child.stdout.take().expect("stdout"), tx.clone());
        forward(child.stderr.take().expect("stderr"), tx);
        Self {
            child,
            name,
            lines,
            seen: Vec::new(),
            started,
        }
    }

    /// Waits for a line containing every one of `parts`; when it came.
    async fn expect(&mut self, parts: &[&str]) -> Instant {
        self.expect_all(&[parts]).await[0]
    }

    /// Waits until, for each entry of `wanted`, a line containing all its
    /// parts has been printed (since the start, in any order); when each
    /// line came.
    async fn expect_all(&mut self, wanted: &[&[&str]]) -> Vec<Instant> {
        let matches = |line: &str, parts: &[&str]| parts.iter().all(|p| line.contains(p));
        let mut when: Vec<Option<Instant>> = wanted
            .iter()
            .map(|parts| {
                self.seen
                    .iter()
                    .find(|(_, line)| matches(line, parts))
                    .map(|(at, _)| *at)
            })
            .collect();
        let seen = &mut self.seen;
        let lines = &mut self.lines;
        let wait = async {
            while when.iter().any(Option::is_none) {
                let Some(line) = lines.recv().await else {
                    return false;
                };
                let now = Instant::now();
                for (parts, at) in wanted.iter().zip(when.iter_mut()) {
                    if at.is_none() && matches(&line, parts) {
                        *at = Some(now);
                    }
                }
                seen.push((now, line));
            }
            true
        };
        let done = tokio::time::timeout(WAIT, wait).await;
        let missing: Vec<&[&str]> = wanted
            .iter()
            .zip(&when)
            .filter(|(_, at)| at.is_none())
            .map(|(w, _)| *w)
            .collect();
        assert!(
            missing.is_empty() && matches!(done, Ok(true)),
            "{} did not print {missing:?}; it printed:\n{}",
            self.name,
            self.seen
                .iter()
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join("\n")
        );
        when.into_iter().flatten().collect()
    }

    /// Whether a line containing `part` has been printed so far.
    fn has_printed(&mut self, part: &str) -> bool {
        self.count_printed(part) > 0
    }

    fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        // `ip netns exec` execs the node: the PID is the node's.
        sh(&format!("kill {sig} {pid}"));
    }

    async fn exited(&mut self) {
        tokio::time::timeout(WAIT, self.child.wait())
            .await
            .expect("the node exits")
            .expect("wait");
    }
}

fn forward(from: impl AsyncRead + Unpin + Send + 'static, to: mpsc::UnboundedSender<String>) {
    tokio::spawn(async move {
        let mut lines = BufReader::new(from).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            if to.send(line).is_err() {
                return;
            }
        }
    });
}

/// Waits until every node is connected to all the others and has heard
/// their mDNS records (a node may connect through another's gossip before
/// its own mDNS answer arrives); the longest time from a node's start to
/// its last connection.
async fn meshed(nodes: &mut [HostNode]) -> Duration {
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let mut longest = Duration::ZERO;
    for node in nodes.iter_mut() {
        let others: Vec<&String> = names.iter().filter(|n| **n != node.name).collect();
        let up: Vec<String> = others.iter().map(|n| format!("up {n}")).collect();
        let mut wanted: Vec<Vec<&str>> = up.iter().map(|u| vec![u.as_str()]).collect();
        wanted.extend(
            others
                .iter()
                .map(|n| vec!["found a node of this cluster", n.as_str()]),
        );
        let wanted: Vec<&[&str]> = wanted.iter().map(Vec::as_slice).collect();
        let when = node.expect_all(&wanted).await;
        let connected = when[..up.len()].iter().max().expect("peers");
        longest = longest.max(*connected - node.started);
    }
    longest
}

fn ms(d: Duration) -> u128 {
    d.as_millis()
}

#[tokio::test]
async fn mdns_three_hosts_find_each_other_and_never_dial_another_cluster() {
    if !in_lab("mdns_three_hosts_find_each_other_and_never_dial_another_cluster") {
        return;
    }
    make_hosts(4);
    count_traffic(4);
    let dir = tempfile::tempdir().expect("tempdir");
    // h4 is on the same bridge with another cookie: another cluster.
    let mut other = HostNode::start(dir.path(), 4, OTHER_COOKIE);
    let mut nodes: Vec<HostNode> = (1..=3)
        .map(|i| HostNode::start(dir.path(), i, COOKIE))
        .collect();

    // No seeds, no DNS: each finds the other two over mDNS.
    let full_mesh = meshed(&mut nodes).await;
    println!(
        "mdns: start to full mesh of 3 processes: {} ms",
        ms(full_mesh)
    );

    // Each side heard the other cluster's records and ignored them.
    for node in &mut nodes {
        node.expect(&["ignoring a record", "app@10.77.0.4", "another cluster"])
            .await;
    }
    let names: Vec<String> = nodes.iter().map(|n| n.name.clone()).collect();
    let heard: Vec<[&str; 3]> = names
        .iter()
        .map(|n| ["ignoring a record", n.as_str(), "another cluster"])
        .collect();
    other
        .expect_all(&heard.iter().map(|h| &h[..]).collect::<Vec<_>>())
        .await;
    // Give them three more polls to misbehave, then count: not one QUIC
    // packet went to or came from h4, while h1 and h2 did talk (the
    // counters work).
    tokio::time::sleep(3 * POLL).await;
    assert_eq!(packets("to_other"), 0, "a node dialled the other cluster");
    assert_eq!(packets("from_other"), 0, "the other cluster dialled a node");
    assert!(packets("h1_to_h2") > 0, "h1 to h2 was not counted");
    assert!(
        !other.has_printed("up app@"),
        "the other cluster's node connected to a node"
    );
}

#[tokio::test]
async fn mdns_records_go_when_a_node_shuts_down_or_is_killed() {
    if !in_lab("mdns_records_go_when_a_node_shuts_down_or_is_killed") {
        return;
    }
    make_hosts(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut nodes: Vec<HostNode> = (1..=3)
        .map(|i| HostNode::start(dir.path(), i, COOKIE))
        .collect();
    meshed(&mut nodes).await;
    let [h1, h2, h3] = &mut nodes[..] else {
        unreachable!()
    };

    // A node shut down withdraws its record: the others drop it about 1 s
    // later (a goodbye's grace), well before a re-verification (VERIFY)
    // or its 120 s TTL would.
    let stopped = Instant::now();
    h3.signal("-TERM");
    h3.exited().await;
    for node in [&mut *h1, &mut *h2] {
        let gone = node.expect(&["mDNS: record gone", "app@10.77.0.3"]).await;
        println!(
            "mdns: shut-down node's record gone after {} ms",
            ms(gone - stopped)
        );
        assert!(gone - stopped < VERIFY - Duration::from_millis(500));
    }

    // A killed node cannot withdraw its record: once it is down, h1
    // re-verifies it, and with no answer it goes after the verify timeout.
    let killed = Instant::now();
    h2.signal("-KILL");
    h2.exited().await;
    let [down, asked, gone] = h1
        .expect_all(&[
            &["down app@10.77.0.2"],
            &["re-verifying its mDNS record", "app@10.77.0.2"],
            &["mDNS: record gone", "app@10.77.0.2"],
        ])
        .await[..]
    else {
        unreachable!()
    };
    println!(
        "mdns: killed node down after {} ms, its record gone {} ms after the kill, {} ms after re-verifying",
        ms(down - killed),
        ms(gone - killed),
        ms(gone - asked)
    );
    assert!(asked >= down, "re-verified before it was down");
    let verified_in = gone - asked;
    assert!(
        verified_in >= VERIFY - Duration::from_millis(200)
            && verified_in <= VERIFY + Duration::from_millis(500),
        "record went {} ms after re-verifying (timeout {} ms)",
        ms(verified_in),
        ms(VERIFY)
    );
    assert!(gone - killed <= HEARTBEAT_TIMEOUT + POLL + VERIFY + Duration::from_secs(2));
}

/// Cuts (or heals) every link between `hosts` and the other hosts, on the
/// bridge.
fn partition(hosts: &[usize], others: &[usize]) {
    sh("nft add table bridge cut && \
        nft 'add chain bridge cut forward { type filter hook forward priority -10; policy accept; }'");
    for a in hosts {
        for b in others {
            sh(&format!(
                "nft add rule bridge cut forward iifname h{a}-br oifname h{b}-br drop && \
                 nft add rule bridge cut forward iifname h{b}-br oifname h{a}-br drop"
            ));
        }
    }
}

fn heal() {
    sh("nft delete table bridge cut");
}

#[tokio::test]
async fn a_name_registered_on_both_sides_of_a_partition_has_one_owner_after_it_heals() {
    if !in_lab("a_name_registered_on_both_sides_of_a_partition_has_one_owner_after_it_heals") {
        return;
    }
    make_hosts(3);
    // h1 | h2 h3 from the start.
    partition(&[1], &[2, 3]);
    let dir = tempfile::tempdir().expect("tempdir");
    let seeds = "seeds = [\"app@10.77.0.1:4370\", \"app@10.77.0.2:4370\", \"app@10.77.0.3:4370\"]\n\
                 [reconnect]\ninitial = \"50ms\"\nmax = \"300ms\"";
    // h1 registers `x` alone, then h2 registers it with h3 on its side.
    let mut h1 = HostNode::start_with(dir.path(), 1, COOKIE, seeds, &["--register", "x"]);
    h1.expect(&["registered x"]).await;
    let mut h3 = HostNode::start_with(dir.path(), 3, COOKIE, seeds, &[]);
    let mut h2 = HostNode::start_with(
        dir.path(),
        2,
        COOKIE,
        seeds,
        &["--wait-for", "1", "--register", "x"],
    );
    h2.expect(&["registered x"]).await;
    h3.expect(&["registry registered x app@10.77.0.2"]).await;
    assert!(!h1.has_printed("up app@"), "the partition leaked");

    // Healed: every node ends with h1's registration (the earlier one),
    // and h2, the loser, is told.
    let healed = Instant::now();
    heal();
    let kept = "registry conflict x kept app@10.77.0.1 dropped app@10.77.0.2";
    for node in [&mut h1, &mut h2, &mut h3] {
        let resolved = node.expect(&[kept]).await;
        println!(
            "registry: {} resolved the conflict {} ms after the heal",
            node.name,
            ms(resolved - healed)
        );
    }
    assert!(
        h2.has_printed("lost a registered name in a conflict"),
        "the loser logs that it lost"
    );
    for node in [&mut h1, &mut h2, &mut h3] {
        assert!(
            !node.has_printed("kept app@10.77.0.2"),
            "{} kept the later registration",
            node.name
        );
    }
}

/// The seeds and quick reconnection of the fencing tests' nodes.
const SEEDS: &str = "seeds = [\"app@10.77.0.1:4370\", \"app@10.77.0.2:4370\", \"app@10.77.0.3:4370\"]\n\
                     [reconnect]\ninitial = \"50ms\"\nmax = \"300ms\"";

/// The token (or term) at the end of the first line containing `prefix`.
fn token_after(node: &HostNode, prefix: &str) -> u128 {
    node.seen
        .iter()
        .find_map(|(_, line)| line.strip_prefix(prefix))
        .and_then(|rest| rest.trim().parse().ok())
        .unwrap_or_else(|| panic!("{} printed no `{prefix}<token>`", node.name))
}

/// h1 locks `res` and leads `boss` (waited for); then h3 starts, and h2,
/// which tries for both once `wait_for` other nodes are up.
async fn holder_and_contender(dir: &Path, wait_for: &str) -> [HostNode; 3] {
    let both = ["--lock", "res", "--campaign", "boss"];
    let mut h1 = HostNode::start_with(dir, 1, COOKIE, SEEDS, &both);
    h1.expect_all(&[&["locked res "], &["leading boss "]]).await;
    let h3 = HostNode::start_with(dir, 3, COOKIE, SEEDS, &[]);
    let contender = [
        "--wait-for",
        wait_for,
        "--lock",
        "res",
        "--campaign",
        "boss",
    ];
    let h2 = HostNode::start_with(dir, 2, COOKIE, SEEDS, &contender);
    [h1, h2, h3]
}

/// A resource fenced by lock tokens: it takes a write only with a token at
/// least the largest it has seen.
#[derive(Default)]
struct FencedResource {
    largest: u128,
}

impl FencedResource {
    fn write(&mut self, token: u128) -> bool {
        if token < self.largest {
            return false;
        }
        self.largest = token;
        true
    }
}

#[tokio::test]
async fn locks_and_leaders_of_both_sides_of_a_partition_meet_and_the_older_is_told_it_lost() {
    if !in_lab("locks_and_leaders_of_both_sides_of_a_partition_meet_and_the_older_is_told_it_lost")
    {
        return;
    }
    make_hosts(3);
    // h1 | h2 h3 from the start: each side locks `res` and leads `boss`.
    partition(&[1], &[2, 3]);
    let dir = tempfile::tempdir().expect("tempdir");
    let [mut h1, mut h2, mut h3] = holder_and_contender(dir.path(), "1").await;
    h2.expect_all(&[&["locked res "], &["leading boss "]]).await;
    assert!(!h1.has_printed("up app@"), "the partition leaked");
    let (lock1, lock2) = (
        token_after(&h1, "locked res "),
        token_after(&h2, "locked res "),
    );
    let (term1, term2) = (
        token_after(&h1, "leading boss "),
        token_after(&h2, "leading boss "),
    );
    assert_ne!(lock1, lock2, "both sides were granted one token");
    assert_ne!(term1, term2, "both sides lead in one term");

    // Each side wrote with its token while apart; after the heal only the
    // newer holder is accepted.
    let (older, newer) = if lock1 < lock2 { (1, 2) } else { (2, 1) };
    let mut resource = FencedResource::default();
    assert!(resource.write(lock1.min(lock2)));
    assert!(resource.write(lock1.max(lock2)));
    let healed = Instant::now();
    heal();
    let (loser, winner) = if older == 1 {
        (&mut h1, &mut h2)
    } else {
        (&mut h2, &mut h1)
    };
    let (lost_lock, winner_term) = (lock1.min(lock2), if older == 1 { term2 } else { term1 });
    let lost_term = term1.min(term2);
    assert_eq!(
        lost_term,
        if older == 1 { term1 } else { term2 },
        "the older lock and the older term are one node's"
    );
    let told = loser
        .expect_all(&[
            &[&format!("lost lock res {lost_lock}")],
            &[&format!("lost leadership boss {lost_term}")],
        ])
        .await;
    assert!(
        !resource.write(lost_lock),
        "the fenced resource refuses the older holder"
    );
    let leader = format!("leader boss app@10.77.0.{newer} {winner_term}");
    let converged = [
        loser.expect(&[&leader]).await,
        winner.expect(&[&leader]).await,
    ];
    println!(
        "fencing: after the heal h{older} was told it lost the lock in {} ms and the leadership in {} ms; both sides follow h{newer} after {} ms",
        ms(told[0] - healed),
        ms(told[1] - healed),
        ms(converged.iter().max().expect("two").duration_since(healed)),
    );
    assert!(
        !winner.has_printed("lost lock") && !winner.has_printed("lost leadership"),
        "the newer holder keeps both"
    );
    // h3 meets h1 too (it may come after h1 met h2).
    h3.expect(&["up app@10.77.0.1"]).await;
}

#[tokio::test]
async fn a_paused_holder_is_told_on_waking_that_its_lock_and_leadership_went() {
    if !in_lab("a_paused_holder_is_told_on_waking_that_its_lock_and_leadership_went") {
        return;
    }
    make_hosts(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let [mut h1, mut h2, mut h3] = holder_and_contender(dir.path(), "2").await;
    h2.expect(&["up app@10.77.0.1"]).await;
    h3.expect(&["up app@10.77.0.1"]).await;
    let (lock1, term1) = (
        token_after(&h1, "locked res "),
        token_after(&h1, "leading boss "),
    );

    // h1 freezes; the others declare it down, and h2 takes both.
    h1.signal("-STOP");
    let paused = Instant::now();
    h2.expect_all(&[&["locked res "], &["leading boss "]]).await;
    let taken = Instant::now();
    let (lock2, term2) = (
        token_after(&h2, "locked res "),
        token_after(&h2, "leading boss "),
    );
    assert!(lock2 > lock1, "the new holder's token is larger");
    assert!(term2 > term1, "the new leader's term is larger");

    h1.signal("-CONT");
    let woke = Instant::now();
    let told = h1
        .expect_all(&[
            &[&format!("lost lock res {lock1}")],
            &[&format!("lost leadership boss {term1}")],
            &[&format!("leader boss app@10.77.0.2 {term2}")],
        ])
        .await;
    println!(
        "pause: h2 held the lock {} ms after h1 froze; h1 was told it lost the lock {} ms and the leadership {} ms after waking, and follows h2 after {} ms",
        ms(taken - paused),
        ms(told[0] - woke),
        ms(told[1] - woke),
        ms(told[2] - woke),
    );
    assert!(
        !h2.has_printed("lost lock") && !h2.has_printed("lost leadership"),
        "h2 keeps both"
    );
}

/// Which of `nodes` prints a line containing `part` first (within the
/// tests' wait).
async fn first_to_print(nodes: &mut [HostNode], part: &str) -> usize {
    let deadline = Instant::now() + WAIT;
    loop {
        if let Some(i) = nodes.iter_mut().position(|n| n.has_printed(part)) {
            return i;
        }
        assert!(Instant::now() < deadline, "no node printed {part:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn after_a_whole_cluster_restart_a_lock_has_a_larger_token_than_any_before() {
    if !in_lab("after_a_whole_cluster_restart_a_lock_has_a_larger_token_than_any_before") {
        return;
    }
    make_hosts(3);
    let dir = tempfile::tempdir().expect("tempdir");
    let lock = ["--wait-for", "2", "--lock", "res", "--campaign", "boss"];
    let mut before = Vec::new();
    let mut nodes: Vec<HostNode> = (1..=3)
        .map(|h| HostNode::start_with(dir.path(), h, COOKIE, SEEDS, &lock))
        .collect();
    // One of them holds the lock and leads; note the tokens.
    let holder = first_to_print(&mut nodes, "locked res ").await;
    nodes[holder].expect(&["leading boss "]).await;
    before.push(token_after(&nodes[holder], "locked res "));
    before.push(token_after(&nodes[holder], "leading boss "));
    for n in &nodes {
        n.signal("-KILL");
    }
    for n in &mut nodes {
        n.exited().await;
    }
    drop(nodes);
    let mut nodes: Vec<HostNode> = (1..=3)
        .map(|h| HostNode::start_with(dir.path(), h, COOKIE, SEEDS, &lock))
        .collect();
    let holder = first_to_print(&mut nodes, "locked res ").await;
    nodes[holder].expect(&["leading boss "]).await;
    let (lock, term) = (
        token_after(&nodes[holder], "locked res "),
        token_after(&nodes[holder], "leading boss "),
    );
    println!(
        "restart: lock token {} -> {lock}, term {} -> {term}",
        before[0], before[1]
    );
    assert!(lock > before[0], "a token after the restart is larger");
    assert!(term > before[1], "a term after the restart is larger");
}

impl HostNode {
    /// How many lines containing `part` it printed so far.
    fn count_printed(&mut self, part: &str) -> usize {
        while let Ok(line) = self.lines.try_recv() {
            self.seen.push((Instant::now(), line));
        }
        self.seen.iter().filter(|(_, l)| l.contains(part)).count()
    }

    /// Waits until it printed `n` lines containing `part`.
    async fn expect_times(&mut self, part: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count_printed(part) < n {
            assert!(
                Instant::now() < deadline,
                "{} printed {part:?} fewer than {n} times",
                self.name
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

#[tokio::test]
async fn two_nodes_that_met_through_a_third_connect_again_after_their_link_failed() {
    if !in_lab("two_nodes_that_met_through_a_third_connect_again_after_their_link_failed") {
        return;
    }
    make_hosts(3);
    let dir = tempfile::tempdir().expect("tempdir");
    // h2 and h3 know only h1, and meet through it.
    let seed = "seeds = [\"app@10.77.0.1:4370\"]\n[reconnect]\ninitial = \"50ms\"\nmax = \"300ms\"";
    let mut h1 = HostNode::start_with(dir.path(), 1, COOKIE, seed, &[]);
    let mut h2 = HostNode::start_with(dir.path(), 2, COOKIE, seed, &[]);
    let mut h3 = HostNode::start_with(dir.path(), 3, COOKIE, seed, &[]);
    h2.expect(&["up app@10.77.0.3"]).await;
    h3.expect(&["up app@10.77.0.2"]).await;
    // Their link fails (h1 still reaches both): each sees the other go.
    partition(&[2], &[3]);
    h2.expect(&["down app@10.77.0.3 heartbeat timeout"]).await;
    h3.expect(&["down app@10.77.0.2 heartbeat timeout"]).await;
    let healed = Instant::now();
    heal();
    // h1 still has both up: on its word they dial each other again.
    h2.expect_times("up app@10.77.0.3", 2).await;
    h3.expect_times("up app@10.77.0.2", 2).await;
    println!("link h2-h3 back {} ms after the heal", ms(healed.elapsed()));
    assert_eq!(h1.count_printed("down "), 0, "h1 lost nobody");
}
