//! DNS discovery against a real DNS server: dnsmasq on a loopback port,
//! serving A records for nodes bound to distinct 127.0.0.x addresses and
//! SRV records for the SRV strategy. It answers only the zones the test
//! gives it and forwards nothing.
//!
//! Needs `dnsmasq` (Debian `dnsmasq-base`); without it the tests skip, and
//! under `CI=true` they fail.

#[path = "../support/mod.rs"]
mod support;

use std::io::Write as _;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use quicmesh::discovery::{DnsPoll, Strategy, TopologyConfig};
use quicmesh::{DownReason, Node};
use support::*;

const COOKIE: &str = "dns-cookie";
const POLL: Duration = Duration::from_millis(300);

/// A dnsmasq process serving `hostsdir` (A records, re-read on change) and
/// the SRV records of its config file.
struct Dnsmasq {
    exe: PathBuf,
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl Dnsmasq {
    /// Starts dnsmasq for the zones `test` and `cluster.local`, or `None`
    /// (the test skips) when it is not installed.
    fn start(tag: &str, srv: &[String]) -> Option<Self> {
        let exe = ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"]
            .into_iter()
            .map(PathBuf::from)
            .find(|p| p.exists());
        let Some(exe) = exe else {
            let why = "dnsmasq is not installed (Debian package dnsmasq-base)";
            assert!(std::env::var("CI").as_deref() != Ok("true"), "{why}");
            // Straight to stderr: the test harness would hide `eprintln!`.
            let _ = writeln!(std::io::stderr(), "skipping: {why}");
            return None;
        };
        let dir = std::env::temp_dir().join(format!("quicmesh-dns-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("hosts")).expect("hostsdir");
        let port = free_port(Ipv4Addr::LOCALHOST);
        let mut conf = format!(
            "port={port}\nlisten-address=127.0.0.1\nbind-interfaces\nno-resolv\nno-hosts\n\
             no-poll\nlocal=/test/\nlocal=/cluster.local/\nhostsdir={}\n",
            dir.join("hosts").display()
        );
        for line in srv {
            conf.push_str(&format!("srv-host={line}\n"));
        }
        std::fs::write(dir.join("dnsmasq.conf"), conf).expect("conf");
        let mut server = Self {
            exe,
            dir,
            port,
            child: None,
        };
        server.run();
        Some(server)
    }

    fn run(&mut self) {
        let child = Command::new(&self.exe)
            .arg("--keep-in-foreground")
            .arg("--pid-file=")
            .arg("--user=root")
            .arg(format!(
                "--conf-file={}",
                self.dir.join("dnsmasq.conf").display()
            ))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start dnsmasq");
        self.child = Some(child);
    }

    fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    /// Publishes `file` in the hostsdir: one A record per line (written
    /// elsewhere, then moved in, so dnsmasq never reads half a file).
    fn set_hosts(&self, file: &str, records: &[(IpAddr, &str)]) {
        let text: String = records
            .iter()
            .map(|(ip, name)| format!("{ip} {name}\n"))
            .collect();
        let staged = self.dir.join(format!("{file}.new"));
        std::fs::write(&staged, text).expect("write hosts");
        std::fs::rename(&staged, self.dir.join("hosts").join(file)).expect("publish hosts");
    }

    fn remove_hosts(&self, file: &str) {
        std::fs::remove_file(self.dir.join("hosts").join(file)).expect("remove hosts");
    }

    /// Stops the server (its PID, not by name) and waits for it to exit.
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Waits until `query` answers with `count` addresses.
    async fn answers(&self, query: &str, count: usize) {
        let probe = DnsPoll::new(query, "probe", 1, POLL, Some(self.addr())).expect("resolver");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Ok(found) = probe.candidates().await
                && found.len() == count
            {
                return;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "dnsmasq never answered {query} with {count}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Dnsmasq {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A UDP port free on `ip` now.
fn free_port(ip: Ipv4Addr) -> u16 {
    std::net::UdpSocket::bind((ip, 0))
        .and_then(|s| s.local_addr())
        .expect("free port")
        .port()
}

fn host(i: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, i))
}

/// Starts node `name` listening on `listen`, discovering with `topology`.
async fn start_named(name: &str, listen: SocketAddr, topology: Option<TopologyConfig>) -> Node {
    Node::builder()
        .name(name)
        .listen(listen)
        .cookie(COOKIE)
        .configure(|c| c.topologies.extend(topology.map(|t| ("dns".to_owned(), t))))
        .start()
        .await
        .expect("node starts")
}

/// Starts node `short@127.0.0.<i>` on port `port` with `topology`.
async fn start(short: &str, i: u8, port: u16, topology: Option<TopologyConfig>) -> Node {
    let listen = SocketAddr::new(host(i), port);
    start_named(&format!("{short}@{}", host(i)), listen, topology).await
}

fn dns_poll(dns: &Dnsmasq, port: u16, prune_after: Option<Duration>) -> TopologyConfig {
    let text = format!(
        "strategy = \"dns_poll\"\nquery = \"app.test\"\nnode_basename = \"app\"\nport = {port}\n\
         polling_interval = \"{}ms\"\nnameserver = \"{}\"\n{}",
        POLL.as_millis(),
        dns.addr(),
        prune_after.map_or(String::new(), |d| format!(
            "prune_after = \"{}ms\"\n",
            d.as_millis()
        ))
    );
    toml::from_str(&text).expect("topology parses")
}

/// Waits until every node sees all the others; the time it took.
async fn full_mesh(nodes: &[&Node]) -> Duration {
    let started = tokio::time::Instant::now();
    for n in nodes {
        n.wait_for_nodes(nodes.len() - 1, WAIT)
            .await
            .expect("full mesh");
    }
    started.elapsed()
}

#[tokio::test]
async fn dns_poll_forms_the_mesh_follows_new_records_and_survives_the_server() {
    init_tracing();
    let Some(mut dns) = Dnsmasq::start("poll", &[]) else {
        return;
    };
    bounded(async {
        let port = free_port(Ipv4Addr::new(127, 0, 0, 2));
        let records: Vec<(IpAddr, &str)> = (2..=4).map(|i| (host(i), "app.test")).collect();
        dns.set_hosts("app", &records);
        dns.answers("app.test", 3).await;
        let started = tokio::time::Instant::now();
        let mut nodes = Vec::new();
        for i in 2..=4 {
            nodes.push(start("app", i, port, Some(dns_poll(&dns, port, None))).await);
        }
        let refs: Vec<&Node> = nodes.iter().collect();
        full_mesh(&refs).await;
        eprintln!(
            "dns_poll: 3 nodes, start to full mesh {:?}",
            started.elapsed()
        );

        // A new record: its node joins within two polling intervals.
        let newcomer = start("app", 5, port, None).await;
        dns.set_hosts("app5", &[(host(5), "app.test")]);
        let added = tokio::time::Instant::now();
        nodes[0]
            .wait_for_nodes(3, WAIT)
            .await
            .expect("the new node joins");
        let joined = added.elapsed();
        eprintln!("dns_poll: added record joined after {joined:?} (interval {POLL:?})");
        // Two intervals, plus room for the dial on a loaded machine.
        assert!(joined <= POLL * 2 + Duration::from_secs(1), "{joined:?}");

        // Its record goes: without pruning, the healthy peer stays.
        dns.remove_hosts("app5");
        dns.answers("app.test", 3).await;
        stays_connected(&nodes[0], &newcomer, POLL * 5).await;

        // The DNS server stops: the mesh stays; when it is back, the
        // strategy finds what changed meanwhile.
        dns.stop();
        stays_connected(&nodes[0], &nodes[1], POLL * 5).await;
        let late = start("app", 6, port, None).await;
        dns.set_hosts("app6", &[(host(6), "app.test")]);
        dns.run();
        dns.answers("app.test", 4).await;
        nodes[0]
            .wait_for_nodes(4, WAIT)
            .await
            .expect("the strategy recovered");
        assert!(nodes[0].nodes().contains(late.name()));
        for n in nodes.into_iter().chain([newcomer, late]) {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn pruning_disconnects_a_peer_whose_record_is_gone() {
    let Some(dns) = Dnsmasq::start("prune", &[]) else {
        return;
    };
    bounded(async {
        let port = free_port(Ipv4Addr::new(127, 0, 0, 7));
        dns.set_hosts("b", &[(host(8), "app.test")]);
        dns.answers("app.test", 1).await;
        let b = start("app", 8, port, None).await;
        let grace = POLL * 3;
        let a = start("app", 7, port, Some(dns_poll(&dns, port, Some(grace)))).await;
        a.wait_for_nodes(1, WAIT).await.expect("a finds b");
        let mut events = a.events();
        dns.remove_hosts("b");
        let removed = tokio::time::Instant::now();
        assert_eq!(
            wait_down(&mut events, b.name()).await,
            DownReason::DisconnectedByUs
        );
        // The grace period runs from the last poll that saw the record,
        // at most one interval before it was removed.
        assert!(
            removed.elapsed() >= grace - POLL,
            "pruned before the grace period"
        );
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn kubernetes_dns_and_dns_srv_find_their_peers() {
    const SERVICE: &str = "my-app-headless.default.svc.cluster.local";
    let pod = |i: u8| format!("my-app-{i}.{SERVICE}");
    // SRV targets at distinct ports: StatefulSet pods, one per host.
    let ports: Vec<u16> = (0..3u8)
        .map(|i| free_port(Ipv4Addr::new(127, 0, 0, 10 + i)))
        .collect();
    let srv: Vec<String> = (0..3u8)
        .map(|i| {
            format!(
                "_quicmesh._udp.{SERVICE},{},{},0,10",
                pod(i),
                ports[usize::from(i)]
            )
        })
        .collect();
    let Some(dns) = Dnsmasq::start("k8s", &srv) else {
        return;
    };
    bounded(async {
        let mut records: Vec<(IpAddr, String)> = Vec::new();
        for i in 0..3u8 {
            records.push((host(10 + i), SERVICE.to_owned()));
            records.push((host(10 + i), pod(i)));
        }
        let records: Vec<(IpAddr, &str)> =
            records.iter().map(|(ip, n)| (*ip, n.as_str())).collect();
        dns.set_hosts("pods", &records);
        dns.answers(SERVICE, 3).await;

        // kubernetes_dns: A records of the headless service, nodes my_app@<ip>.
        let a_port = free_port(Ipv4Addr::new(127, 0, 0, 10));
        let k8s = |port: u16| -> TopologyConfig {
            toml::from_str(&format!(
                "strategy = \"kubernetes_dns\"\nservice = \"my-app-headless\"\n\
                 application_name = \"my_app\"\nport = {port}\npolling_interval = \"{}ms\"\n\
                 nameserver = \"{}\"\n",
                POLL.as_millis(),
                dns.addr()
            ))
            .expect("parses")
        };
        let started = tokio::time::Instant::now();
        let mut nodes = Vec::new();
        for i in 0..3u8 {
            nodes.push(start("my_app", 10 + i, a_port, Some(k8s(a_port))).await);
        }
        full_mesh(&nodes.iter().collect::<Vec<_>>()).await;
        eprintln!(
            "kubernetes_dns: 3 nodes, start to full mesh {:?}",
            started.elapsed()
        );
        for n in nodes.drain(..) {
            n.shutdown().await;
        }

        // kubernetes_dns_srv: nodes named after their SRV targets.
        let srv_topology: TopologyConfig = toml::from_str(&format!(
            "strategy = \"kubernetes_dns_srv\"\nservice = \"my-app-headless\"\n\
             application_name = \"my_app\"\nport_name = \"quicmesh\"\nprotocol = \"udp\"\n\
             polling_interval = \"{}ms\"\nnameserver = \"{}\"\n",
            POLL.as_millis(),
            dns.addr()
        ))
        .expect("parses");
        let started = tokio::time::Instant::now();
        for i in 0..3u8 {
            let listen = SocketAddr::new(host(10 + i), ports[usize::from(i)]);
            let node_name = format!("my_app@{}", pod(i));
            nodes.push(start_named(&node_name, listen, Some(srv_topology.clone())).await);
        }
        full_mesh(&nodes.iter().collect::<Vec<_>>()).await;
        eprintln!(
            "kubernetes_dns_srv: 3 nodes, start to full mesh {:?}",
            started.elapsed()
        );
        for n in nodes {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_server_answering_garbage_is_a_dns_error_not_a_crash() {
    bounded(async {
        // A "DNS server" that answers every query with junk, or with the
        // query's id and nonsense after it.
        let socket = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = socket.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let mut buf = [0u8; 512];
            let mut n = 0u8;
            while let Ok((len, from)) = socket.recv_from(&mut buf).await {
                n = n.wrapping_add(1);
                let mut reply = vec![0xa5u8; 40];
                if n % 2 == 0 && len >= 2 {
                    reply[..2].copy_from_slice(&buf[..2]);
                    reply[2] = 0x81; // a response…
                    reply[3] = 0x80; // …that claims records it does not hold
                    reply[7] = 9;
                }
                let _ = socket.send_to(&reply, from).await;
            }
        });
        let probe = DnsPoll::new("app.test", "app", 4370, POLL, Some(addr)).expect("resolver");
        for _ in 0..4 {
            let result = probe.candidates().await;
            assert!(
                matches!(result, Err(quicmesh::discovery::DiscoveryError::Dns { .. })),
                "{result:?}"
            );
        }
        server.abort();
    })
    .await;
}
