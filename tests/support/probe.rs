//! A foreign QUIC client: dials a node the way any TLS client would and
//! records the certificate chain the node presents, to check from
//! outside which certificate a node uses for new connections.
#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::rustls;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Records what the server presents and accepts it: the probe looks, it
/// does not join (it closes the connection as soon as it is made).
#[derive(Debug)]
struct Recorder {
    provider: Arc<rustls::crypto::CryptoProvider>,
    seen: Mutex<Vec<CertificateDer<'static>>>,
}

impl ServerCertVerifier for Recorder {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let mut seen = self.seen.lock().expect("recorder lock");
        seen.push(end_entity.clone().into_owned());
        seen.extend(intermediates.iter().map(|c| c.clone().into_owned()));
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("TLS 1.2 offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            m,
            c,
            d,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// A client certificate chain and its key.
pub type ClientCert = (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>);

/// The certificate chain (leaf first) the node at `addr` presents to a
/// new connection, as a foreign QUIC + TLS 1.3 client sees it. Without
/// `client` the node refuses the probe right after the handshake (and
/// counts an authentication failure).
pub async fn presented_chain(
    addr: SocketAddr,
    alpn: &[u8],
    client: Option<ClientCert>,
) -> Vec<CertificateDer<'static>> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let recorder = Arc::new(Recorder {
        provider: provider.clone(),
        seen: Mutex::default(),
    });
    let tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .expect("tls13")
        .dangerous()
        .with_custom_certificate_verifier(recorder.clone());
    let mut tls = match client {
        Some((chain, key)) => tls.with_client_auth_cert(chain, key).expect("client cert"),
        None => tls.with_no_client_auth(),
    };
    tls.alpn_protocols = vec![alpn.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls");
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("bind");
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(quic)));
    let connecting = ep.connect(addr, "quicmesh").expect("connect");
    // The client's side of the handshake completes before the node checks
    // (and refuses) the missing client certificate: the chain is recorded
    // by then either way.
    let _ = tokio::time::timeout(Duration::from_secs(15), connecting).await;
    ep.close(0u32.into(), b"probe done");
    let seen = recorder.seen.lock().expect("recorder lock").clone();
    assert!(!seen.is_empty(), "{addr} presented no certificate");
    seen
}
