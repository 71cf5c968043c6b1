//! Real `quicmesh` processes: killed, terminated, issuing certificates,
//! reading a config file, the demo, and shell completions.

#[path = "../../../../tests/support/probe.rs"]
mod probe;
mod rotation;
#[path = "../support/mod.rs"]
mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use quicmesh::{CertFiles, DownReason, EventStream, Node, NodeEvent, NodeName, PeerState};
use support::{COOKIE, EXE, NodeProcess, WAIT, quicmesh};
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::Command;

async fn local_node(short: &str) -> Node {
    cookie_node(short, COOKIE).await
}

/// `short@127.0.0.1` in this process, on a free port, with `cookie`.
async fn cookie_node(short: &str, cookie: &str) -> Node {
    Node::builder()
        .name(format!("{short}@127.0.0.1"))
        .listen("127.0.0.1:0".parse().expect("addr"))
        .cookie(cookie)
        .start()
        .await
        .expect("start")
}

async fn down_reason(events: &mut EventStream, who: &NodeName) -> DownReason {
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("an event")
            .expect("open")
        {
            NodeEvent::NodeDown { node, reason } if &node == who => return reason,
            _ => {}
        }
    }
}

async fn connected_process(a: &Node, short: &str) -> NodeProcess {
    let mut events = a.events();
    let p = NodeProcess::start(
        &[
            "--name",
            &format!("{short}@127.0.0.1:0"),
            "--connect",
            &a.addr().to_string(),
        ],
        &[("QUICMESH_COOKIE", COOKIE)],
    )
    .await;
    loop {
        match tokio::time::timeout(WAIT, events.recv())
            .await
            .expect("NodeUp")
            .expect("open")
        {
            NodeEvent::NodeUp { node, .. } if node == p.name => break,
            _ => {}
        }
    }
    p
}

#[tokio::test]
async fn sigkilled_process_is_detected_within_five_seconds() {
    let a = local_node("a").await;
    let mut p = connected_process(&a, "victim").await;
    let mut events = a.events();
    let killed = Instant::now();
    p.child.start_kill().expect("SIGKILL");
    let reason = down_reason(&mut events, &p.name).await;
    let took = killed.elapsed();
    assert_eq!(reason, DownReason::HeartbeatTimeout);
    assert!(took <= Duration::from_secs(5), "detected after {took:?}");
    eprintln!("SIGKILL detected after {took:?}");
    a.shutdown().await;
}

#[tokio::test]
async fn a_sigkilled_node_restarted_at_once_replaces_its_old_incarnation() {
    let a = local_node("a").await;
    let c = local_node("c").await;
    c.connect(&a.addr()).await.expect("c joins a");
    let mut p = connected_process(&a, "phoenix").await;
    let incarnation_at = |node: &Node, who: &NodeName| {
        let status = node.status();
        let peer = status.peers.into_iter().find(|s| &s.node == who);
        peer.filter(|s| s.state == PeerState::Up)
            .and_then(|s| s.incarnation)
    };
    until("c learns phoenix from a", || {
        incarnation_at(&c, &p.name).is_some()
    })
    .await;
    let old = incarnation_at(&a, &p.name).expect("its incarnation");
    let mut events = a.events();
    let killed = Instant::now();
    p.child.start_kill().expect("SIGKILL");
    // Restarted at once under the same name (another port), told only of
    // a: while the old connection still looks alive the name is in use;
    // once it went quiet the new incarnation takes its place, and c learns
    // it from a.
    let again = connected_process(&a, "phoenix").await;
    let took = killed.elapsed();
    let now = incarnation_at(&a, &again.name).expect("its incarnation");
    assert_ne!(now, old);
    assert!(took <= Duration::from_secs(5), "back after {took:?}");
    let at_c = until("c has the new incarnation", || {
        incarnation_at(&c, &again.name) == Some(now)
    })
    .await;
    eprintln!("restarted node back at a after {took:?}, at c {at_c:?} later");
    let downs: Vec<_> = std::iter::from_fn(|| events.try_recv())
        .filter_map(Result::ok)
        .filter(|e| matches!(e, NodeEvent::NodeDown { .. }))
        .collect();
    assert!(
        downs.len() <= 1,
        "one NodeDown at most, no flapping: {downs:?}"
    );
    a.shutdown().await;
    c.shutdown().await;
}

#[tokio::test]
async fn sigterm_is_seen_as_shutdown_within_one_second() {
    let a = local_node("a").await;
    let mut p = connected_process(&a, "leaver").await;
    p.expect_line("up a@127.0.0.1").await;
    let mut events = a.events();
    let sent = Instant::now();
    p.signal("-TERM");
    let reason = down_reason(&mut events, &p.name).await;
    let took = sent.elapsed();
    assert_eq!(reason, DownReason::Shutdown);
    assert!(took <= Duration::from_secs(1), "seen after {took:?}");
    let status = tokio::time::timeout(WAIT, p.child.wait())
        .await
        .expect("exits")
        .expect("status");
    assert!(status.success(), "{status}");
    a.shutdown().await;
}

fn mode(p: &Path) -> u32 {
    std::fs::metadata(p).expect("metadata").permissions().mode() & 0o777
}

#[test]
fn certs_tool_output_verifies_with_openssl_and_keys_are_private() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    let out = quicmesh(&["certs", "ca", "--out", d]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = quicmesh(&[
        "certs",
        "issue",
        "--name",
        "app1@host1",
        "--days",
        "30",
        "--ca",
        d,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (ca, cert) = (dir.path().join("ca.pem"), dir.path().join("app1@host1.pem"));
    assert_eq!(mode(&dir.path().join("ca.key")), 0o600);
    assert_eq!(mode(&dir.path().join("app1@host1.key")), 0o600);

    let verify = std::process::Command::new("openssl")
        .args(["verify", "-CAfile"])
        .arg(&ca)
        .arg(&cert)
        .output()
        .expect("openssl is installed");
    assert!(
        verify.status.success(),
        "{}",
        String::from_utf8_lossy(&verify.stdout)
    );
    assert!(String::from_utf8_lossy(&verify.stdout).contains(": OK"));

    let show = quicmesh(&["certs", "show", cert.to_str().expect("path")]);
    let text = String::from_utf8_lossy(&show.stdout);
    assert!(text.contains("URI:quicmesh:node/app1@host1"), "{text}");
    assert!(text.contains("SHA-256:"), "{text}");

    // Nothing is overwritten without --force.
    let again = quicmesh(&["certs", "issue", "--name", "app1@host1", "--ca", d]);
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("--force"));
    let again = quicmesh(&["certs", "ca", "--out", d]);
    assert!(!again.status.success());
    let forced = quicmesh(&[
        "certs",
        "issue",
        "--name",
        "app1@host1",
        "--ca",
        d,
        "--force",
    ]);
    assert!(forced.status.success());
    assert_eq!(mode(&dir.path().join("app1@host1.key")), 0o600);

    let bad = quicmesh(&["certs", "issue", "--name", "no-at-sign", "--ca", d]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("name@host"));
}

#[tokio::test]
async fn process_in_certificate_mode_with_config_file_joins() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("path");
    assert!(quicmesh(&["certs", "ca", "--out", d]).status.success());
    for n in ["a@127.0.0.1", "b@127.0.0.1"] {
        assert!(
            quicmesh(&["certs", "issue", "--name", n, "--ca", d])
                .status
                .success()
        );
    }
    let a = Node::builder()
        .name("a@127.0.0.1")
        .listen("127.0.0.1:0".parse().expect("addr"))
        .certificates(CertFiles::in_dir(
            dir.path(),
            &"a@127.0.0.1".parse().expect("name"),
        ))
        .start()
        .await
        .expect("a starts");
    let config = dir.path().join("b.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"b@127.0.0.1\"\nlisten = \"127.0.0.1:0\"\nseeds = [\"{}\"]\n\
             [identity]\nmode = \"certificate\"\nca = \"{d}/ca.pem\"\n\
             cert = \"{d}/b@127.0.0.1.pem\"\nkey = \"{d}/b@127.0.0.1.key\"\n\
             [heartbeat]\ninterval = \"200ms\"\ntimeout = \"1s\"\n",
            a.addr()
        ),
    )
    .expect("write config");
    let mut b = NodeProcess::start(&["--config", config.to_str().expect("path")], &[]).await;
    b.expect_line("up a@127.0.0.1").await;
    a.wait_for_nodes(1, WAIT).await.expect("a sees b");

    // A config with a mistake names the key.
    std::fs::write(
        &config,
        "name = \"b@127.0.0.1\"\nheartbeat_interval = \"1s\"\n",
    )
    .expect("write");
    let out = quicmesh(&["node", "--config", config.to_str().expect("path")]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("heartbeat_interval"));
    a.shutdown().await;
}

#[tokio::test]
async fn process_with_two_topologies_in_its_config_file_finds_both() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, c) = (local_node("a").await, local_node("c").await);
    let config = dir.path().join("b.toml");
    std::fs::write(
        &config,
        format!(
            "name = \"b@127.0.0.1\"\nlisten = \"127.0.0.1:0\"\n\
             [identity]\nmode = \"cookie\"\ncookie = \"{COOKIE}\"\n\
             [topologies.first]\nstrategy = \"static\"\nnodes = [\"{}\"]\n\
             [topologies.second]\nstrategy = \"static\"\nnodes = [\"{}\"]\nprune_after = \"1m\"\n",
            a.addr(),
            c.addr()
        ),
    )
    .expect("write config");
    let mut b = NodeProcess::start(&["--config", config.to_str().expect("path")], &[]).await;
    // The two topologies dial at once: either may come up first.
    b.expect_lines(&["up a@127.0.0.1", "up c@127.0.0.1"]).await;

    // Mistakes in a topology name the topology, the key or the value.
    for (bad, named) in [
        ("strategy = \"dns_pol\"\nquery = \"x\"", "dns_pol"),
        ("strategy = \"dns_poll\"\nnode_basename = \"app\"", "query"),
        (
            "strategy = \"dns_poll\"\nquery = \"x\"\nnode_basename = \"app\"\npolling_interval = \"0s\"",
            "topologies.broken: polling_interval",
        ),
        (
            "strategy = \"kubernetes_dns\"\nservice = \"s\"\napplication_name = \"a\"\nnameserver = \"dns.local\"",
            "nameserver",
        ),
    ] {
        std::fs::write(
            &config,
            format!("name = \"b@127.0.0.1\"\n[topologies.broken]\n{bad}\n"),
        )
        .expect("write");
        let out = quicmesh(&["node", "--config", config.to_str().expect("path")]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{bad}");
        assert!(err.contains(named), "{bad}\n→ {err}");
    }
    a.shutdown().await;
    c.shutdown().await;
}

#[test]
fn demo_runs_and_shows_both_kinds_of_node_down() {
    let out = quicmesh(&["demo"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("full mesh of 3 nodes formed"), "{text}");
    assert!(text.contains("reason: HeartbeatTimeout"), "{text}");
    assert!(text.contains("reason: Shutdown"), "{text}");
    let lines: Vec<&str> = text.lines().collect();
    let first = |what: &dyn Fn(&str) -> bool, which: &str| {
        lines
            .iter()
            .position(|l| what(l))
            .unwrap_or_else(|| panic!("no {which} line in:\n{text}"))
    };
    // Each child node is introduced before the first line it prints.
    for short in ["b", "c"] {
        let intro = first(
            &|l| l.starts_with(&format!("{short}@127.0.0.1 starts")),
            "intro",
        );
        let own = first(&|l| l.starts_with(&format!("[{short}] ")), "event");
        assert!(
            intro < own,
            "{short} is introduced after its events:\n{text}"
        );
    }
    // The status table's CA is explained, with the fingerprint it shows.
    let table = first(
        &|l| l.starts_with("node a@127.0.0.1 (listening on"),
        "status",
    );
    let ca = lines[table]
        .split("CA ")
        .nth(1)
        .and_then(|rest| rest.split([')', ',']).next())
        .unwrap_or_else(|| panic!("no CA in {:?}", lines[table]));
    let explained = first(
        &|l| l.contains("fingerprint of the cluster CA"),
        "CA explanation",
    );
    assert!(lines[explained].contains(&format!("CA {ca} ")), "{text}");
    assert!(explained > table, "{text}");
    // It ends with what to try next: the three-node commands.
    let done = first(&|l| l == "demo done", "demo done");
    let next = &lines[done + 1..];
    assert!(next.iter().any(|l| l.starts_with("next: ")), "{text}");
    for node in ["a@127.0.0.1:4370", "b@127.0.0.1:4371", "c@127.0.0.1:4372"] {
        assert!(
            next.iter().any(|l| l
                .trim_start()
                .starts_with(&format!("quicmesh node --name {node}"))),
            "no command for {node} after the demo:\n{text}"
        );
    }
    assert!(
        next.iter()
            .any(|l| l.trim_start() == "quicmesh members --connect a@127.0.0.1:4370"),
        "the admin commands are pointed to:\n{text}"
    );
}

#[test]
fn completions_are_printed_for_each_shell() {
    for shell in ["bash", "zsh", "fish"] {
        let out = quicmesh(&["completions", shell]);
        assert!(
            out.status.success(),
            "{shell}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let script = String::from_utf8(out.stdout).expect("a script in UTF-8");
        assert!(!script.trim().is_empty(), "{shell}: empty script");
        for subcommand in ["node", "certs", "demo", "completions"] {
            assert!(
                script.contains(subcommand),
                "{shell}: the script does not mention {subcommand}"
            );
        }
        if shell == "bash" {
            check_bash_syntax(&script);
        }
    }
    let out = quicmesh(&["completions", "tcsh"]);
    assert!(!out.status.success(), "an unknown shell is refused");
}

/// `bash -n` on the script, when bash is installed.
fn check_bash_syntax(script: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("quicmesh.bash");
    std::fs::write(&path, script).expect("write the script");
    match std::process::Command::new("bash")
        .arg("-n")
        .arg(&path)
        .output()
    {
        Ok(out) => assert!(
            out.status.success(),
            "bash -n refuses the script: {}",
            String::from_utf8_lossy(&out.stderr)
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            eprintln!("bash is not installed: the bash script's syntax is not checked");
        }
        Err(e) => panic!("running bash: {e}"),
    }
}

#[test]
fn mesh_bench_forms_full_meshes_in_process_and_of_processes() {
    // Not timed: the bench itself fails when a mesh does not complete.
    for extra in [
        &[][..],
        &["--processes"][..],
        &["--processes", "--shared-address"][..],
    ] {
        let mut args = vec![
            "bench",
            "mesh",
            "--nodes",
            "3,8",
            "--deadline",
            "60",
            "--rest",
            "1",
        ];
        args.extend_from_slice(extra);
        let out = quicmesh(&args);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{args:?} failed: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        for n in [3, 8] {
            assert!(
                stdout.contains(&format!("nodes {n}: full mesh ")),
                "{stdout}"
            );
        }
        if !extra.is_empty() {
            assert!(
                !stdout.contains("down everywhere -") && !stdout.contains("back everywhere -"),
                "the killed node was seen down and back: {stdout}"
            );
        }
    }
}

#[test]
fn bench_runs_between_two_processes_and_writes_json() {
    let dir = tempfile::tempdir().expect("tempdir");
    let json = dir.path().join("bench.json");
    // The server on a free port: bench serve prints its address first.
    let mut server = std::process::Command::new(EXE)
        .args([
            "bench",
            "serve",
            "--name",
            "bench@127.0.0.1:0",
            "--cookie",
            COOKIE,
        ])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn bench serve");
    // Keep the pipe open until the end: the server prints more lines, and
    // a closed pipe would kill it.
    let mut server_out = std::io::BufReader::new(server.stdout.take().expect("stdout"));
    let mut first = String::new();
    std::io::BufRead::read_line(&mut server_out, &mut first).expect("read");
    let addr = first
        .trim()
        .strip_prefix("listening ")
        .expect("listening line")
        .to_owned();
    let out = std::process::Command::new(EXE)
        .args(["bench", "rpc", "--connect", &addr, "--cookie", COOKIE])
        .args([
            "--payload",
            "64,64KiB",
            "--concurrency",
            "1,4",
            "--duration",
            "200ms",
            "--repeat",
            "2",
        ])
        .arg("--json")
        .arg(&json)
        .output()
        .expect("run bench rpc");
    let _ = server.kill();
    let _ = server.wait();
    drop(server_out);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for want in [
        "quicmesh call",
        "raw stream per call",
        "raw lane per caller",
        "raw shared lane, ids",
        "quicmesh stream upload",
        "mixed: 64B beside 1MiB",
        "raw mixed: 64B beside 1MiB",
        "median ratios over 2 rounds",
    ] {
        assert!(text.contains(want), "missing {want:?} in\n{text}");
    }
    let doc: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("json written"))
            .expect("valid json");
    let rounds = doc["rounds"].as_array().expect("rounds");
    assert_eq!(rounds.len(), 2);
    for round in rounds {
        let runs = round["runs"].as_array().expect("runs");
        // payloads × concurrencies × 4 modes, stream upload and bulk, and
        // the idle and busy mixed runs of quicmesh and raw quinn.
        assert_eq!(runs.len(), 2 * 2 * 4 + 2 + 2 + 2);
        assert!(runs.iter().all(|r| r["errors"] == 0), "{runs:?}");
        assert!(
            runs.iter()
                .filter(|r| r["label"] == "quicmesh call")
                .all(|r| r["calls"].as_u64() > Some(0))
        );
    }
    // A median for every ratio the rounds report (those this matrix has).
    let keys = |v: &serde_json::Value| -> Vec<String> {
        let pairs = v.as_array().expect("ratios");
        pairs.iter().map(|p| p[0].to_string()).collect()
    };
    let medians = keys(&doc["median_ratios"]);
    assert!(medians.len() >= 3, "{medians:?}");
    assert_eq!(medians, keys(&rounds[0]["ratios"]));
}

#[tokio::test]
async fn peer_process_killed_mid_call_is_node_down() {
    let mut server = Command::new(EXE)
        .args([
            "bench",
            "serve",
            "--name",
            "bench@127.0.0.1:0",
            "--cookie",
            COOKIE,
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn bench serve");
    let mut lines = BufReader::new(server.stdout.take().expect("stdout")).lines();
    let first = tokio::time::timeout(WAIT, lines.next_line())
        .await
        .expect("started")
        .expect("read")
        .expect("line");
    let addr: quicmesh::NodeAddr = first
        .strip_prefix("listening ")
        .expect("address")
        .parse()
        .expect("addr");
    let a = local_node("caller").await;
    a.connect(&addr).await.expect("connect");

    // A streaming call into the server process, in flight when it dies.
    let mut call = a
        .call_stream::<_, serde_bytes::ByteBuf, u64>(&addr.name, "bench.sink", &())
        .await
        .expect("open");
    let chunk = serde_bytes::ByteBuf::from(vec![0u8; 256 * 1024]);
    for _ in 0..8 {
        call.send(&chunk).await.expect("send while alive");
    }
    server.start_kill().expect("SIGKILL");
    let err = tokio::time::timeout(WAIT, async {
        loop {
            if let Err(e) = call.send(&chunk).await {
                return e;
            }
        }
    })
    .await
    .expect("the call fails once the peer is gone");
    assert!(matches!(err, quicmesh::RpcError::NodeDown { .. }), "{err}");
    assert!(err.may_have_run());
    a.shutdown().await;
}

/// Failure detection of the in-process nodes in the kill test.
const DETECTION: Duration = Duration::from_secs(1);

/// Polls `cond` every 5 ms until it holds; how long it took.
async fn until(what: &str, mut cond: impl FnMut() -> bool) -> Duration {
    let started = Instant::now();
    while !cond() {
        assert!(started.elapsed() < WAIT, "not within {WAIT:?}: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_process_loses_its_name_lock_and_leadership_to_the_others() {
    let fast = |short: &str| {
        Node::builder()
            .name(format!("{short}@127.0.0.1"))
            .listen("127.0.0.1:0".parse().expect("addr"))
            .cookie(COOKIE)
            .heartbeat(Duration::from_millis(200), DETECTION)
            .start()
    };
    let a = fast("ka").await.expect("a");
    let b = fast("kb").await.expect("b");
    b.connect(&a.addr()).await.expect("connect");
    let mut p = NodeProcess::start(
        &[
            "--name",
            "kp@127.0.0.1:0",
            "--connect",
            &a.addr().to_string(),
            "--wait-for",
            "2",
            "--register",
            "cache_worker",
            "--lock",
            "res",
            "--campaign",
            "boss",
        ],
        &[("QUICMESH_COOKIE", COOKIE)],
    )
    .await;
    let got = p
        .expect_starts(&["registered cache_worker", "locked res ", "leading boss "])
        .await;
    let held_token = quicmesh::Token::from_u128(got[1].parse().expect("token"));
    let p_term = quicmesh::Token::from_u128(got[2].parse().expect("term"));
    let owner_is_p = |n: &Node| {
        n.registry()
            .whereis("cache_worker")
            .is_some_and(|r| r.owner == p.name)
    };
    until("everyone knows p's name and leadership", || {
        [&a, &b]
            .iter()
            .all(|n| owner_is_p(n) && n.election("boss").leader().leader.as_ref() == Some(&p.name))
    })
    .await;

    // a waits for the lock and b campaigns while p holds both.
    let (a2, b2) = (a.clone(), b.clone());
    let lock = tokio::spawn(async move {
        let guard = a2
            .lock_with("res", &quicmesh::LockOptions::default().timeout(WAIT))
            .await;
        (guard, Instant::now())
    });
    let campaign = tokio::spawn(async move {
        let leadership = b2.election("boss").campaign().await;
        (leadership, Instant::now())
    });
    let killed = Instant::now();
    p.signal("-KILL");
    let name_gone = until("p's name gone everywhere", || {
        [&a, &b]
            .iter()
            .all(|n| n.registry().whereis("cache_worker").is_none())
    })
    .await;
    let (guard, locked_at) = lock.await.expect("lock task");
    let guard = guard.expect("a takes the lock");
    let (leadership, led_at) = campaign.await.expect("campaign task");
    let leadership = leadership.expect("b leads");
    println!(
        "after SIGKILL: name gone in {:?}, lock taken in {:?}, new leader in {:?} (failure detection {DETECTION:?})",
        name_gone,
        locked_at - killed,
        led_at - killed
    );
    // Detection is at most the timeout plus one heartbeat interval.
    let detected = DETECTION + Duration::from_millis(250);
    assert!(name_gone <= detected, "{name_gone:?}");
    assert!(locked_at - killed <= detected + Duration::from_secs(1));
    assert!(led_at - killed <= detected + Duration::from_secs(1));
    assert!(guard.token() > held_token, "the fencing token grew");
    assert!(leadership.term() > p_term, "the term grew");
    drop(guard);
    leadership.resign().await;
    a.shutdown().await;
    b.shutdown().await;
}

#[test]
fn operator_mistakes_get_a_clear_answer_and_no_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("utf-8 path");
    // A certificate that is expired when issued is refused.
    for cmd in [
        &["certs", "ca", "--out", d, "--days", "0"][..],
        &["certs", "issue", "--name", "a@h", "--ca", d, "--days", "0"][..],
    ] {
        let out = quicmesh(cmd);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{cmd:?} succeeded");
        assert!(
            err.contains("--days") && err.contains("0"),
            "{cmd:?}: {err}"
        );
    }
    let out = quicmesh(&["certs", "ca", "--out", d]);
    assert!(out.status.success());

    // A key file others can read is refused, as a cookie file is, and the
    // error says what to do, once.
    let key = dir.path().join("ca.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).expect("chmod");
    let out = quicmesh(&["certs", "issue", "--name", "a@h", "--ca", d]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("has mode 644") && err.contains("chmod 600"),
        "{err}"
    );
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let out = quicmesh(&[
        "node",
        "--name",
        "a@127.0.0.1:0",
        "--ca",
        &format!("{d}/missing.pem"),
        "--cert",
        &format!("{d}/a.pem"),
        "--key",
        &format!("{d}/a.key"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    let line = err.lines().last().expect("an error line");
    assert!(
        line.contains("CA certificate") && line.contains("missing.pem"),
        "{err}"
    );
    assert_eq!(
        line.matches("No such file").count(),
        1,
        "the cause is said once: {line}"
    );

    // The keys of two nodes mixed up: both files are named.
    for n in ["a@127.0.0.1", "b@127.0.0.1"] {
        assert!(
            quicmesh(&["certs", "issue", "--name", n, "--ca", d])
                .status
                .success()
        );
    }
    let out = quicmesh(&[
        "node",
        "--name",
        "a@127.0.0.1:0",
        "--ca",
        &format!("{d}/ca.pem"),
        "--cert",
        &format!("{d}/a@127.0.0.1.pem"),
        "--key",
        &format!("{d}/b@127.0.0.1.key"),
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("b@127.0.0.1.key") && err.contains("a@127.0.0.1.pem"),
        "{err}"
    );

    // `certs show | head`: the reader is gone before the first line (a
    // socket pair with one end closed fails writes as a closed pipe does).
    let (reader, writer) = std::os::unix::net::UnixStream::pair().expect("socket pair");
    drop(reader);
    let out = std::process::Command::new(EXE)
        .args(["certs", "show", &format!("{d}/ca.pem")])
        .stdout(std::os::fd::OwnedFd::from(writer))
        .stderr(Stdio::piped())
        .output()
        .expect("run quicmesh");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("panicked"), "{err}");
    assert!(out.status.success(), "{}: {err}", out.status);
}

#[tokio::test]
async fn logs_have_no_colour_off_a_terminal_and_cookie_on_the_command_line_is_warned_of() {
    let seen = logs_until_started(&["--name", "plain@127.0.0.1:0", "--cookie", COOKIE], &[]).await;
    let all = seen.join("\n");
    assert!(!all.contains('\u{1b}'), "colour codes on a pipe:\n{all}");
    assert!(
        all.contains("--cookie puts the cookie in the process list"),
        "no warning about --cookie:\n{all}"
    );
}

/// Starts `quicmesh node ARGS` with `env` (and no `QUICMESH_COOKIE` but
/// what `env` sets), logging at info; returns its log lines up to "node
/// started", then kills it.
async fn logs_until_started(args: &[&str], env: &[(&str, &str)]) -> Vec<String> {
    let mut cmd = Command::new(EXE);
    cmd.arg("node")
        .args(args)
        .env("RUST_LOG", "info")
        .env_remove("QUICMESH_COOKIE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn quicmesh node");
    let mut stderr = BufReader::new(child.stderr.take().expect("stderr")).lines();
    let mut seen = Vec::new();
    while !seen.iter().any(|l: &String| l.contains("node started")) {
        let line = tokio::time::timeout(WAIT, stderr.next_line())
            .await
            .expect("a log line")
            .expect("read")
            .expect("stderr open");
        seen.push(line);
    }
    child.start_kill().expect("kill");
    seen
}

/// The fingerprint of the CA a `quicmesh node ARGS` with `env` trusts, from
/// its "node started" line.
async fn started_with_ca(args: &[&str], env: &[(&str, &str)]) -> String {
    let lines = logs_until_started(args, env).await;
    let started = lines.last().expect("the node started line");
    let ca = started.split("ca=").nth(1).expect("ca= in the line");
    ca.split_whitespace()
        .next()
        .expect("a fingerprint")
        .to_owned()
}

#[tokio::test]
async fn a_named_cookie_file_must_exist_and_beats_the_environment() {
    let dir = tempfile::tempdir().expect("tempdir");
    let typo = dir.path().join("typo");
    let typo = typo.to_str().expect("utf-8 path");
    let out = quicmesh(&["node", "--name", "a@127.0.0.1:0", "--cookie-file", typo]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("does not exist"), "{err}");
    assert!(!Path::new(typo).exists(), "no cookie made at a named path");

    let file = dir.path().join("cookie");
    std::fs::write(&file, "the file's cookie").expect("write");
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o600)).expect("chmod");
    let file = file.to_str().expect("utf-8 path");
    let env = [("QUICMESH_COOKIE", "the environment's cookie")];
    let name = ["--name", "a@127.0.0.1:0"];
    let from_file = started_with_ca(&[&name[..], &["--cookie-file", file]].concat(), &env).await;
    let from_env = started_with_ca(&name, &env).await;
    let explicit = started_with_ca(
        &[&name[..], &["--cookie", "the file's cookie"]].concat(),
        &[],
    )
    .await;
    assert_eq!(
        from_file, explicit,
        "--cookie-file wins over QUICMESH_COOKIE"
    );
    assert_ne!(from_file, from_env);
}
