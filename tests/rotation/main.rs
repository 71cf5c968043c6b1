//! Identities replaced while nodes run: a renewed certificate, a CA
//! rotated in three steps, a revoked node, files that must be refused, a
//! cookie rolled over. Every node keeps running throughout; each node has
//! its own directory, as it would on its own machine.

#[path = "../support/probe.rs"]
mod probe;
#[path = "../support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use quicmesh::identity::{CertificateAuthority, IssuedCert, Ledger, serial_of, write_issued};
use quicmesh::prometheus_client::encoding::text::encode;
use quicmesh::prometheus_client::registry::Registry;
use quicmesh::{
    AuthFailure, CertFiles, ConnectError, DownReason, EventStream, IdentityConfig, IdentityError,
    Node, NodeEvent, NodeName,
};
use rustls::pki_types::CertificateDer;
use support::*;

/// One node's directory: its CA bundle, certificate, key and CRL.
struct Site {
    dir: tempfile::TempDir,
    name: NodeName,
}

impl Site {
    /// A site for `short@127.0.0.1` trusting `cas`, with a certificate
    /// issued by `issuer`.
    fn new(short: &str, cas: &[&CertificateAuthority], issuer: &CertificateAuthority) -> Self {
        let site = Self {
            dir: tempfile::tempdir().expect("tempdir"),
            name: name(&format!("{short}@127.0.0.1")),
        };
        site.trust(cas);
        site.install(&issuer.issue(&site.name, 30).expect("issue"));
        site
    }

    fn files(&self) -> CertFiles {
        CertFiles::in_dir(self.dir.path(), &self.name)
    }

    fn crl_path(&self) -> PathBuf {
        self.dir.path().join("crl.pem")
    }

    /// Writes the CA bundle: the certificates of `cas`, in order.
    fn trust(&self, cas: &[&CertificateAuthority]) {
        let bundle: String = cas.iter().map(|ca| ca.cert_pem()).collect();
        std::fs::write(&self.files().ca, bundle).expect("write bundle");
    }

    /// Replaces the node's certificate and key files.
    fn install(&self, issued: &IssuedCert) {
        write_issued(issued, self.dir.path(), &self.name, true).expect("write cert");
    }

    /// The current certificate file, DER.
    fn cert(&self) -> CertificateDer<'static> {
        read_cert(&self.files().cert)
    }

    async fn start(&self) -> Node {
        self.start_with(self.files()).await
    }

    async fn start_with(&self, files: CertFiles) -> Node {
        Node::builder()
            .name(self.name.as_str())
            .listen("127.0.0.1:0".parse().expect("addr"))
            .certificates(files)
            .start()
            .await
            .expect("cert-mode node starts")
    }
}

fn read_cert(path: &Path) -> CertificateDer<'static> {
    use rustls::pki_types::pem::PemObject as _;
    CertificateDer::from_pem_file(path).expect("a PEM certificate")
}

/// The certificate `node` presents to a new connection now, as a foreign
/// client with a certificate of `ca` sees it.
async fn presented(node: &Node, ca: &CertificateAuthority) -> CertificateDer<'static> {
    let probe = ca.issue(&name("probe@127.0.0.1"), 1).expect("issue");
    let client = (vec![probe.cert], probe.key.into());
    probe::presented_chain(node.local_addr(), quicmesh_wire::ALPN, Some(client))
        .await
        .remove(0)
}

/// Connects every node to the first and waits for the full mesh.
async fn mesh(nodes: &[&Node]) {
    for n in &nodes[1..] {
        n.connect(&nodes[0].addr()).await.expect("joins");
    }
    for n in nodes {
        n.wait_for_nodes(nodes.len() - 1, WAIT)
            .await
            .expect("full mesh");
    }
}

/// When each node's connection to each other node came up.
fn connections(nodes: &[&Node]) -> HashMap<(NodeName, NodeName), SystemTime> {
    let mut up = HashMap::new();
    for n in nodes {
        for p in n.status().peers {
            if let Some(since) = p.connected_since {
                up.insert((n.name().clone(), p.node), since);
            }
        }
    }
    up
}

/// Checks that the connections among `nodes` are those of `before`, that
/// none of them went down, and that no handshake was refused.
fn untouched(
    nodes: &[&Node],
    events: &mut [EventStream],
    before: &HashMap<(NodeName, NodeName), SystemTime>,
) {
    let ours: Vec<&NodeName> = nodes.iter().map(|n| n.name()).collect();
    let now = connections(nodes);
    for (pair, since) in before {
        assert_eq!(now.get(pair), Some(since), "connection {pair:?} replaced");
    }
    for (n, ev) in nodes.iter().zip(events.iter_mut()) {
        for e in drain(ev) {
            if let NodeEvent::NodeDown { node, reason } = &e {
                assert!(
                    !ours.contains(&node),
                    "{} saw {node} go down: {reason}",
                    n.name()
                );
            }
        }
        assert_eq!(n.status().counters.auth_failures, 0, "{} refused", n.name());
    }
}

/// A node joins the cluster both ways (dialling `cluster[0]`, and dialled
/// by it), reaches every node, and leaves again.
async fn joins(cluster: &[&Node], newcomer: impl Fn(&str) -> quicmesh::Builder) {
    let dialler = newcomer("p").start().await.expect("newcomer starts");
    let dialled = newcomer("q").start().await.expect("newcomer starts");
    dialler
        .connect(&cluster[0].addr())
        .await
        .expect("a newcomer dials in");
    cluster[0]
        .connect(&dialled.addr())
        .await
        .expect("a cluster node dials a newcomer");
    for n in [&dialler, &dialled] {
        // The cluster, and the other newcomer.
        n.wait_for_nodes(cluster.len() + 1, WAIT)
            .await
            .expect("a newcomer reaches every node");
    }
    dialler.shutdown().await;
    dialled.shutdown().await;
}

/// A node started from `stale` is refused by `node` as issued by a CA
/// `node` does not trust.
async fn refused_as_stranger(stale: quicmesh::Builder, node: &Node) {
    let stale = stale.start().await.expect("starts");
    let err = stale.connect(&node.addr()).await.unwrap_err();
    assert!(
        matches!(
            err,
            ConnectError::AuthenticationFailed {
                reason: AuthFailure::UnknownIssuer,
                ..
            }
        ),
        "{err}"
    );
    stale.shutdown().await;
}

/// A builder for a newcomer in certificate mode with `site`'s files.
fn cert_newcomer(site: &Site) -> impl Fn(&str) -> quicmesh::Builder + '_ {
    move |short: &str| {
        let name = name(&format!("{short}@127.0.0.1"));
        let files = CertFiles::in_dir(site.dir.path(), &name);
        Node::builder()
            .name(name.as_str())
            .listen("127.0.0.1:0".parse().expect("addr"))
            .certificates(files)
    }
}

/// A directory of newcomers trusting `cas`, with certificates from
/// `issuer` for `p` and `q`.
fn newcomers(cas: &[&CertificateAuthority], issuer: &CertificateAuthority) -> Site {
    let site = Site::new("p", cas, issuer);
    let q = name("q@127.0.0.1");
    let issued = issuer.issue(&q, 30).expect("issue");
    write_issued(&issued, site.dir.path(), &q, true).expect("write cert");
    site
}

/// Two connected nodes `a` and `b` of one CA, their sites, event streams
/// and connections.
struct Pair {
    ca: CertificateAuthority,
    sa: Site,
    /// Kept so that b's files live as long as b.
    _sb: Site,
    a: Node,
    b: Node,
    events: [EventStream; 2],
    before: HashMap<(NodeName, NodeName), SystemTime>,
}

impl Pair {
    async fn start(ca_name: &str) -> Self {
        let ca = CertificateAuthority::generate(ca_name, 30).expect("CA");
        let (sa, sb) = (Site::new("a", &[&ca], &ca), Site::new("b", &[&ca], &ca));
        let (a, b) = (sa.start().await, sb.start().await);
        mesh(&[&a, &b]).await;
        let events = [a.events(), b.events()];
        let before = connections(&[&a, &b]);
        Self {
            ca,
            sa,
            _sb: sb,
            a,
            b,
            events,
            before,
        }
    }
}

#[tokio::test]
async fn a_replaced_certificate_is_presented_to_new_connections_after_a_reload() {
    bounded(async {
        let mut pair = Pair::start("rotation CA").await;
        let (ca, sa, a, b) = (&pair.ca, &pair.sa, &pair.a, &pair.b);
        let first = sa.cert();
        assert_eq!(presented(a, ca).await, first);

        let renewed = ca.issue(a.name(), 30).expect("renew");
        sa.install(&renewed);
        assert_eq!(
            presented(a, ca).await,
            first,
            "nothing changes before the reload"
        );
        a.reload_identity().await.expect("reload");
        assert_eq!(presented(a, ca).await, renewed.cert, "new connections");
        // A node dialling in now verifies the renewed certificate.
        let sc = Site::new("c", &[ca], ca);
        let c = sc.start().await;
        c.connect(&a.addr()).await.expect("c joins a renewed a");
        untouched(&[a, b], &mut pair.events, &pair.before);
        for n in [a, b, &c] {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_ca_is_rotated_in_three_steps_without_restarts_or_refusals() {
    bounded(async {
        let old = CertificateAuthority::generate("old CA", 30).expect("CA");
        let new = CertificateAuthority::generate("new CA", 30).expect("CA");
        let sites: Vec<Site> = ["a", "b", "c"]
            .iter()
            .map(|s| Site::new(s, &[&old], &old))
            .collect();
        let mut nodes = Vec::new();
        for s in &sites {
            nodes.push(s.start().await);
        }
        let cluster: Vec<&Node> = nodes.iter().collect();
        mesh(&cluster).await;
        let mut events: Vec<EventStream> = nodes.iter().map(Node::events).collect();
        let before = connections(&cluster);

        // 1. Every node trusts both CAs.
        for (s, n) in sites.iter().zip(&nodes) {
            s.trust(&[&old, &new]);
            n.reload_identity().await.expect("step 1 reload");
        }
        joins(&cluster, cert_newcomer(&newcomers(&[&old], &old))).await;
        joins(&cluster, cert_newcomer(&newcomers(&[&old, &new], &old))).await;
        untouched(&cluster, &mut events, &before);

        // 2. Every node gets a certificate of the new CA.
        for (s, n) in sites.iter().zip(&nodes) {
            s.install(&new.issue(n.name(), 30).expect("issue"));
            n.reload_identity().await.expect("step 2 reload");
            assert_eq!(presented(n, &new).await, s.cert());
        }
        joins(&cluster, cert_newcomer(&newcomers(&[&old, &new], &old))).await;
        joins(&cluster, cert_newcomer(&newcomers(&[&old, &new], &new))).await;
        untouched(&cluster, &mut events, &before);

        // 3. Every node drops the old CA.
        for (s, n) in sites.iter().zip(&nodes) {
            s.trust(&[&new]);
            n.reload_identity().await.expect("step 3 reload");
        }
        joins(&cluster, cert_newcomer(&newcomers(&[&new], &new))).await;
        untouched(&cluster, &mut events, &before);

        // The old CA is really gone: a node it certifies is refused.
        let stale = newcomers(&[&old], &old);
        refused_as_stranger(cert_newcomer(&stale)("p"), &nodes[0]).await;
        for n in nodes {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_revoked_node_is_dropped_with_revoked_and_refused_afterwards() {
    bounded(async {
        let ca_dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate("revoking CA", 30).expect("CA");
        let ledger = Ledger::open(ca_dir.path());
        // Every node starts with the CA's (empty) revocation list.
        let empty = ledger.revoke(&ca, &[], 30).expect("empty CRL");
        let sites: Vec<Site> = ["a", "b", "c"]
            .iter()
            .map(|s| Site::new(s, &[&ca], &ca))
            .collect();
        let mut nodes = Vec::new();
        for s in &sites {
            std::fs::copy(&empty.crl, s.crl_path()).expect("copy CRL");
            nodes.push(s.start_with(s.files().with_crl(s.crl_path())).await);
        }
        let (a, b, c) = (&nodes[0], &nodes[1], &nodes[2]);
        mesh(&[a, b, c]).await;
        let (mut ea, mut eb) = (a.events(), b.events());
        let mut registry = Registry::default();
        a.register_metrics(&mut registry);

        let serial = serial_of(&sites[1].cert()).expect("serial");
        let crl = ledger.revoke(&ca, &[serial], 30).expect("revoke b");
        std::fs::copy(&crl.crl, sites[0].crl_path()).expect("copy CRL");
        let reloaded = a.reload_identity().await.expect("a reloads");
        assert_eq!(reloaded.revoked, vec![b.name().clone()]);
        assert_eq!(wait_down(&mut ea, b.name()).await, DownReason::Revoked);
        assert_eq!(wait_down(&mut eb, a.name()).await, DownReason::Revoked);
        assert!(a.status().counters.revoked >= 1);
        // The metrics say so too.
        let mut text = String::new();
        encode(&mut text, &registry).expect("encode metrics");
        assert!(
            text.lines()
                .any(|l| l == "quicmesh_node_down_total{reason=\"revoked\"} 1"),
            "{text}"
        );
        assert!(
            text.lines().any(
                |l| l.starts_with("quicmesh_revoked_total ") && l != "quicmesh_revoked_total 0"
            ),
            "{text}"
        );
        // c has not reloaded: it keeps b, and a keeps c.
        assert!(c.nodes().contains(b.name()) && a.nodes().contains(c.name()));

        // Refused afterwards, whoever dials.
        let err = a.connect(&b.addr()).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ConnectError::AuthenticationFailed {
                    reason: AuthFailure::Revoked,
                    ..
                }
            ),
            "{err}"
        );
        let err = b.connect(&a.addr()).await.unwrap_err();
        assert!(
            matches!(err, ConnectError::AuthenticationFailed { .. }),
            "{err}"
        );
        eventually("a counted the refused handshake", || {
            a.status().counters.revoked >= 3
        })
        .await;
        assert!(!a.nodes().contains(b.name()));

        // c reloads too and drops b.
        std::fs::copy(&crl.crl, sites[2].crl_path()).expect("copy CRL");
        let reloaded = c.reload_identity().await.expect("c reloads");
        assert_eq!(reloaded.revoked, vec![b.name().clone()]);
        eventually("b is alone", || b.nodes().is_empty()).await;
        for n in nodes {
            n.shutdown().await;
        }
    })
    .await;
}

#[tokio::test]
async fn a_bad_file_on_reload_is_refused_by_name_and_the_old_identity_kept() {
    bounded(async {
        let mut pair = Pair::start("careful CA").await;
        let (ca, sa, a, b) = (&pair.ca, &pair.sa, &pair.a, &pair.b);
        let first = sa.cert();
        let files = sa.files();
        let saved = |p: &Path| std::fs::read(p).expect("read");
        let (cert, key, bundle) = (saved(&files.cert), saved(&files.key), saved(&files.ca));

        let refused = |e: IdentityError, path: &Path| {
            assert!(
                e.to_string().contains(&path.display().to_string()),
                "error names {}: {e}",
                path.display()
            );
        };
        std::fs::write(&files.cert, "-----BEGIN CERTIFICATE-----\nnot base64!\n").expect("corrupt");
        refused(a.reload_identity().await.unwrap_err(), &files.cert);
        std::fs::write(&files.cert, &cert).expect("restore");

        std::fs::write(&files.key, "garbage").expect("corrupt");
        refused(a.reload_identity().await.unwrap_err(), &files.key);
        std::fs::write(&files.key, &key).expect("restore");

        std::fs::write(&files.ca, "").expect("corrupt");
        refused(a.reload_identity().await.unwrap_err(), &files.ca);
        std::fs::write(&files.ca, &bundle).expect("restore");

        // Another node's certificate and key, consistent but not a's.
        let other = ca.issue(&name("z@127.0.0.1"), 30).expect("issue");
        std::fs::write(&files.cert, other.cert_pem()).expect("swap");
        std::fs::write(&files.key, other.key_pem()).expect("swap");
        let e = a.reload_identity().await.unwrap_err();
        assert!(matches!(e, IdentityError::CertNamesOtherNode { .. }), "{e}");
        std::fs::write(&files.cert, &cert).expect("restore");
        std::fs::write(&files.key, &key).expect("restore");

        // A revocation list that is garbage, or from another CA.
        let crl = sa.crl_path();
        let with_crl = IdentityConfig::Certificate {
            ca: files.ca.clone(),
            cert: files.cert.clone(),
            key: files.key.clone(),
            crl: Some(crl.clone()),
        };
        std::fs::write(
            &crl,
            "-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n",
        )
        .expect("corrupt");
        refused(
            a.reload_identity_from(with_crl.clone()).await.unwrap_err(),
            &crl,
        );
        let stranger = CertificateAuthority::generate("stranger CA", 30).expect("CA");
        let stranger_dir = tempfile::tempdir().expect("tempdir");
        let foreign = Ledger::open(stranger_dir.path())
            .revoke(&stranger, &[], 30)
            .expect("CRL");
        std::fs::copy(&foreign.crl, &crl).expect("copy");
        let e = a.reload_identity_from(with_crl).await.unwrap_err();
        assert!(matches!(e, IdentityError::CrlNotFromCa { .. }), "{e}");
        refused(e, &crl);

        // Through all of it, a kept its identity: the same certificate to
        // new connections, which verify, and its peers.
        assert_eq!(presented(a, ca).await, first);
        let c = Site::new("c", &[ca], ca).start().await;
        c.connect(&a.addr()).await.expect("c joins a");
        untouched(&[a, b], &mut pair.events, &pair.before);
        // The configuration was not replaced either: a plain reload works.
        a.reload_identity()
            .await
            .expect("reload with the good files");
        for n in [a, b, &c] {
            n.shutdown().await;
        }
    })
    .await;
}

/// A cookie-mode identity: `cookie`, and `previous` during a rollover.
fn cookies(cookie: &str, previous: Option<&str>) -> IdentityConfig {
    let mut config = IdentityConfig::default();
    if let IdentityConfig::Cookie {
        cookie: c,
        previous_cookie,
        ..
    } = &mut config
    {
        *c = Some(cookie.to_owned());
        *previous_cookie = previous.map(str::to_owned);
    }
    config
}

fn cookie_newcomer(cookie: &str, previous: Option<&str>) -> impl Fn(&str) -> quicmesh::Builder {
    let config = cookies(cookie, previous);
    move |short: &str| {
        let config = config.clone();
        builder(short, "unused").configure(move |c| c.identity = config)
    }
}

#[tokio::test]
async fn a_cookie_is_rolled_over_without_restarts_or_refusals() {
    bounded(async {
        let (old, new) = ("the old cookie", "the new cookie");
        let nodes = [
            node("a", old).await,
            node("b", old).await,
            node("c", old).await,
        ];
        let cluster: Vec<&Node> = nodes.iter().collect();
        mesh(&cluster).await;
        let mut events: Vec<EventStream> = nodes.iter().map(Node::events).collect();
        let before = connections(&cluster);
        let old_ca = nodes[0].ca_fingerprint();

        // a moves first: the new cookie, the old one as previous. Nodes
        // still on the old cookie alone and nodes already moved both
        // connect to it.
        nodes[0]
            .reload_identity_from(cookies(new, Some(old)))
            .await
            .expect("a moves");
        assert_ne!(nodes[0].ca_fingerprint(), old_ca);
        joins(&cluster, cookie_newcomer(old, None)).await;
        joins(&cluster, cookie_newcomer(new, Some(old))).await;
        untouched(&cluster, &mut events, &before);

        // Then b and c; now a node on the new cookie alone fits too.
        for n in &nodes[1..] {
            n.reload_identity_from(cookies(new, Some(old)))
                .await
                .expect("moves");
        }
        joins(&cluster, cookie_newcomer(new, None)).await;
        joins(&cluster, cookie_newcomer(old, None)).await;
        untouched(&cluster, &mut events, &before);

        // Last, every node drops the previous cookie.
        for n in &nodes {
            n.reload_identity_from(cookies(new, None))
                .await
                .expect("drops the old cookie");
        }
        joins(&cluster, cookie_newcomer(new, None)).await;
        untouched(&cluster, &mut events, &before);

        // The old cookie is really gone.
        refused_as_stranger(builder("p", old), &nodes[0]).await;
        for n in nodes {
            n.shutdown().await;
        }
    })
    .await;
}
