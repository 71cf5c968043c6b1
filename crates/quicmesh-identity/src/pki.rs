//! Certificate mode: a CA and node certificates in PEM files.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use time::OffsetDateTime;

use crate::{IdentityError, NodeName, node_uri};

/// A node certificate and its private key.
#[derive(Debug)]
pub struct IssuedCert {
    /// The certificate, DER.
    pub cert: CertificateDer<'static>,
    /// The private key, PKCS#8 DER.
    pub key: PrivatePkcs8KeyDer<'static>,
}

impl IssuedCert {
    /// The certificate as PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// The private key as PEM.
    pub fn key_pem(&self) -> String {
        pem_encode("PRIVATE KEY", self.key.secret_pkcs8_der())
    }
}

/// A certificate authority for certificate mode (`quicmesh certs`).
pub struct CertificateAuthority {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
}

impl std::fmt::Debug for CertificateAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertificateAuthority")
            .finish_non_exhaustive()
    }
}

impl CertificateAuthority {
    /// File name of the CA certificate in a certs directory.
    pub const CERT_FILE: &'static str = "ca.pem";
    /// File name of the CA key in a certs directory.
    pub const KEY_FILE: &'static str = "ca.key";

    /// A new CA (P-256) named `common_name`, valid for `days`.
    pub fn generate(common_name: &str, days: u32) -> Result<Self, IdentityError> {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
        let mut params = CertificateParams::default();
        params
            .distinguished_name
            .push(DnType::OrganizationName, "quicmesh");
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + time::Duration::days(days.into());
        params.serial_number = Some(random_serial());
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert,
        })
    }

    /// Loads a CA from its certificate and key PEM files.
    pub fn load(cert_path: &Path, key_path: &Path) -> Result<Self, IdentityError> {
        let cert = read_certs(cert_path, "CA certificate")?
            .into_iter()
            .next()
            .ok_or_else(|| bad_pem(cert_path, "no certificate in file"))?;
        let key_pem = read_key(key_path, "CA key")?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad_pem(key_path, &e.to_string()))?;
        let issuer =
            Issuer::from_ca_cert_der(&cert, key).map_err(|e| bad_pem(cert_path, &e.to_string()))?;
        Ok(Self { issuer, cert })
    }

    /// Loads `ca.pem` and `ca.key` from `dir`.
    pub fn load_dir(dir: &Path) -> Result<Self, IdentityError> {
        Self::load(&dir.join(Self::CERT_FILE), &dir.join(Self::KEY_FILE))
    }

    /// Writes `ca.pem` (0644) and `ca.key` (0600) into `dir`, creating it;
    /// refuses to overwrite unless `force`.
    pub fn write_dir(&self, dir: &Path, force: bool) -> Result<(PathBuf, PathBuf), IdentityError> {
        fs::create_dir_all(dir).map_err(|source| IdentityError::Io {
            role: "certificate directory",
            path: dir.to_owned(),
            source,
        })?;
        let cert = dir.join(Self::CERT_FILE);
        let key = dir.join(Self::KEY_FILE);
        refuse_existing(&[&cert, &key], force)?;
        write_file(&key, "CA key", &self.issuer.key().serialize_pem(), 0o600)?;
        write_file(&cert, "CA certificate", &self.cert_pem(), 0o644)?;
        Ok((cert, key))
    }

    /// The CA certificate, DER.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// The CA certificate, PEM.
    pub fn cert_pem(&self) -> String {
        pem_encode("CERTIFICATE", &self.cert)
    }

    /// Issues a certificate for `name` valid from five minutes ago for `days`.
    pub fn issue(&self, name: &NodeName, days: u32) -> Result<IssuedCert, IdentityError> {
        let now = OffsetDateTime::now_utc();
        issue_node_cert(
            &self.issuer,
            name,
            now - time::Duration::minutes(5),
            now + time::Duration::days(days.into()),
        )
    }

    /// Signs a revocation list.
    pub fn sign_crl(
        &self,
        params: &rcgen::CertificateRevocationListParams,
    ) -> Result<String, IdentityError> {
        Ok(params.signed_by(&self.issuer)?.pem()?)
    }

    /// Issues a certificate for `name` with an explicit validity window
    /// (for tests of expired and not-yet-valid certificates).
    pub fn issue_with_validity(
        &self,
        name: &NodeName,
        not_before: OffsetDateTime,
        not_after: OffsetDateTime,
    ) -> Result<IssuedCert, IdentityError> {
        issue_node_cert(&self.issuer, name, not_before, not_after)
    }
}

/// Writes a node certificate as `<dir>/<name>.pem` (0644) and
/// `<dir>/<name>.key` (0600); refuses to overwrite unless `force`.
pub fn write_issued(
    issued: &IssuedCert,
    dir: &Path,
    name: &NodeName,
    force: bool,
) -> Result<(PathBuf, PathBuf), IdentityError> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}.key"));
    refuse_existing(&[&cert, &key], force)?;
    write_file(&key, "node key", &issued.key_pem(), 0o600)?;
    write_file(&cert, "node certificate", &issued.cert_pem(), 0o644)?;
    Ok((cert, key))
}

/// The files of a certificate-mode identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertFiles {
    /// The CA certificates to trust (PEM): one, or two while a CA is
    /// being rotated.
    pub ca: PathBuf,
    /// This node's certificate, optionally followed by intermediates (PEM).
    pub cert: PathBuf,
    /// This node's private key (PEM, PKCS#8).
    pub key: PathBuf,
    /// Revocation lists of those CAs (PEM `X509 CRL`, as `quicmesh certs
    /// revoke` writes): peers whose certificates they list are refused.
    /// `None`: nothing is revoked.
    pub crl: Option<PathBuf>,
}

impl CertFiles {
    /// The files `quicmesh certs` writes for `name` in `dir`, without a
    /// revocation list.
    pub fn in_dir(dir: &Path, name: &NodeName) -> Self {
        Self {
            ca: dir.join(CertificateAuthority::CERT_FILE),
            cert: dir.join(format!("{name}.pem")),
            key: dir.join(format!("{name}.key")),
            crl: None,
        }
    }

    /// The same files with the revocation list `crl`.
    pub fn with_crl(mut self, crl: impl Into<PathBuf>) -> Self {
        self.crl = Some(crl.into());
        self
    }

    /// Reads the CA bundle, the node's chain and its key.
    pub(crate) fn read(
        &self,
    ) -> Result<
        (
            Vec<CertificateDer<'static>>,
            Vec<CertificateDer<'static>>,
            PrivateKeyDer<'static>,
        ),
        IdentityError,
    > {
        let ca = read_certs(&self.ca, "CA certificate")?;
        if ca.is_empty() {
            return Err(bad_pem(&self.ca, "no certificate in file"));
        }
        let chain = read_certs(&self.cert, "node certificate")?;
        if chain.is_empty() {
            return Err(bad_pem(&self.cert, "no certificate in file"));
        }
        let key_pem = read_key(&self.key, "node key")?;
        let key = KeyPair::from_pem(&key_pem).map_err(|e| bad_pem(&self.key, &e.to_string()))?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.serialize_der()));
        Ok((ca, chain, key))
    }
}

/// What `quicmesh certs show` prints about one certificate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CertInfo {
    /// Subject DN.
    pub subject: String,
    /// Issuer DN.
    pub issuer: String,
    /// Subject alternative names, as `URI:…`, `DNS:…`, `IP:…`.
    pub sans: Vec<String>,
    /// Start of validity (RFC 2822 text).
    pub not_before: String,
    /// End of validity.
    pub not_after: String,
    /// Whether it is a CA.
    pub is_ca: bool,
    /// SHA-256 of the DER, hex with colons.
    pub fingerprint: String,
    /// The serial number, lower-case hex (what `quicmesh certs revoke
    /// --serial` takes).
    pub serial: String,
}

/// Describes every certificate in a PEM file.
pub fn describe_pem(path: &Path) -> Result<Vec<CertInfo>, IdentityError> {
    let certs = read_certs(path, "certificate")?;
    if certs.is_empty() {
        return Err(bad_pem(path, "no certificate in file"));
    }
    certs
        .iter()
        .map(|der| {
            let (_, x) = x509_parser::parse_x509_certificate(der)
                .map_err(|e| bad_pem(path, &format!("not an X.509 certificate: {e}")))?;
            let sans = x
                .subject_alternative_name()
                .ok()
                .flatten()
                .map(|ext| {
                    ext.value
                        .general_names
                        .iter()
                        .map(|g| match g {
                            x509_parser::extensions::GeneralName::URI(u) => format!("URI:{u}"),
                            x509_parser::extensions::GeneralName::DNSName(d) => format!("DNS:{d}"),
                            x509_parser::extensions::GeneralName::IPAddress(ip) => {
                                format!("IP:{ip:?}")
                            }
                            other => format!("{other:?}"),
                        })
                        .collect()
                })
                .unwrap_or_default();
            let fp = ring::digest::digest(&ring::digest::SHA256, der);
            Ok(CertInfo {
                subject: x.subject().to_string(),
                issuer: x.issuer().to_string(),
                sans,
                not_before: x.validity().not_before.to_string(),
                not_after: x.validity().not_after.to_string(),
                is_ca: x.is_ca(),
                serial: x.raw_serial().iter().map(|b| format!("{b:02x}")).collect(),
                fingerprint: fp
                    .as_ref()
                    .iter()
                    .map(|b| format!("{b:02X}"))
                    .collect::<Vec<_>>()
                    .join(":"),
            })
        })
        .collect()
}

/// Builds and signs a node certificate: fresh P-256 key, URI SAN with the
/// node name, EKU server + client auth (every node is both), random serial.
pub(crate) fn issue_node_cert(
    issuer: &Issuer<'_, KeyPair>,
    name: &NodeName,
    not_before: OffsetDateTime,
    not_after: OffsetDateTime,
) -> Result<IssuedCert, IdentityError> {
    let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256)?;
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::CommonName, name.as_str());
    params.subject_alt_names = vec![SanType::URI(node_uri(name).try_into()?)];
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.not_before = not_before;
    params.not_after = not_after;
    params.serial_number = Some(random_serial());
    let cert = params.signed_by(&key, issuer)?.der().clone();
    Ok(IssuedCert {
        cert,
        key: PrivatePkcs8KeyDer::from(key.serialize_der()),
    })
}

fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // An all-zero serial is still valid DER if the RNG were to fail.
    let _ = SystemRandom::new().fill(&mut bytes);
    bytes[0] &= 0x7f; // positive
    bytes[0] |= 0x01; // no leading zero byte
    SerialNumber::from_slice(&bytes)
}

fn pem_encode(label: &str, der: &[u8]) -> String {
    pem::encode(&pem::Pem::new(label, der.to_vec()))
}

pub(crate) fn read_certs(
    path: &Path,
    role: &'static str,
) -> Result<Vec<CertificateDer<'static>>, IdentityError> {
    use rustls_pki_types::pem::PemObject as _;
    let data = read_file(path, role)?;
    CertificateDer::pem_slice_iter(data.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| bad_pem(path, &format!("bad PEM: {e}")))
}

fn read_file(path: &Path, role: &'static str) -> Result<String, IdentityError> {
    fs::read_to_string(path).map_err(|source| IdentityError::Io {
        role,
        path: path.to_owned(),
        source,
    })
}

/// Reads a private key file, refusing one readable by group or others (as
/// a cookie file is refused).
fn read_key(path: &Path, role: &'static str) -> Result<String, IdentityError> {
    let meta = fs::metadata(path).map_err(|source| IdentityError::Io {
        role,
        path: path.to_owned(),
        source,
    })?;
    if let Some(mode) = crate::cookie::open_to_others(&meta) {
        return Err(IdentityError::KeyFileOpen {
            path: path.to_owned(),
            mode,
        });
    }
    read_file(path, role)
}

fn bad_pem(path: &Path, what: &str) -> IdentityError {
    IdentityError::BadPem {
        path: path.to_owned(),
        what: what.to_owned(),
    }
}

fn refuse_existing(paths: &[&Path], force: bool) -> Result<(), IdentityError> {
    if force {
        return Ok(());
    }
    match paths.iter().find(|p| p.exists()) {
        Some(p) => Err(IdentityError::Exists(p.to_path_buf())),
        None => Ok(()),
    }
}

fn write_file(
    path: &Path,
    role: &'static str,
    contents: &str,
    mode: u32,
) -> Result<(), IdentityError> {
    let io = |source| IdentityError::Io {
        role,
        path: path.to_owned(),
        source,
    };
    // Remove first so a forced overwrite of a 0644 file still ends 0600.
    match fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(io(e)),
    }
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(io)?;
    f.write_all(contents.as_bytes()).map_err(io)
}
