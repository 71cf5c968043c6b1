//! Authentication with real nodes: cookies, certificate mode, and peers
//! that present a bad certificate or none.

#[path = "../support/mod.rs"]
mod support;

use quicmesh::identity::{CertificateAuthority, IssuedCert, write_issued};
use quicmesh::{AuthFailure, CertFiles, ConnectError, Node};
use std::sync::Arc;
use support::*;

#[tokio::test]
async fn different_cookie_is_refused_on_both_sides() {
    bounded(async {
        let a = node("a", "cookie-one").await;
        let b = node("b", "cookie-two").await;
        let (mut ea, mut eb) = (a.events(), b.events());
        let err = b.connect(&a.addr()).await.unwrap_err();
        match &err {
            ConnectError::AuthenticationFailed { peer, reason } => {
                assert_eq!(peer, a.name());
                assert_eq!(*reason, AuthFailure::UnknownIssuer);
            }
            other => panic!("expected AuthenticationFailed, got {other}"),
        }
        assert!(err.to_string().contains("another cookie"), "{err}");
        // The listener counts (and logs) the refusal.
        eventually("listener counted the refusal", || {
            a.status().counters.auth_failures == 1
        })
        .await;
        assert!(a.nodes().is_empty() && b.nodes().is_empty());
        assert!(
            drain(&mut ea).is_empty() && drain(&mut eb).is_empty(),
            "no NodeUp anywhere"
        );
        assert!(!err.is_transient());
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

/// A CA and the certificate files of nodes it issued, in a temp dir.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertificateAuthority,
}

impl Pki {
    fn new(cn: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = CertificateAuthority::generate(cn, 30).expect("CA");
        ca.write_dir(dir.path(), false).expect("write CA");
        Self { dir, ca }
    }

    fn files(&self, node: &str) -> CertFiles {
        let name = name(node);
        let issued = self.ca.issue(&name, 30).expect("issue");
        write_issued(&issued, self.dir.path(), &name, true).expect("write");
        CertFiles::in_dir(self.dir.path(), &name)
    }

    async fn node(&self, node: &str) -> Node {
        Node::builder()
            .name(node)
            .listen("127.0.0.1:0".parse().expect("addr"))
            .certificates(self.files(node))
            .start()
            .await
            .expect("cert-mode node starts")
    }
}

#[tokio::test]
async fn certificate_mode_connects_nodes_of_one_ca() {
    bounded(async {
        let pki = Pki::new("test CA");
        let a = pki.node("a@127.0.0.1").await;
        let b = pki.node("b@127.0.0.1").await;
        b.connect(&a.addr()).await.expect("connect");
        a.wait_for_nodes(1, WAIT).await.expect("a sees b");
        assert_eq!(a.nodes(), vec![b.name().clone()]);
        a.shutdown().await;
        b.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn certificate_from_another_ca_is_refused() {
    bounded(async {
        let ours = Pki::new("our CA");
        let theirs = Pki::new("their CA");
        let a = ours.node("a@127.0.0.1").await;
        let x = theirs.node("x@127.0.0.1").await;
        let err = a.connect(&x.addr()).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ConnectError::AuthenticationFailed {
                    reason: AuthFailure::UnknownIssuer,
                    ..
                }
            ),
            "{err}"
        );
        let err = x.connect(&a.addr()).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ConnectError::AuthenticationFailed {
                    reason: AuthFailure::UnknownIssuer,
                    ..
                }
            ),
            "{err}"
        );
        eventually("both listeners counted a refusal", || {
            a.status().counters.auth_failures >= 1 && x.status().counters.auth_failures >= 1
        })
        .await;
        assert!(a.nodes().is_empty() && x.nodes().is_empty());
        a.shutdown().await;
        x.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn certificate_naming_another_node_than_dialled_is_refused() {
    bounded(async {
        let pki = Pki::new("test CA");
        let a = pki.node("a@127.0.0.1").await;
        let c = pki.node("c@127.0.0.1").await;
        // Dial c's address under another name.
        let wrong = quicmesh::NodeAddr::new(name("d@127.0.0.1"), c.local_addr().port());
        let err = a.connect(&wrong).await.unwrap_err();
        match &err {
            ConnectError::AuthenticationFailed {
                reason: AuthFailure::NameMismatch { expected, found },
                ..
            } => {
                assert_eq!(expected, &name("d@127.0.0.1"));
                assert_eq!(found, &vec!["c@127.0.0.1".to_owned()]);
            }
            other => panic!("expected NameMismatch, got {other}"),
        }
        assert!(
            err.to_string()
                .contains("expected d@127.0.0.1, certificate names c@127.0.0.1"),
            "{err}"
        );
        assert!(a.nodes().is_empty() && c.nodes().is_empty());
        a.shutdown().await;
        c.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn node_refuses_to_start_with_a_certificate_for_another_name() {
    bounded(async {
        let pki = Pki::new("test CA");
        let err = Node::builder()
            .name("b@127.0.0.1")
            .listen("127.0.0.1:0".parse().expect("addr"))
            .certificates(pki.files("a@127.0.0.1"))
            .start()
            .await
            .unwrap_err();
        assert!(err.to_string().contains("names"), "{err}");
    })
    .await;
}

fn expired(pki: &Pki, node: &str) -> IssuedCert {
    let now = time::OffsetDateTime::now_utc();
    pki.ca
        .issue_with_validity(
            &name(node),
            now - time::Duration::days(10),
            now - time::Duration::days(1),
        )
        .expect("issue expired")
}

/// A bare QUIC server presenting `cert` (no quicmesh behind it), for the
/// cases a real node refuses to start with.
fn raw_server(cert: &IssuedCert) -> quinn::Endpoint {
    let mut tls = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_protocol_versions(&[&rustls::version::TLS13])
    .expect("tls13")
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.clone()], cert.key.clone_key().into())
    .expect("cert");
    tls.alpn_protocols = vec![quicmesh_wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).expect("quic tls");
    let server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    quinn::Endpoint::server(server, "127.0.0.1:0".parse().expect("addr")).expect("bind")
}

#[tokio::test]
async fn expired_certificate_is_refused() {
    bounded(async {
        let pki = Pki::new("test CA");
        let a = pki.node("a@127.0.0.1").await;
        // A peer presenting an expired certificate from the right CA.
        let server = raw_server(&expired(&pki, "e@127.0.0.1"));
        let accept = tokio::spawn({
            let server = server.clone();
            async move {
                if let Some(inc) = server.accept().await {
                    let _ = inc.await;
                }
            }
        });
        let addr = quicmesh::NodeAddr::new(
            name("e@127.0.0.1"),
            server.local_addr().expect("addr").port(),
        );
        let err = a.connect(&addr).await.unwrap_err();
        assert!(
            matches!(
                &err,
                ConnectError::AuthenticationFailed {
                    reason: AuthFailure::Expired,
                    ..
                }
            ),
            "{err}"
        );
        accept.abort();

        // And a node will not start with an expired certificate of its own.
        let e = expired(&pki, "e@127.0.0.1");
        write_issued(&e, pki.dir.path(), &name("e@127.0.0.1"), true).expect("write");
        let err = Node::builder()
            .name("e@127.0.0.1")
            .listen("127.0.0.1:0".parse().expect("addr"))
            .certificates(CertFiles::in_dir(pki.dir.path(), &name("e@127.0.0.1")))
            .start()
            .await
            .unwrap_err();
        assert!(err.to_string().to_lowercase().contains("expired"), "{err}");
        a.shutdown().await;
    })
    .await;
}

/// Accepts any server certificate: this test client plays an attacker
/// without credentials, so it does not care whom it talks to.
#[derive(Debug)]
struct AnyServer(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls::pki_types::CertificateDer<'_>,
        _: &[rustls::pki_types::CertificateDer<'_>],
        _: &rustls::pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls::pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

async fn raw_dial(node: &Node, client_cert: Option<&IssuedCert>) -> quinn::ConnectionError {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyServer(provider)));
    let mut tls = match client_cert {
        None => builder.with_no_client_auth(),
        Some(c) => builder
            .with_client_auth_cert(vec![c.cert.clone()], c.key.clone_key().into())
            .expect("client cert"),
    };
    tls.alpn_protocols = vec![quicmesh_wire::ALPN.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connecting = ep.connect(node.local_addr(), "quicmesh").expect("connect");
    let result = tokio::time::timeout(WAIT, async {
        match connecting.await {
            // QUIC lets the client finish first; the refusal arrives as a close.
            Ok(conn) => conn.closed().await,
            Err(e) => e,
        }
    })
    .await
    .expect("the node closed the connection");
    ep.close(0u32.into(), b"");
    result
}

fn tls_alert(e: &quinn::ConnectionError) -> Option<u64> {
    let code = match e {
        quinn::ConnectionError::ConnectionClosed(c) => u64::from(c.error_code),
        quinn::ConnectionError::TransportError(t) => u64::from(t.code),
        _ => return None,
    };
    (0x100..0x200).contains(&code).then(|| code - 0x100)
}

#[tokio::test]
async fn client_without_certificate_is_refused() {
    bounded(async {
        let a = node("a", "cookie").await;
        let mut ea = a.events();
        let err = raw_dial(&a, None).await;
        // TLS alert 116: certificate required.
        assert_eq!(tls_alert(&err), Some(116), "{err}");
        eventually("refusal counted", || a.status().counters.auth_failures == 1).await;
        assert!(a.nodes().is_empty() && drain(&mut ea).is_empty());
        a.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn client_with_expired_certificate_is_refused_by_the_listener() {
    bounded(async {
        let pki = Pki::new("test CA");
        let a = pki.node("a@127.0.0.1").await;
        let err = raw_dial(&a, Some(&expired(&pki, "e@127.0.0.1"))).await;
        // TLS alert 45: certificate expired.
        assert_eq!(tls_alert(&err), Some(45), "{err}");
        eventually("refusal counted", || a.status().counters.auth_failures == 1).await;
        assert!(a.nodes().is_empty());
        a.shutdown().await;
    })
    .await;
}

#[tokio::test]
async fn ca_signed_certificate_without_node_name_is_refused() {
    bounded(async {
        let pki = Pki::new("test CA");
        let a = pki.node("a@127.0.0.1").await;
        // Signed by the right CA but carrying only a DNS name.
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("params");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        ];
        let ca_key = rcgen::KeyPair::from_pem(
            &std::fs::read_to_string(pki.dir.path().join("ca.key")).expect("ca key"),
        )
        .expect("parse");
        let issuer = rcgen::Issuer::from_ca_cert_der(pki.ca.certificate(), ca_key).expect("issuer");
        let cert = params.signed_by(&key, &issuer).expect("sign");
        let nameless = IssuedCert {
            cert: cert.der().clone(),
            key: rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()),
        };
        let err = raw_dial(&a, Some(&nameless)).await;
        match &err {
            quinn::ConnectionError::ApplicationClosed(c) => assert_eq!(
                quicmesh_wire::CloseCode::from_code(c.error_code.into_inner()),
                quicmesh_wire::CloseCode::NotAuthenticated
            ),
            other => panic!("expected NotAuthenticated close, got {other}"),
        }
        assert_eq!(a.status().counters.auth_failures, 1);
        assert!(a.nodes().is_empty());
        a.shutdown().await;
    })
    .await;
}
