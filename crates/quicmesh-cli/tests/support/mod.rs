//! Running `quicmesh` processes from tests: nodes killed on drop, their
//! stdout read line by line with deadlines, one-shot commands.

#![allow(dead_code, unreachable_pub)] // Each test target uses part of this.

pub mod lab;

use std::process::Stdio;
use std::time::Duration;

use quicmesh::NodeName;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdout, Command};

pub const EXE: &str = env!("CARGO_BIN_EXE_quicmesh");
pub const WAIT: Duration = Duration::from_secs(20);
pub const COOKIE: &str = "process-test-cookie";

/// A running `quicmesh node` child, killed when dropped.
pub struct NodeProcess {
    pub child: Child,
    pub stdout: Lines<BufReader<ChildStdout>>,
    pub name: NodeName,
    /// Where it listens, as it printed.
    pub addr: quicmesh::NodeAddr,
}

impl NodeProcess {
    /// Starts `quicmesh node ARGS` and waits for its `listening ADDR` line.
    pub async fn start(args: &[&str], env: &[(&str, &str)]) -> Self {
        let mut cmd = Command::new(EXE);
        cmd.arg("node")
            .args(args)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("spawn quicmesh node");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let first = tokio::time::timeout(WAIT, stdout.next_line())
            .await
            .expect("node printed its address")
            .expect("read")
            .expect("a line");
        let addr = first
            .strip_prefix("listening ")
            .expect("first line is `listening ADDR`");
        let addr = addr.parse::<quicmesh::NodeAddr>().expect("an address");
        Self {
            child,
            stdout,
            name: addr.name.clone(),
            addr,
        }
    }

    /// Waits for an event line such as `up a@127.0.0.1`.
    pub async fn expect_line(&mut self, want: &str) {
        self.expect_lines(&[want]).await;
    }

    /// Waits until every line of `want` has been printed, in any order.
    pub async fn expect_lines(&mut self, want: &[&str]) {
        let mut missing: Vec<&str> = want.to_vec();
        let wait = async {
            while let Some(line) = self.stdout.next_line().await.expect("read") {
                missing.retain(|w| *w != line);
                if missing.is_empty() {
                    return;
                }
            }
            panic!("process ended before printing {missing:?}");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("not all of {want:?} printed"));
    }

    /// Waits until, for every entry of `prefixes`, a line starting with
    /// it has been printed, in any order; the rest of each such line.
    pub async fn expect_starts(&mut self, prefixes: &[&str]) -> Vec<String> {
        let mut found: Vec<Option<String>> = vec![None; prefixes.len()];
        let wait = async {
            while let Some(line) = self.stdout.next_line().await.expect("read") {
                for (prefix, slot) in prefixes.iter().zip(found.iter_mut()) {
                    if slot.is_none()
                        && let Some(rest) = line.strip_prefix(prefix)
                    {
                        *slot = Some(rest.trim().to_owned());
                    }
                }
                if found.iter().all(Option::is_some) {
                    return;
                }
            }
            panic!("process ended before printing {prefixes:?}");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("not all of {prefixes:?} printed"));
        found.into_iter().flatten().collect()
    }

    /// Sends `sig` (`-KILL`, `-TERM`, `-STOP` …) with `kill`.
    pub fn signal(&self, sig: &str) {
        let pid = self.child.id().expect("running").to_string();
        let ok = std::process::Command::new("kill")
            .args([sig, &pid])
            .status()
            .expect("kill");
        assert!(ok.success());
    }
}

/// Runs `quicmesh ARGS` to the end.
pub fn quicmesh(args: &[&str]) -> std::process::Output {
    std::process::Command::new(EXE)
        .args(args)
        .output()
        .expect("run quicmesh")
}

/// Runs `quicmesh ARGS` with `env` set to the end.
pub fn quicmesh_with(args: &[&str], env: &[(&str, &str)]) -> std::process::Output {
    let mut cmd = std::process::Command::new(EXE);
    cmd.args(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run quicmesh")
}
