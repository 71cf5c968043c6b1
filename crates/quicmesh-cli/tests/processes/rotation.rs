//! `quicmesh node` reloading its identity on SIGHUP, and `quicmesh certs
//! renew` / `revoke` (the revocation list checked with openssl).

use std::path::Path;

use quicmesh::{CertFiles, ConnectError, DownReason, Node, NodeEvent};

use super::{NodeProcess, WAIT, cookie_node, down_reason, quicmesh};

/// Runs a `quicmesh` command that must succeed; its stdout.
fn ok(args: &[&str]) -> String {
    let out = quicmesh(args);
    assert!(
        out.status.success(),
        "quicmesh {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A CA in `dir` and certificates for `a@127.0.0.1` and `b@127.0.0.1`.
fn pki(dir: &Path) {
    let d = dir.to_str().expect("utf-8 path");
    ok(&["certs", "ca", "--out", d]);
    for n in ["a@127.0.0.1", "b@127.0.0.1"] {
        ok(&["certs", "issue", "--name", n, "--ca", d]);
    }
}

fn path(dir: &Path, file: &str) -> String {
    dir.join(file).to_str().expect("utf-8 path").to_owned()
}

/// `a@127.0.0.1` as a process in certificate mode, with `extra` flags.
async fn process_a(dir: &Path, extra: &[&str]) -> NodeProcess {
    let (ca, cert, key) = (
        path(dir, "ca.pem"),
        path(dir, "a@127.0.0.1.pem"),
        path(dir, "a@127.0.0.1.key"),
    );
    let mut args = vec![
        "--name",
        "a@127.0.0.1:0",
        "--ca",
        &ca,
        "--cert",
        &cert,
        "--key",
        &key,
    ];
    args.extend_from_slice(extra);
    NodeProcess::start(&args, &[]).await
}

/// `b@127.0.0.1` in this process, connected to `a`.
async fn node_b(dir: &Path, a: &mut NodeProcess) -> Node {
    let b = Node::builder()
        .name("b@127.0.0.1")
        .listen("127.0.0.1:0".parse().expect("addr"))
        .certificates(CertFiles::in_dir(
            dir,
            &"b@127.0.0.1".parse().expect("name"),
        ))
        .start()
        .await
        .expect("b starts");
    b.connect(&a.addr).await.expect("b joins a");
    a.expect_line("up b@127.0.0.1").await;
    b
}

/// The certificate the process presents to a new connection.
async fn presented(a: &NodeProcess) -> Vec<u8> {
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], a.addr.port));
    super::probe::presented_chain(addr, quicmesh_wire::ALPN, None)
        .await
        .remove(0)
        .to_vec()
}

fn cert_der(file: &Path) -> Vec<u8> {
    let text = std::fs::read_to_string(file).expect("read cert");
    let b64: String = text.lines().filter(|l| !l.starts_with("-----")).collect();
    base64_decode(&b64)
}

/// Standard base64 without padding checks (test certificates only).
fn base64_decode(s: &str) -> Vec<u8> {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|c| *c != b'=') {
        let v = ALPHABET.iter().position(|a| *a == c).expect("base64") as u32;
        acc = (acc << 6) | v;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}

#[tokio::test]
async fn sighup_makes_a_node_present_its_renewed_certificate_and_refuse_a_bad_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    pki(dir.path());
    let mut a = process_a(dir.path(), &[]).await;
    let b = node_b(dir.path(), &mut a).await;
    let mut events = b.events();
    let since = b.status().peers[0].connected_since;
    let cert_file = dir.path().join("a@127.0.0.1.pem");
    let first = cert_der(&cert_file);
    assert_eq!(presented(&a).await, first);

    let out = ok(&[
        "certs",
        "renew",
        "--name",
        "a@127.0.0.1",
        "--ca",
        &path(dir.path(), ""),
    ]);
    assert!(out.contains("SIGHUP"), "{out}");
    let renewed = cert_der(&cert_file);
    assert_ne!(renewed, first);
    a.signal("-HUP");
    a.expect_starts(&["reloaded CA "]).await;
    assert_eq!(presented(&a).await, renewed, "new connections");

    // A corrupt key on the next SIGHUP is refused by name; a keeps the
    // renewed identity.
    let key_file = path(dir.path(), "a@127.0.0.1.key");
    std::fs::write(&key_file, "not a key").expect("corrupt");
    a.signal("-HUP");
    let why = a.expect_starts(&["reload refused: "]).await;
    assert!(why[0].contains(&key_file), "{why:?}");
    assert_eq!(presented(&a).await, renewed);

    // b's connection was never touched.
    assert_eq!(b.status().peers[0].connected_since, since);
    while let Some(e) = events.try_recv() {
        let e = e.expect("no event lost");
        assert!(!matches!(e, NodeEvent::NodeDown { .. }), "b saw {e:?}");
    }
    b.shutdown().await;
}

/// `openssl crl -verify` on the CA directory's list: its output.
fn openssl_crl(dir: &Path, extra: &[&str]) -> String {
    let out = std::process::Command::new("openssl")
        .args(["crl", "-noout", "-CAfile", &path(dir, "ca.pem")])
        .args(["-in", &path(dir, "crl.pem")])
        .args(extra)
        .output()
        .expect("openssl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // openssl says "verify OK" on stderr or stdout depending on version.
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test]
async fn a_revoked_node_is_dropped_on_sighup_and_the_crl_verifies_with_openssl() {
    let dir = tempfile::tempdir().expect("tempdir");
    pki(dir.path());
    let d = path(dir.path(), "");
    // Mistakes are named: a serial that is not hex, a name never issued.
    for (args, named) in [
        (&["--serial", "xyz"][..], "\"xyz\""),
        (&["--name", "nobody@127.0.0.1"][..], "issued.txt"),
    ] {
        let out = quicmesh(&[&["certs", "revoke", "--ca", &d][..], args].concat());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(named),
            "{args:?}: {err}"
        );
    }
    // A first list, revoking a serial no node has.
    ok(&["certs", "revoke", "--serial", "01", "--ca", &d]);
    assert!(openssl_crl(dir.path(), &["-verify"]).contains("verify OK"));
    let mut a = process_a(dir.path(), &["--crl", &path(dir.path(), "crl.pem")]).await;
    let b = node_b(dir.path(), &mut a).await;
    let mut events = b.events();

    let out = ok(&["certs", "revoke", "--name", "b@127.0.0.1", "--ca", &d]);
    let serial = out
        .lines()
        .find_map(|l| l.strip_prefix("revoked "))
        .expect("the revoked serial")
        .to_ascii_uppercase();
    let text = openssl_crl(dir.path(), &["-verify", "-text"]);
    assert!(text.contains("verify OK"), "{text}");
    assert!(text.contains(&serial), "{serial} not in\n{text}");
    // A stranger CA's key did not sign it.
    let other = tempfile::tempdir().expect("tempdir");
    ok(&["certs", "ca", "--out", &path(other.path(), "")]);
    let forged = std::process::Command::new("openssl")
        .args([
            "crl",
            "-noout",
            "-verify",
            "-CAfile",
            &path(other.path(), "ca.pem"),
        ])
        .args(["-in", &path(dir.path(), "crl.pem")])
        .output()
        .expect("openssl");
    let said = String::from_utf8_lossy(&forged.stderr).into_owned()
        + &String::from_utf8_lossy(&forged.stdout);
    assert!(!said.contains("verify OK"), "{said}");

    a.signal("-HUP");
    a.expect_line("down b@127.0.0.1 certificate revoked").await;
    assert_eq!(down_reason(&mut events, &a.name).await, DownReason::Revoked);
    let err = b.connect(&a.addr).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::AuthenticationFailed { .. }),
        "{err}"
    );
    // b no longer trusts a either once it reloads the same list.
    let files = CertFiles::in_dir(dir.path(), &"b@127.0.0.1".parse().expect("name"))
        .with_crl(dir.path().join("crl.pem"));
    let e = b.reload_identity_from(quicmesh::IdentityConfig::Certificate {
        ca: files.ca,
        cert: files.cert.clone(),
        key: files.key,
        crl: files.crl,
    });
    // Its own certificate is in the list: the reload is refused by name.
    let e = e.await.unwrap_err();
    assert!(
        e.to_string().contains(&files.cert.display().to_string()),
        "{e}"
    );
    tokio::time::timeout(WAIT, b.shutdown())
        .await
        .expect("b stops");
}

/// Writes a cookie file, mode 0600.
fn cookie_file(path: &Path, cookie: &str) {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::write(path, cookie).expect("write cookie");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).expect("chmod");
}

#[tokio::test]
async fn sighup_rolls_a_cookie_file_over_while_old_cookie_nodes_stay_connected() {
    let (old, new) = ("the old process cookie", "the new process cookie");
    let dir = tempfile::tempdir().expect("tempdir");
    let (current, previous) = (dir.path().join("cookie"), dir.path().join("cookie.old"));
    cookie_file(&current, old);
    cookie_file(&previous, old);
    let mut a = NodeProcess::start(
        &[
            "--name",
            "a@127.0.0.1:0",
            "--cookie-file",
            current.to_str().expect("path"),
            "--previous-cookie-file",
            previous.to_str().expect("path"),
        ],
        &[],
    )
    .await;
    let b = cookie_node("b", old).await;
    b.connect(&a.addr).await.expect("b joins a");
    a.expect_line("up b@127.0.0.1").await;
    let mut events = b.events();
    let since = b.status().peers[0].connected_since;

    // The new cookie in the file, the old one kept as previous.
    cookie_file(&current, new);
    a.signal("-HUP");
    let ca = a.expect_starts(&["reloaded CA "]).await;
    let fresh = cookie_node("d", new).await;
    assert_eq!(
        ca[0],
        fresh.ca_fingerprint(),
        "a now mints from the new cookie"
    );
    fresh
        .connect(&a.addr)
        .await
        .expect("a node on the new cookie joins");
    let lagging = cookie_node("c", old).await;
    lagging
        .connect(&a.addr)
        .await
        .expect("a node on the old cookie still joins");

    // Then the old cookie is dropped: only the new one admits.
    cookie_file(&previous, new);
    a.signal("-HUP");
    a.expect_starts(&["reloaded CA "]).await;
    let stale = cookie_node("e", old).await;
    let err = stale.connect(&a.addr).await.unwrap_err();
    assert!(
        matches!(err, ConnectError::AuthenticationFailed { .. }),
        "{err}"
    );

    assert_eq!(b.status().peers[0].connected_since, since);
    while let Some(e) = events.try_recv() {
        let e = e.expect("no event lost");
        assert!(
            !matches!(&e, NodeEvent::NodeDown { node, .. } if *node == a.name),
            "b saw {e:?}"
        );
    }
    for n in [b, fresh, lagging, stale] {
        n.shutdown().await;
    }
}
