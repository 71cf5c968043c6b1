//! rustls configurations and the certificate verifier.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::{ParsedCertificate, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

use crate::ca::{ClusterCa, short_fingerprint};
use crate::pki::{CertFiles, IssuedCert};
use crate::{AuthFailure, Cookie, IdentityError, NodeName, URI_PREFIX};

/// A node's identity: its name, its certificate (renewed in cookie mode)
/// and the CA it trusts. Builds the rustls configs the transport uses.
pub struct Identity {
    name: NodeName,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    leaf: Arc<LeafResolver>,
    /// Cookie mode: the CA that mints this node's leaves, and their validity.
    minter: Option<(Arc<ClusterCa>, Duration)>,
    ca_fingerprint: String,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field(
                "mode",
                &if self.minter.is_some() {
                    "cookie"
                } else {
                    "certificate"
                },
            )
            .field("ca_fingerprint", &self.ca_fingerprint)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// Cookie mode: derives the cluster CA from `cookie` and mints a leaf
    /// for `name` valid for `leaf_validity`.
    pub fn from_cookie(
        name: NodeName,
        cookie: &Cookie,
        leaf_validity: Duration,
    ) -> Result<Self, IdentityError> {
        Self::from_cluster_ca(
            name,
            Arc::new(ClusterCa::from_cookie(cookie)?),
            leaf_validity,
        )
    }

    /// Cookie mode with an already derived CA.
    pub fn from_cluster_ca(
        name: NodeName,
        ca: Arc<ClusterCa>,
        leaf_validity: Duration,
    ) -> Result<Self, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let issued = ca.mint_leaf(&name, leaf_validity)?;
        let leaf = LeafResolver::new(issued_key(&issued, &provider)?, expiry_of(&issued.cert));
        let mut roots = RootCertStore::empty();
        roots.add(ca.certificate().clone())?;
        Ok(Self {
            name,
            roots: Arc::new(roots),
            provider,
            leaf: Arc::new(leaf),
            ca_fingerprint: ca.fingerprint().to_owned(),
            minter: Some((ca, leaf_validity)),
        })
    }

    /// Certificate mode: loads the CA, the node certificate and its key,
    /// and checks now that the certificate is issued by that CA, is valid
    /// and names `name`.
    pub fn from_files(name: NodeName, files: &CertFiles) -> Result<Self, IdentityError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let (ca, chain, key) = files.read()?;
        let mut roots = RootCertStore::empty();
        roots.add(ca.clone()).map_err(|e| IdentityError::BadPem {
            path: files.ca.clone(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
        let parsed = ParsedCertificate::try_from(&chain[0])?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &chain[1..],
            UnixTime::now(),
            provider.signature_verification_algorithms.all,
        )
        .map_err(|e| IdentityError::CertNotValid {
            path: files.cert.clone(),
            ca: files.ca.clone(),
            reason: e.to_string(),
        })?;
        let found = uri_names(&chain[0]);
        if !found.iter().any(|n| n == name.as_str()) {
            return Err(IdentityError::CertNamesOtherNode {
                path: files.cert.clone(),
                expected: name,
                found,
            });
        }
        let expires = expiry_of(&chain[0]);
        let key = CertifiedKey::from_der(chain, key, &provider).map_err(|e| match e {
            rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch {
                cert: files.cert.clone(),
                key: files.key.clone(),
            },
            other => IdentityError::BadPem {
                path: files.key.clone(),
                what: format!("not a usable private key: {other}"),
            },
        })?;
        Ok(Self {
            name,
            roots: Arc::new(roots),
            leaf: Arc::new(LeafResolver::new(key, expires)),
            ca_fingerprint: spki_fingerprint(&ca),
            provider,
            minter: None,
        })
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// A short fingerprint of the trusted CA's public key: equal on every
    /// node of a cluster; safe to log and advertise.
    pub fn ca_fingerprint(&self) -> &str {
        &self.ca_fingerprint
    }

    /// When this node's current certificate expires.
    pub fn leaf_expires(&self) -> SystemTime {
        self.leaf.get().1
    }

    /// Cookie mode: mints a new leaf when less than a third of the current
    /// one's validity is left; returns whether it did. New handshakes use
    /// the new leaf, established connections are unaffected. Certificate
    /// mode never renews (returns `false`).
    pub fn renew_if_due(&self, now: SystemTime) -> Result<bool, IdentityError> {
        let Some((ca, validity)) = &self.minter else {
            return Ok(false);
        };
        let left = self.leaf_expires().duration_since(now).unwrap_or_default();
        if left > *validity / 3 {
            return Ok(false);
        }
        let issued = ca.mint_leaf(&self.name, *validity)?;
        self.leaf.set(
            issued_key(&issued, &self.provider)?,
            expiry_of(&issued.cert),
        );
        Ok(true)
    }

    /// The listener's config: TLS 1.3 only, a client certificate issued by
    /// the trusted CA is required, ALPN `quicmesh/2`, no resumption
    /// tickets. The peer's node name is read afterwards with [`peer_name`].
    pub fn server_config(&self) -> Result<rustls::ServerConfig, IdentityError> {
        let verifier =
            WebPkiClientVerifier::builder_with_provider(self.roots.clone(), self.provider.clone())
                .build()
                .map_err(|e| rustls::Error::General(e.to_string()))?;
        let mut cfg = rustls::ServerConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(verifier)
            .with_cert_resolver(self.leaf.clone());
        cfg.alpn_protocols = vec![quicmesh_wire::ALPN.to_vec()];
        cfg.send_tls13_tickets = 0;
        cfg.max_early_data_size = 0;
        Ok(cfg)
    }

    /// A dialler's config for one dial to `expected`: the server's chain
    /// must verify to the trusted CA *and* its certificate must name
    /// `expected`. Session resumption is off: a resumed session would skip
    /// this verifier. The returned [`DialVerdict`] tells, after a failed
    /// dial, why this side refused the peer.
    pub fn client_config(
        &self,
        expected: &NodeName,
    ) -> Result<(rustls::ClientConfig, DialVerdict), IdentityError> {
        let verdict = DialVerdict::default();
        let verifier = Arc::new(NodeVerifier {
            expected: expected.clone(),
            roots: self.roots.clone(),
            provider: self.provider.clone(),
            verdict: verdict.clone(),
        });
        let mut cfg = rustls::ClientConfig::builder_with_provider(self.provider.clone())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_client_cert_resolver(self.leaf.clone());
        cfg.alpn_protocols = vec![quicmesh_wire::ALPN.to_vec()];
        cfg.resumption = Resumption::disabled();
        cfg.enable_early_data = false;
        Ok((cfg, verdict))
    }
}

/// Why the dialler's verifier refused a peer, filled in during the
/// handshake (empty if it accepted the peer, or never ran).
#[derive(Debug, Clone, Default)]
pub struct DialVerdict(Arc<Mutex<Option<AuthFailure>>>);

impl DialVerdict {
    /// The refusal, if the verifier refused.
    pub fn failure(&self) -> Option<AuthFailure> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, f: AuthFailure) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }
}

/// The node name a verified peer certificate carries (its URI SAN
/// `quicmesh:node/<name>`). Call it only on a chain the TLS layer verified.
pub fn peer_name(certs: &[CertificateDer<'_>]) -> Result<NodeName, AuthFailure> {
    let leaf = certs.first().ok_or(AuthFailure::NoNodeName)?;
    uri_names(leaf)
        .into_iter()
        .find_map(|n| n.parse().ok())
        .ok_or(AuthFailure::NoNodeName)
}

/// The node names (URI SANs with the quicmesh prefix) in a certificate.
fn uri_names(cert: &CertificateDer<'_>) -> Vec<String> {
    let Ok(ee) = webpki::EndEntityCert::try_from(cert) else {
        return Vec::new();
    };
    ee.valid_uri_names()
        .filter_map(|u| u.strip_prefix(URI_PREFIX).map(str::to_owned))
        .collect()
}

fn auth_failure(e: &rustls::Error) -> AuthFailure {
    match e {
        rustls::Error::InvalidCertificate(c) => match c {
            CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                AuthFailure::UnknownIssuer
            }
            CertificateError::Expired | CertificateError::ExpiredContext { .. } => {
                AuthFailure::Expired
            }
            CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                AuthFailure::NotYetValid
            }
            other => AuthFailure::BadCertificate(format!("{other:?}")),
        },
        other => AuthFailure::BadCertificate(other.to_string()),
    }
}

/// The dialler's verifier: chain to the trusted CA, then the URI SAN must
/// name the node being dialled.
#[derive(Debug)]
struct NodeVerifier {
    expected: NodeName,
    roots: Arc<RootCertStore>,
    provider: Arc<CryptoProvider>,
    verdict: DialVerdict,
}

impl ServerCertVerifier for NodeVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let checked = ParsedCertificate::try_from(end_entity).and_then(|parsed| {
            rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &self.roots,
                intermediates,
                now,
                self.provider.signature_verification_algorithms.all,
            )
        });
        if let Err(e) = checked {
            self.verdict.set(auth_failure(&e));
            return Err(e);
        }
        let found = uri_names(end_entity);
        if !found.iter().any(|n| n == self.expected.as_str()) {
            self.verdict.set(if found.is_empty() {
                AuthFailure::NoNodeName
            } else {
                AuthFailure::NameMismatch {
                    expected: self.expected.clone(),
                    found,
                }
            });
            return Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        // The configs allow TLS 1.3 only; a TLS 1.2 signature is a bug.
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The node's current certificate, swapped on renewal; serves both the
/// server and the client side of every handshake.
#[derive(Debug)]
struct LeafResolver(RwLock<(Arc<CertifiedKey>, SystemTime)>);

impl LeafResolver {
    fn new(key: CertifiedKey, expires: SystemTime) -> Self {
        Self(RwLock::new((Arc::new(key), expires)))
    }

    fn get(&self) -> (Arc<CertifiedKey>, SystemTime) {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn set(&self, key: CertifiedKey, expires: SystemTime) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = (Arc::new(key), expires);
    }
}

impl ResolvesServerCert for LeafResolver {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.get().0)
    }
}

impl ResolvesClientCert for LeafResolver {
    fn resolve(&self, _hints: &[&[u8]], _schemes: &[SignatureScheme]) -> Option<Arc<CertifiedKey>> {
        Some(self.get().0)
    }

    fn has_certs(&self) -> bool {
        true
    }
}

fn issued_key(
    issued: &IssuedCert,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, IdentityError> {
    Ok(CertifiedKey::from_der(
        vec![issued.cert.clone()],
        PrivateKeyDer::Pkcs8(issued.key.clone_key()),
        provider,
    )?)
}

fn expiry_of(cert: &CertificateDer<'_>) -> SystemTime {
    x509_parser::parse_x509_certificate(cert)
        .ok()
        .and_then(|(_, x)| u64::try_from(x.validity().not_after.timestamp()).ok())
        .map_or(SystemTime::UNIX_EPOCH, |s| {
            SystemTime::UNIX_EPOCH + Duration::from_secs(s)
        })
}

fn spki_fingerprint(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, x)) => short_fingerprint(&x.public_key().subject_public_key.data),
        Err(_) => short_fingerprint(cert),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::CertificateAuthority;

    fn name(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    #[test]
    fn cookie_leaf_names_the_node() {
        let id = Identity::from_cookie(
            name("a@h"),
            &Cookie::new("c").unwrap(),
            Duration::from_secs(3600),
        )
        .unwrap();
        let (key, expires) = id.leaf.get();
        assert_eq!(peer_name(&key.cert).unwrap(), name("a@h"));
        assert!(expires > SystemTime::now() + Duration::from_secs(3000));
        assert!(!id.renew_if_due(SystemTime::now()).unwrap());
        assert!(
            id.renew_if_due(SystemTime::now() + Duration::from_secs(3000))
                .unwrap()
        );
        assert_ne!(id.leaf.get().0.cert, key.cert);
        id.server_config().unwrap();
        id.client_config(&name("b@h")).unwrap();
    }

    #[test]
    fn cert_files_checked_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca = CertificateAuthority::generate("test CA", 30).unwrap();
        ca.write_dir(dir.path(), false).unwrap();
        let issued = ca.issue(&name("a@h"), 30).unwrap();
        crate::write_issued(&issued, dir.path(), &name("a@h"), false).unwrap();
        let files = CertFiles::in_dir(dir.path(), &name("a@h"));
        Identity::from_files(name("a@h"), &files).unwrap();
        let err = Identity::from_files(name("b@h"), &files).unwrap_err();
        assert!(
            matches!(err, IdentityError::CertNamesOtherNode { .. }),
            "{err}"
        );
        // Another CA's certificate is refused at load.
        let other = CertificateAuthority::generate("other CA", 30).unwrap();
        let dir2 = tempfile::tempdir().unwrap();
        other.write_dir(dir2.path(), false).unwrap();
        let files2 = CertFiles {
            ca: dir2.path().join("ca.pem"),
            ..files
        };
        let err = Identity::from_files(name("a@h"), &files2).unwrap_err();
        assert!(matches!(err, IdentityError::CertNotValid { .. }), "{err}");
        // Files are not overwritten without force.
        assert!(matches!(
            ca.write_dir(dir.path(), false),
            Err(IdentityError::Exists(_))
        ));
        ca.write_dir(dir.path(), true).unwrap();
    }
}
