//! rustls configurations and the certificate verifier.

use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ResolvesClientCert, Resumption};
use rustls::crypto::CryptoProvider;
use rustls::server::ResolvesServerCert;
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use webpki::KeyUsage;

use crate::ca::ClusterCa;
use crate::pki::{CertFiles, IssuedCert};
use crate::trust::{
    Trust, TrustCell, TrustVerifier, schemes, spki_fingerprint, tls12_refused, tls13_signature,
};
use crate::{AuthFailure, Cookie, IdentityError, NodeName, URI_PREFIX};

/// A node's identity: its name, its certificate (renewed in cookie mode)
/// and the CAs it trusts. Builds the rustls configs the transport uses.
///
/// Certificate, key and trust can be replaced while the node runs
/// ([`Identity::reload_files`], [`Identity::reload_cookies`]): the next
/// handshake uses them, established connections keep what they verified.
pub struct Identity {
    name: NodeName,
    provider: Arc<CryptoProvider>,
    leaf: Arc<LeafResolver>,
    trust: Arc<TrustCell>,
    /// Cookie mode: what mints this node's leaves.
    minter: RwLock<Option<Arc<Minter>>>,
}

/// Cookie mode: the CA that mints this node's leaves, their validity,
/// and during a rollover the bridge sent after each leaf.
#[derive(Debug)]
struct Minter {
    ca: Arc<ClusterCa>,
    bridge: Option<CertificateDer<'static>>,
    validity: Duration,
}

/// What a load produced, before it replaces the identity in force.
struct Loaded {
    trust: Trust,
    key: CertifiedKey,
    expires: SystemTime,
    minter: Option<Arc<Minter>>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field(
                "mode",
                &if self.minter().is_some() {
                    "cookie"
                } else {
                    "certificate"
                },
            )
            .field("ca_fingerprint", &self.ca_fingerprint())
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
        Self::from_cookies(name, cookie, None, leaf_validity)
    }

    /// Cookie mode during a rollover: leaves are minted by `cookie`'s CA,
    /// and peers still on the `previous` cookie are trusted too; they
    /// verify this node's leaves through a bridge certificate (see
    /// [`ClusterCa::bridge_from`]).
    pub fn from_cookies(
        name: NodeName,
        cookie: &Cookie,
        previous: Option<&Cookie>,
        leaf_validity: Duration,
    ) -> Result<Self, IdentityError> {
        let previous = previous.map(ClusterCa::from_cookie).transpose()?;
        Self::from_cluster_cas(
            name,
            Arc::new(ClusterCa::from_cookie(cookie)?),
            previous.map(Arc::new),
            leaf_validity,
        )
    }

    /// Cookie mode with an already derived CA.
    pub fn from_cluster_ca(
        name: NodeName,
        ca: Arc<ClusterCa>,
        leaf_validity: Duration,
    ) -> Result<Self, IdentityError> {
        Self::from_cluster_cas(name, ca, None, leaf_validity)
    }

    /// Cookie mode with already derived CAs: the current one and, during
    /// a rollover, the previous one.
    pub fn from_cluster_cas(
        name: NodeName,
        ca: Arc<ClusterCa>,
        previous: Option<Arc<ClusterCa>>,
        leaf_validity: Duration,
    ) -> Result<Self, IdentityError> {
        let provider = provider();
        let loaded = load_cluster_cas(&name, ca, previous, leaf_validity, &provider)?;
        Ok(Self::assemble(name, provider, loaded))
    }

    /// Certificate mode: loads the CA bundle, the node certificate, its
    /// key and the revocation list if one is named, and checks now that
    /// the certificate is issued by a CA of the bundle, is valid, is not
    /// revoked and names `name`.
    pub fn from_files(name: NodeName, files: &CertFiles) -> Result<Self, IdentityError> {
        let provider = provider();
        let loaded = load_files(&name, files, &provider)?;
        Ok(Self::assemble(name, provider, loaded))
    }

    fn assemble(name: NodeName, provider: Arc<CryptoProvider>, loaded: Loaded) -> Self {
        Self {
            name,
            leaf: Arc::new(LeafResolver::new(loaded.key, loaded.expires)),
            trust: Arc::new(TrustCell::new(loaded.trust)),
            minter: RwLock::new(loaded.minter),
            provider,
        }
    }

    /// Replaces this identity with the one `files` hold (CA bundle,
    /// certificate, key, revocation list), checked as
    /// [`Identity::from_files`] checks them. New handshakes use it at
    /// once; established connections are unaffected. On error nothing
    /// changes, and the error names the file that was refused.
    pub fn reload_files(&self, files: &CertFiles) -> Result<(), IdentityError> {
        let loaded = load_files(&self.name, files, &self.provider)?;
        self.install(loaded);
        Ok(())
    }

    /// Replaces this identity with a cookie-mode one: leaves minted by
    /// `cookie`'s CA, peers on `cookie` or on `previous` trusted. As
    /// [`Identity::reload_files`], new handshakes use it at once and on
    /// error nothing changes.
    pub fn reload_cookies(
        &self,
        cookie: &Cookie,
        previous: Option<&Cookie>,
    ) -> Result<(), IdentityError> {
        let validity = self
            .minter()
            .map_or(Duration::from_secs(24 * 3600), |m| m.validity);
        let ca = Arc::new(ClusterCa::from_cookie(cookie)?);
        let previous = previous.map(ClusterCa::from_cookie).transpose()?;
        let loaded = load_cluster_cas(
            &self.name,
            ca,
            previous.map(Arc::new),
            validity,
            &self.provider,
        )?;
        self.install(loaded);
        Ok(())
    }

    fn install(&self, loaded: Loaded) {
        // Held while the leaf changes, so a renewal by the minter being
        // replaced cannot put its leaf back afterwards.
        let mut minter = self.minter.write().unwrap_or_else(|e| e.into_inner());
        // Trust first: a peer's certificate minted by the new CA must not
        // be refused while this node already presents one.
        self.trust.set(loaded.trust);
        *minter = loaded.minter;
        self.leaf.set(loaded.key, loaded.expires);
    }

    fn minter(&self) -> Option<Arc<Minter>> {
        self.minter
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// This node's name.
    pub fn name(&self) -> &NodeName {
        &self.name
    }

    /// A short fingerprint of the trusted CA's public key (the first CA
    /// of a bundle; the current cookie's CA): equal on every node of a
    /// cluster; safe to log and advertise. It changes when a reload
    /// changes that CA.
    pub fn ca_fingerprint(&self) -> String {
        self.trust.get().fingerprint().to_owned()
    }

    /// When this node's current certificate expires.
    pub fn leaf_expires(&self) -> SystemTime {
        self.leaf.get().1
    }

    /// The certificate chain this node presents now, leaf first.
    pub fn certificate_chain(&self) -> Vec<CertificateDer<'static>> {
        self.leaf.get().0.cert.clone()
    }

    /// Checks a peer's certificate chain, as presented at its handshake,
    /// against the trust in force now (after a reload: the new CAs and
    /// revocation lists).
    pub fn check_peer(&self, certs: &[CertificateDer<'_>]) -> Result<(), AuthFailure> {
        let (leaf, intermediates) = certs.split_first().ok_or(AuthFailure::NoNodeName)?;
        let trust = self.trust.get();
        let now = UnixTime::now();
        // A node is both client and server; either purpose proves it.
        let as_client = trust.verify(
            &self.provider,
            leaf,
            intermediates,
            now,
            KeyUsage::client_auth(),
        );
        let as_server = || {
            trust.verify(
                &self.provider,
                leaf,
                intermediates,
                now,
                KeyUsage::server_auth(),
            )
        };
        match as_client.or_else(|_| as_server()) {
            Ok(()) => Ok(()),
            Err(e) => Err(auth_failure(&e)),
        }
    }

    /// Cookie mode: mints a new leaf when less than a third of the current
    /// one's validity is left; returns whether it did. New handshakes use
    /// the new leaf, established connections are unaffected. Certificate
    /// mode never renews (returns `false`).
    pub fn renew_if_due(&self, now: SystemTime) -> Result<bool, IdentityError> {
        // Held until the new leaf is in place: a reload waits for it.
        let guard = self.minter.read().unwrap_or_else(|e| e.into_inner());
        let Some(minter) = guard.as_ref() else {
            return Ok(false);
        };
        let left = self.leaf_expires().duration_since(now).unwrap_or_default();
        if left > minter.validity / 3 {
            return Ok(false);
        }
        let (key, expires) = minter.mint(&self.name, &self.provider)?;
        self.leaf.set(key, expires);
        Ok(true)
    }

    /// The listener's config: TLS 1.3 only, a client certificate issued by
    /// a trusted CA is required (checked against the trust in force at
    /// each handshake), ALPN `quicmesh/2`, no resumption tickets. The
    /// peer's node name is read afterwards with [`peer_name`].
    pub fn server_config(&self) -> Result<rustls::ServerConfig, IdentityError> {
        let verifier = Arc::new(TrustVerifier {
            trust: self.trust.clone(),
            provider: self.provider.clone(),
        });
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
    /// must verify to a trusted CA, not be revoked, *and* its certificate
    /// must name `expected`. Session resumption is off: a resumed session
    /// would skip this verifier. The returned [`DialVerdict`] tells, after
    /// a failed dial, why this side refused the peer.
    pub fn client_config(
        &self,
        expected: &NodeName,
    ) -> Result<(rustls::ClientConfig, DialVerdict), IdentityError> {
        let verdict = DialVerdict::default();
        let verifier = Arc::new(NodeVerifier {
            expected: expected.clone(),
            trust: self.trust.get(),
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

impl Minter {
    /// A fresh leaf, followed by the bridge during a rollover.
    fn mint(
        &self,
        name: &NodeName,
        provider: &CryptoProvider,
    ) -> Result<(CertifiedKey, SystemTime), IdentityError> {
        let issued = self.ca.mint_leaf(name, self.validity)?;
        let expires = expiry_of(&issued.cert);
        let key = issued_key(&issued, self.bridge.clone(), provider)?;
        Ok((key, expires))
    }
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Cookie mode: trusts `ca` (and `previous`), mints a first leaf.
fn load_cluster_cas(
    name: &NodeName,
    ca: Arc<ClusterCa>,
    previous: Option<Arc<ClusterCa>>,
    validity: Duration,
    provider: &CryptoProvider,
) -> Result<Loaded, IdentityError> {
    let mut cas = vec![ca.certificate().clone()];
    let mut bridge = None;
    if let Some(previous) = previous.filter(|p| p.fingerprint() != ca.fingerprint()) {
        cas.push(previous.certificate().clone());
        bridge = Some(ca.bridge_from(&previous)?);
    }
    let trust = Trust::new(&cas, ca.fingerprint().to_owned())?;
    let minter = Minter {
        ca,
        bridge,
        validity,
    };
    let (key, expires) = minter.mint(name, provider)?;
    Ok(Loaded {
        trust,
        key,
        expires,
        minter: Some(Arc::new(minter)),
    })
}

/// Certificate mode: reads and checks every file of `files`.
fn load_files(
    name: &NodeName,
    files: &CertFiles,
    provider: &CryptoProvider,
) -> Result<Loaded, IdentityError> {
    let (cas, chain, key) = files.read()?;
    let mut trust =
        Trust::new(&cas, spki_fingerprint(&cas[0])).map_err(|e| IdentityError::BadPem {
            path: files.ca.clone(),
            what: format!("not a usable CA certificate: {e}"),
        })?;
    if let Some(crl) = &files.crl {
        trust.add_crls(crl, &files.ca, &cas)?;
    }
    trust
        .verify(
            provider,
            &chain[0],
            &chain[1..],
            UnixTime::now(),
            KeyUsage::server_auth(),
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
            expected: name.clone(),
            found,
        });
    }
    let expires = expiry_of(&chain[0]);
    let key = CertifiedKey::from_der(chain, key, provider).map_err(|e| match e {
        rustls::Error::InconsistentKeys(_) => IdentityError::KeyMismatch {
            cert: files.cert.clone(),
            key: files.key.clone(),
        },
        other => IdentityError::BadPem {
            path: files.key.clone(),
            what: format!("not a usable private key: {other}"),
        },
    })?;
    Ok(Loaded {
        trust,
        key,
        expires,
        minter: None,
    })
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
            CertificateError::Revoked => AuthFailure::Revoked,
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
    trust: Arc<Trust>,
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
        let checked = self.trust.verify(
            &self.provider,
            end_entity,
            intermediates,
            now,
            KeyUsage::server_auth(),
        );
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
        tls12_refused()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        tls13_signature(&self.provider, message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        schemes(&self.provider)
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
    bridge: Option<CertificateDer<'static>>,
    provider: &CryptoProvider,
) -> Result<CertifiedKey, IdentityError> {
    let chain = std::iter::once(issued.cert.clone()).chain(bridge).collect();
    Ok(CertifiedKey::from_der(
        chain,
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
    fn a_rollover_leaf_verifies_under_either_cookie() {
        let (old, new) = (Cookie::new("old").unwrap(), Cookie::new("new").unwrap());
        let day = Duration::from_secs(24 * 3600);
        let on_old = Identity::from_cookie(name("a@h"), &old, day).unwrap();
        let rolling = Identity::from_cookies(name("b@h"), &new, Some(&old), day).unwrap();
        let on_new = Identity::from_cookie(name("c@h"), &new, day).unwrap();
        let (old_chain, rolling_chain) = (on_old.certificate_chain(), rolling.certificate_chain());
        assert_eq!(rolling_chain.len(), 2, "leaf and bridge");
        assert_eq!(on_old.check_peer(&rolling_chain), Ok(()));
        assert_eq!(on_new.check_peer(&rolling_chain), Ok(()));
        assert_eq!(rolling.check_peer(&old_chain), Ok(()));
        assert_eq!(
            on_new.check_peer(&old_chain),
            Err(AuthFailure::UnknownIssuer)
        );
        // Without the bridge, the old cookie's nodes refuse the new leaf.
        assert_eq!(
            on_old.check_peer(&rolling_chain[..1]),
            Err(AuthFailure::UnknownIssuer)
        );
        rolling.reload_cookies(&new, None).unwrap();
        assert_eq!(rolling.certificate_chain().len(), 1);
        assert_eq!(
            rolling.check_peer(&old_chain),
            Err(AuthFailure::UnknownIssuer)
        );
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
