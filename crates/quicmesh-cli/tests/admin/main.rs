//! The admin commands (`quicmesh status`, `members`, `ping`, `whereis`,
//! `names`, `leaders`, `locks`) against clusters of real `quicmesh node`
//! processes, in cookie mode and in certificate mode: each table and JSON
//! document checked against what the nodes did, again after a node is
//! killed, and the errors for a wrong identity and an unreachable node.

#[path = "../support/mod.rs"]
mod support;

use std::time::{Duration, Instant};

use serde_json::Value;
use support::{COOKIE, NodeProcess, WAIT, quicmesh, quicmesh_with};

/// An admin command's result: exit status, stdout, stderr.
struct Answer {
    ok: bool,
    stdout: String,
    stderr: String,
}

impl Answer {
    fn json(&self) -> Value {
        assert!(self.ok, "failed: {}", self.stderr);
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.stdout))
    }

    fn table(&self) -> &str {
        assert!(self.ok, "failed: {}", self.stderr);
        &self.stdout
    }
}

/// How one cluster is joined: the identity flags or environment.
struct Identity {
    flags: Vec<String>,
    env: Vec<(&'static str, String)>,
}

impl Identity {
    fn cookie(cookie: &str) -> Self {
        Self {
            flags: Vec::new(),
            env: vec![("QUICMESH_COOKIE", cookie.to_owned())],
        }
    }

    /// Runs `quicmesh ARGS --connect NODE` with this identity.
    async fn ask(&self, args: &[&str], node: &str) -> Answer {
        let mut all: Vec<String> = args.iter().map(|s| (*s).to_owned()).collect();
        all.extend(self.flags.iter().cloned());
        all.extend(["--connect".to_owned(), node.to_owned()]);
        let env = self.env.clone();
        let out = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = all.iter().map(String::as_str).collect();
            let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
            quicmesh_with(&args, &env)
        })
        .await
        .expect("command ran");
        Answer {
            ok: out.status.success(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Asks until `cond` holds of the JSON answer (or the deadline
    /// passes); the answer it held of.
    async fn ask_until(
        &self,
        args: &[&str],
        node: &str,
        what: &str,
        cond: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = Instant::now() + WAIT;
        loop {
            let answer = self.ask(args, node).await.json();
            if cond(&answer) {
                return answer;
            }
            assert!(Instant::now() < deadline, "{what}: last answer {answer:#}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// The nodes of a `members --json` answer with their states.
fn states(members: &Value) -> Vec<(String, String)> {
    members["members"]
        .as_array()
        .expect("members")
        .iter()
        .map(|m| {
            (
                m["node"].as_str().expect("node").to_owned(),
                m["state"].as_str().expect("state").to_owned(),
            )
        })
        .collect()
}

fn up(nodes: &[&str]) -> Vec<(String, String)> {
    nodes
        .iter()
        .map(|n| ((*n).to_owned(), "up".to_owned()))
        .collect()
}

/// The three-node cluster both modes run: `a`; `b` registers `svc` and
/// holds the lock `res`; `c` leads the election `boss`. With the printed
/// token of `res` and term of `boss`.
struct Cluster {
    a: NodeProcess,
    b: NodeProcess,
    c: NodeProcess,
    token: String,
    term: String,
}

impl Cluster {
    async fn start(identity_args: impl Fn(&str) -> Vec<String>, env: &[(&str, &str)]) -> Self {
        let args = |short: &str, extra: &[&str], connect: Option<&str>| {
            let mut v = vec!["--name".to_owned(), format!("{short}@127.0.0.1:0")];
            v.extend(identity_args(short));
            if let Some(c) = connect {
                v.extend(["--connect".to_owned(), c.to_owned()]);
            }
            v.extend(extra.iter().map(|s| (*s).to_owned()));
            v
        };
        let start = |v: Vec<String>| async move {
            let refs: Vec<&str> = v.iter().map(String::as_str).collect();
            NodeProcess::start(&refs, env).await
        };
        let a = start(args("a", &[], None)).await;
        let mut b = start(args(
            "b",
            &["--register", "svc", "--lock", "res"],
            Some(&a.addr.to_string()),
        ))
        .await;
        let mut c = start(args(
            "c",
            &["--wait-for", "2", "--campaign", "boss"],
            Some(&a.addr.to_string()),
        ))
        .await;
        let got = b.expect_starts(&["registered svc", "locked res "]).await;
        let token = got[1].clone();
        let term = c.expect_starts(&["leading boss "]).await.remove(0);
        Self {
            a,
            b,
            c,
            token,
            term,
        }
    }

    fn names(&self) -> [String; 3] {
        [&self.a, &self.b, &self.c].map(|p| p.name.to_string())
    }
}

/// Every command against a running cluster, then after `c` is killed.
async fn check_every_command(cluster: Cluster, id: &Identity) {
    let [a, b, c] = cluster.names();
    let (a_addr, b_addr) = (cluster.a.addr.to_string(), cluster.b.addr.to_string());

    // members: a's view, every node up (the admin node itself left out).
    let members = id
        .ask_until(&["members", "--json"], &a_addr, "all three up", |m| {
            states(m) == up(&[&a, &b, &c])
        })
        .await;
    assert_eq!(members["asked"], a.as_str());
    let table = id.ask(&["members"], &b_addr).await;
    let table = table.table();
    assert!(table.starts_with("NODE "), "{table}");
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&b) && l.contains("up (asked)")),
        "{table}"
    );
    assert!(table.trim_end().ends_with("(3 nodes)"), "{table}");

    // status: a's own report.
    let status = id.ask(&["status", "--json"], &a_addr).await.json();
    assert_eq!(status["node"], a.as_str());
    assert_eq!(status["hidden"], false);
    assert_eq!(status["names"], 1);
    assert_eq!(status["locks"], 2, "res and the election's lock");
    assert_eq!(status["elections"], 1);
    assert_eq!(
        status["counters"]["auth_failures"], 1,
        "the refused identity before, counted"
    );
    let visible: Vec<&str> = status["peers"]
        .as_array()
        .expect("peers")
        .iter()
        .filter(|p| p["hidden"] == false)
        .map(|p| p["node"].as_str().expect("node"))
        .collect();
    assert_eq!(visible, [b.as_str(), c.as_str()]);
    let table = id.ask(&["status"], &a_addr).await;
    assert!(
        table.table().contains(&format!("node         {a}\n")),
        "{}",
        table.stdout
    );
    assert!(
        table
            .table()
            .contains("peers        2 up, 0 connecting, 0 down"),
        "{}",
        table.stdout
    );

    // names and whereis: b's registration, seen from a.
    let names = id.ask(&["names", "--json"], &a_addr).await.json();
    assert_eq!(names["total"], 1);
    assert_eq!(names["rows"][0]["name"], "svc");
    assert_eq!(names["rows"][0]["node"], b.as_str());
    assert_eq!(names["rows"][0]["service"], "svc");
    let where_ = id.ask(&["whereis", "svc"], &a_addr).await;
    assert_eq!(where_.table(), format!("svc {b} (service svc)\n"));
    let missing = id
        .ask(&["whereis", "nothing-here", "--json"], &a_addr)
        .await;
    assert!(!missing.ok, "an unknown name exits non-zero");
    assert_eq!(missing.stdout.trim(), "null");
    assert!(
        missing.stderr.contains("nothing-here is not registered"),
        "{}",
        missing.stderr
    );

    // leaders and locks: the printed term and token.
    let leaders = id.ask(&["leaders", "--json"], &a_addr).await.json();
    assert_eq!(leaders["rows"][0]["election"], "boss");
    assert_eq!(leaders["rows"][0]["leader"], c.as_str());
    assert_eq!(leaders["rows"][0]["term"], cluster.term.as_str());
    let locks = id.ask(&["locks", "--json"], &a_addr).await.json();
    let rows = locks["rows"].as_array().expect("rows");
    let lock_of = |resource: &str| rows.iter().find(|r| r["resource"] == resource).cloned();
    let res = lock_of("res").expect("res is held");
    assert_eq!(res["holder"], b.as_str());
    assert_eq!(res["token"], cluster.token.as_str());
    let election = lock_of("quicmesh.election/boss").expect("the election's lock");
    assert_eq!(election["holder"], c.as_str());
    let table = id.ask(&["locks", "--limit", "1"], &a_addr).await;
    assert!(
        table.table().contains("(1 of 2 locks; --limit shows more)"),
        "{}",
        table.stdout
    );

    // ping: the node itself, directly.
    let pings = id
        .ask(
            &[
                "ping",
                &cluster.c.addr.to_string(),
                "--count",
                "2",
                "--json",
            ],
            &a_addr,
        )
        .await
        .json();
    assert_eq!(pings["node"], c.as_str());
    assert_eq!(pings["rtts_us"].as_array().expect("rtts").len(), 2);

    // c killed: a sees it down, its leadership and election lock gone.
    let c_addr = cluster.c.addr.to_string();
    cluster.c.signal("-KILL");
    let members = id
        .ask_until(&["members", "--json"], &a_addr, "c down", |m| {
            states(m).contains(&(c.clone(), "down".to_owned()))
        })
        .await;
    let c_row = members["members"]
        .as_array()
        .expect("members")
        .iter()
        .find(|m| m["node"] == c.as_str())
        .expect("c listed")
        .clone();
    assert_eq!(c_row["last_down"]["reason"], "heartbeat timeout");
    let leaders = id.ask(&["leaders", "--json"], &a_addr).await.json();
    assert_eq!(leaders["rows"][0]["leader"], Value::Null);
    let locks = id.ask(&["locks", "--json"], &a_addr).await.json();
    assert_eq!(locks["total"], 1, "only b's lock is left: {locks:#}");
    let status = id.ask(&["status"], &a_addr).await;
    assert!(
        status
            .table()
            .contains("peers        1 up, 0 connecting, 1 down"),
        "{}",
        status.stdout
    );
    // Pinging the dead node names it and says it is unreachable.
    let ping = id.ask(&["ping", &c_addr, "--timeout", "2s"], &a_addr).await;
    assert!(!ping.ok);
    assert!(
        ping.stderr.contains(&format!("could not reach {c_addr}")),
        "{}",
        ping.stderr
    );
    drop(cluster.a);
    drop(cluster.b);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_report_a_cookie_cluster_as_it_is() {
    let env = [("QUICMESH_COOKIE", COOKIE)];
    let cluster = Cluster::start(|_| Vec::new(), &env).await;
    let a_addr = cluster.a.addr.to_string();
    let id = Identity::cookie(COOKIE);

    // Another cookie: refused by name, whichever side notices.
    let wrong = Identity::cookie("another cookie")
        .ask(&["status"], &a_addr)
        .await;
    assert!(!wrong.ok);
    assert!(
        wrong
            .stderr
            .contains("authentication with a@127.0.0.1 failed")
            && wrong.stderr.contains("another cookie or CA"),
        "{}",
        wrong.stderr
    );
    // Nobody there: named as unreachable, within the timeout.
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("a free port");
    let nobody = format!("x@127.0.0.1:{}", socket.local_addr().expect("addr").port());
    drop(socket);
    let started = Instant::now();
    let gone = id.ask(&["members", "--timeout", "1s"], &nobody).await;
    assert!(!gone.ok);
    assert!(
        gone.stderr.contains(&format!("could not reach {nobody}"))
            && gone.stderr.contains("is it running and reachable?"),
        "{}",
        gone.stderr
    );
    assert!(started.elapsed() < WAIT, "gave up in time");

    check_every_command(cluster, &id).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_commands_report_a_certificate_cluster_with_an_operator_certificate() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path().to_str().expect("path").to_owned();
    let ok = |args: &[&str]| assert!(quicmesh(args).status.success(), "{args:?}");
    ok(&["certs", "ca", "--out", &d]);
    for n in ["a@127.0.0.1", "b@127.0.0.1", "c@127.0.0.1", "ops@127.0.0.1"] {
        ok(&["certs", "issue", "--name", n, "--ca", &d]);
    }
    let files = |short: &str| {
        vec![
            "--ca".to_owned(),
            format!("{d}/ca.pem"),
            "--cert".to_owned(),
            format!("{d}/{short}@127.0.0.1.pem"),
            "--key".to_owned(),
            format!("{d}/{short}@127.0.0.1.key"),
        ]
    };
    let cluster = Cluster::start(files, &[]).await;
    let a_addr = cluster.a.addr.to_string();
    // The operator's name comes from its certificate.
    let id = Identity {
        flags: files("ops"),
        env: Vec::new(),
    };

    // A certificate of another CA is refused by name.
    let other = tempfile::tempdir().expect("tempdir");
    let o = other.path().to_str().expect("path").to_owned();
    ok(&["certs", "ca", "--out", &o]);
    ok(&["certs", "issue", "--name", "ops@127.0.0.1", "--ca", &o]);
    let stranger = Identity {
        flags: vec![
            "--ca".to_owned(),
            format!("{o}/ca.pem"),
            "--cert".to_owned(),
            format!("{o}/ops@127.0.0.1.pem"),
            "--key".to_owned(),
            format!("{o}/ops@127.0.0.1.key"),
        ],
        env: Vec::new(),
    };
    let refused = stranger.ask(&["status"], &a_addr).await;
    assert!(!refused.ok);
    assert!(
        refused
            .stderr
            .contains("authentication with a@127.0.0.1 failed"),
        "{}",
        refused.stderr
    );

    check_every_command(cluster, &id).await;
}
