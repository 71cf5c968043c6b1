//! `quicmesh node --metrics`: real node processes scraped over HTTP, the
//! text checked by `promtool check metrics`, and a real Prometheus server
//! scraping a 3-node cluster (both from the Debian package `prometheus`).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::net::TcpStream;
use tokio::process::{Child, ChildStdout, Command};

const EXE: &str = env!("CARGO_BIN_EXE_quicmesh");
const WAIT: Duration = Duration::from_secs(30);
const COOKIE: &str = "metrics-test-cookie";

/// A `quicmesh node --metrics 127.0.0.1:0` child, killed when dropped.
struct Scraped {
    child: Child,
    stdout: Lines<BufReader<ChildStdout>>,
    /// `name@127.0.0.1:port`, from its first line.
    addr: String,
    /// Where it serves `/metrics`.
    metrics: SocketAddr,
}

impl Scraped {
    async fn start(short: &str, cookie: &str, connect: Option<&str>) -> Self {
        let mut cmd = Command::new(EXE);
        cmd.args(["node", "--name", &format!("{short}@127.0.0.1:0")])
            .args(["--metrics", "127.0.0.1:0"])
            .args(connect.map(|c| ["--connect", c]).into_iter().flatten())
            .env("QUICMESH_COOKIE", cookie)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().expect("spawn quicmesh node");
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut node = Self {
            child,
            stdout,
            addr: String::new(),
            metrics: SocketAddr::from(([0, 0, 0, 0], 0)),
        };
        node.addr = node.line_after("listening ").await;
        let url = node.line_after("metrics on ").await;
        let host = url
            .strip_prefix("http://")
            .and_then(|u| u.strip_suffix("/metrics"));
        node.metrics = host
            .and_then(|h| h.parse().ok())
            .expect("metrics on http://ADDR/metrics");
        node
    }

    /// Waits for the next line starting with `prefix`; the rest of it.
    async fn line_after(&mut self, prefix: &str) -> String {
        let wait = async {
            while let Some(line) = self.stdout.next_line().await.expect("read") {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return rest.to_owned();
                }
            }
            panic!("process ended before printing `{prefix}…`");
        };
        tokio::time::timeout(WAIT, wait)
            .await
            .unwrap_or_else(|_| panic!("no line `{prefix}…` within {WAIT:?}"))
    }

    async fn scrape(&self) -> String {
        let (status, body) = http_get(self.metrics, "/metrics").await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Scrapes until `cond` holds for the text; the text.
    async fn scrape_until(&self, what: &str, cond: impl Fn(&str) -> bool) -> String {
        let started = Instant::now();
        loop {
            let text = self.scrape().await;
            if cond(&text) {
                return text;
            }
            assert!(
                started.elapsed() < WAIT,
                "not within {WAIT:?}: {what}\n{text}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// A GET over HTTP/1.0 (the server closes after the response): status and
/// body.
async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let exchange = async {
        let mut s = TcpStream::connect(addr).await?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n");
        s.write_all(request.as_bytes()).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        Ok::<_, std::io::Error>(raw)
    };
    let raw = tokio::time::timeout(WAIT, exchange)
        .await
        .unwrap_or_else(|_| panic!("GET {path} from {addr}: no answer"))
        .unwrap_or_else(|e| panic!("GET {path} from {addr}: {e}"));
    let text = String::from_utf8(raw).expect("a UTF-8 answer");
    let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
    let status = head.split(' ').nth(1).and_then(|s| s.parse().ok());
    (status.expect("a status line"), body.to_owned())
}

/// The value of the series `series` (name and labels exactly as printed).
fn value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter_map(|l| l.strip_prefix(series)?.strip_prefix(' '))
        .find_map(|v| v.trim().parse().ok())
}

/// Sum of every series of the family `name`.
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && l[name.len()..].starts_with(['{', ' ']))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// The Debian `prometheus` package's binary `name`, or `None` (the test
/// skips, except under CI, where a missing tool is a failure).
fn tool(name: &str) -> Option<PathBuf> {
    let path = Path::new("/usr/bin").join(name);
    if path.exists() {
        return Some(path);
    }
    let why = format!("{name} is not installed (Debian package prometheus)");
    assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
    use std::io::Write as _;
    // Straight to stderr: the test harness would hide `eprintln!`.
    let _ = writeln!(std::io::stderr(), "skipping: {why}");
    None
}

/// `promtool check metrics` on `text`: its complaints, if any.
async fn promtool_check(promtool: &Path, text: &str) {
    let mut child = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn promtool");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin
        .write_all(text.as_bytes())
        .await
        .expect("write to promtool");
    drop(stdin);
    let out = tokio::time::timeout(WAIT, child.wait_with_output())
        .await
        .expect("promtool finished")
        .expect("promtool ran");
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{said}\n{text}"
    );
    assert!(
        said.trim().is_empty(),
        "promtool check metrics complained:\n{said}\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scraped_metrics_pass_promtool_and_count_refusals_and_downs() {
    let Some(promtool) = tool("promtool") else {
        return;
    };
    let a = Scraped::start("a", COOKIE, None).await;
    let mut b = Scraped::start("b", COOKIE, Some(&a.addr)).await;
    b.line_after("up a@127.0.0.1").await;
    let text = a
        .scrape_until("b up", |t| {
            value(t, "quicmesh_peers{state=\"up\"}") == Some(1.0)
        })
        .await;
    promtool_check(&promtool, &text).await;
    assert_eq!(value(&text, "quicmesh_node_up_total"), Some(1.0), "{text}");
    assert_eq!(
        value(&text, "quicmesh_node_info{node=\"a@127.0.0.1\"}"),
        Some(1.0)
    );
    assert!(
        value(&text, "quicmesh_heartbeat_rtt_seconds_count").is_some(),
        "{text}"
    );
    assert_eq!(total(&text, "quicmesh_auth_failures_total"), 0.0, "{text}");

    // A node with another cookie is refused, and counted.
    let mut c = Scraped::start("c", "another cookie", Some(&a.addr)).await;
    let text = a
        .scrape_until("a refused identity counted", |t| {
            total(t, "quicmesh_auth_failures_total") >= 1.0
                && value(t, "quicmesh_handshakes_total{outcome=\"auth_failed\"}") >= Some(1.0)
        })
        .await;
    promtool_check(&promtool, &text).await;
    let _ = c.child.start_kill();

    // A killed node is a node down, by heartbeat timeout.
    b.child.start_kill().expect("SIGKILL b");
    let text = a
        .scrape_until("b down", |t| {
            value(t, "quicmesh_node_down_total{reason=\"heartbeat_timeout\"}") == Some(1.0)
        })
        .await;
    assert_eq!(
        value(&text, "quicmesh_peers{state=\"up\"}"),
        Some(0.0),
        "{text}"
    );
    assert!(
        value(&text, "quicmesh_received_bytes_total") > Some(0.0),
        "{text}"
    );
    promtool_check(&promtool, &text).await;

    // Only GET /metrics is served.
    assert_eq!(http_get(a.metrics, "/").await.0, 404);
    assert_eq!(http_get(a.metrics, "/metrics/x").await.0, 404);
    // A metrics address in use is a clear error naming it.
    let taken = a.metrics.to_string();
    let out = Command::new(EXE)
        .args(["node", "--name", "d@127.0.0.1:0", "--metrics", &taken])
        .env("QUICMESH_COOKIE", COOKIE)
        .stdin(Stdio::null())
        .output();
    let out = tokio::time::timeout(WAIT, out)
        .await
        .expect("exits")
        .expect("runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(&format!("cannot serve metrics on {taken}")),
        "{err}"
    );
}

/// A free TCP port of 127.0.0.1 (free when asked; nothing else here binds
/// ports by number).
fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A running `prometheus`, killed when dropped.
struct Prometheus {
    _child: Child,
    addr: SocketAddr,
}

impl Prometheus {
    async fn query(&self, query: &str) -> serde_json::Value {
        let q: String = query
            .bytes()
            .map(|b| match b {
                b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
                _ => format!("%{b:02X}"),
            })
            .collect();
        let (status, body) = http_get(self.addr, &format!("/api/v1/query?query={q}")).await;
        assert_eq!(status, 200, "{body}");
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
    }

    /// Queries until every one of `n` results has the value `want`.
    async fn until_all(&self, query: &str, n: usize, want: &str) -> serde_json::Value {
        let started = Instant::now();
        loop {
            let answer = self.query(query).await;
            let results = answer["data"]["result"]
                .as_array()
                .cloned()
                .unwrap_or_default();
            let values = results.iter().filter(|r| r["value"][1] == want).count();
            if results.len() == n && values == n {
                return answer;
            }
            assert!(
                started.elapsed() < WAIT * 2,
                "{query} never had {n} × {want}: {answer}"
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_a_three_node_cluster() {
    let Some(exe) = tool("prometheus") else {
        return;
    };
    let a = Scraped::start("a", COOKIE, None).await;
    let b = Scraped::start("b", COOKIE, Some(&a.addr)).await;
    let c = Scraped::start("c", COOKIE, Some(&a.addr)).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let targets: Vec<String> = [&a, &b, &c]
        .iter()
        .map(|n| format!("'{}'", n.metrics))
        .collect();
    let config = format!(
        "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  \
         - job_name: quicmesh\n    static_configs:\n      - targets: [{}]\n",
        targets.join(", ")
    );
    let config_file = dir.path().join("prometheus.yml");
    std::fs::write(&config_file, config).expect("write config");
    let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let log = std::fs::File::create(dir.path().join("prometheus.log")).expect("log file");
    let child = Command::new(exe)
        .arg(format!("--config.file={}", config_file.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address={addr}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .expect("spawn prometheus");
    let prometheus = Prometheus {
        _child: child,
        addr,
    };
    // Until it listens, a query is refused, and until it is ready (its
    // storage opened) answered 503: wait for both with the rest.
    let started = Instant::now();
    loop {
        if TcpStream::connect(addr).await.is_ok() && http_get(addr, "/-/ready").await.0 == 200 {
            break;
        }
        let log = std::fs::read_to_string(dir.path().join("prometheus.log")).unwrap_or_default();
        assert!(
            started.elapsed() < WAIT,
            "prometheus was not ready on {addr}:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let up = prometheus.until_all("up", 3, "1").await;
    let instances: Vec<&str> = up["data"]["result"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|r| r["metric"]["instance"].as_str())
        .collect();
    for n in [&a, &b, &c] {
        assert!(instances.contains(&n.metrics.to_string().as_str()), "{up}");
    }
    // Every node sees the other two up: a full mesh, seen by Prometheus.
    prometheus
        .until_all("quicmesh_peers{state=\"up\"}", 3, "2")
        .await;
    prometheus.until_all("quicmesh_node_info", 3, "1").await;
}
