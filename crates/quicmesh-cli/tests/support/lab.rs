//! The sealed lab of the multi-host tests: each test re-runs itself
//! under `unshare --net --mount`, so its bridge, hosts (network
//! namespaces joined by veth pairs) and every packet live in a network
//! namespace with no link to the outside, and vanish when the test ends.

use std::io::Write as _;

/// Set in the copy of the test that runs inside the lab.
const IN_LAB: &str = "QUICMESH_TEST_IN_LAB";

/// Runs the test body inside a fresh sealed lab: `true` in the copy that
/// is inside (go on), `false` in the outer one (done: the inner copy ran,
/// or the test was skipped).
pub fn in_lab(test: &str) -> bool {
    if std::env::var_os(IN_LAB).is_some() {
        return true;
    }
    let missing: Vec<&str> = ["unshare", "ip", "nft"]
        .into_iter()
        .filter(|tool| !on_path(tool))
        .collect();
    let why = if !is_root() {
        Some("needs root to create network namespaces".to_owned())
    } else if !missing.is_empty() {
        Some(format!(
            "needs {} (util-linux, iproute2, nftables)",
            missing.join(", ")
        ))
    } else {
        None
    };
    if let Some(why) = why {
        assert!(
            std::env::var("CI").as_deref() != Ok("true"),
            "{test}: {why}; under CI=true this cannot be skipped"
        );
        // Straight to stderr: the test harness would hide `eprintln!`.
        let _ = writeln!(std::io::stderr(), "{test}: SKIPPED: {why}");
        return false;
    }
    let me = std::env::current_exe().expect("test binary path");
    let status = std::process::Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(me)
        // An ignored test run with --ignored runs inside too.
        .args([
            test,
            "--exact",
            "--nocapture",
            "--test-threads=1",
            "--include-ignored",
        ])
        .env(IN_LAB, "1")
        .status()
        .expect("run unshare");
    assert!(status.success(), "{test} failed inside the lab");
    false
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|ids| ids.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn on_path(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin".into(), "/sbin".into()])
        .any(|dir| dir.join(tool).is_file())
}

/// Runs a shell command of the lab's set-up; panics with its output if it
/// fails.
pub fn sh(cmd: &str) -> String {
    let out = std::process::Command::new("sh")
        .args(["-c", cmd])
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{cmd}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Hosts h1..hN (10.77.0.i/24) on one bridge, inside the lab's own network
/// namespace (we are already in it: `in_lab` put us there).
pub fn make_hosts(n: usize) {
    sh("mount --make-rprivate / && mkdir -p /run/netns && mount -t tmpfs tmpfs /run/netns");
    sh("ip link set lo up");
    sh(
        "ip link add lbr0 type bridge stp_state 0 forward_delay 0 mcast_snooping 0 && ip link set lbr0 up",
    );
    for i in 1..=n {
        sh(&format!(
            "ip netns add h{i} && \
             ip link add h{i}-br type veth peer name eth0 netns h{i} && \
             ip link set h{i}-br master lbr0 up && \
             ip -n h{i} link set lo up && \
             ip -n h{i} addr add 10.77.0.{i}/24 dev eth0 && \
             ip -n h{i} link set eth0 up && \
             ip -n h{i} route add 224.0.0.0/4 dev eth0"
        ));
    }
}
