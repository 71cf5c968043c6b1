//! What a node trusts: its CA certificates and their revocation lists,
//! replaced as a whole when the identity is reloaded.
//!
//! Both sides of every handshake read the trust in force at that moment:
//! the listener through [`TrustVerifier`], which the server config holds
//! for the endpoint's lifetime, the dialler through the snapshot its
//! per-dial client config takes. So a reload reaches the next handshake,
//! and established connections keep what they verified.

use std::path::Path;
use std::sync::{Arc, RwLock};

use rustls::client::danger::HandshakeSignatureValid;
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme,
};
use rustls_pki_types::{CertificateDer, CertificateRevocationListDer, UnixTime};
use webpki::{
    CertRevocationList, ExpirationPolicy, KeyUsage, OwnedCertRevocationList, RevocationCheckDepth,
    RevocationOptionsBuilder, UnknownStatusPolicy,
};

use crate::IdentityError;
use crate::ca::short_fingerprint;

/// The CA certificates a node trusts and the revocation lists of those
/// CAs it was given.
#[derive(Debug)]
pub(crate) struct Trust {
    roots: RootCertStore,
    crls: Vec<CertRevocationList<'static>>,
    fingerprint: String,
}

impl Trust {
    /// Trusts `cas` (the first one's fingerprint names the cluster),
    /// with no revocation list.
    pub(crate) fn new(
        cas: &[CertificateDer<'static>],
        fingerprint: String,
    ) -> Result<Self, rustls::Error> {
        let mut roots = RootCertStore::empty();
        for ca in cas {
            roots.add(ca.clone())?;
        }
        Ok(Self {
            roots,
            crls: Vec::new(),
            fingerprint,
        })
    }

    /// A short fingerprint of the first trusted CA's public key.
    pub(crate) fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Adds the revocation lists in the PEM file `path`. Each must be
    /// signed by one of `cas` (the CA certificates read from `ca_path`).
    pub(crate) fn add_crls(
        &mut self,
        path: &Path,
        ca_path: &Path,
        cas: &[CertificateDer<'static>],
    ) -> Result<(), IdentityError> {
        use rustls_pki_types::pem::PemObject as _;
        let bad = |what: String| IdentityError::BadPem {
            path: path.to_owned(),
            what,
        };
        let data = std::fs::read(path).map_err(|source| IdentityError::Io {
            role: "revocation list",
            path: path.to_owned(),
            source,
        })?;
        let ders = CertificateRevocationListDer::pem_slice_iter(&data)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| bad(format!("bad PEM: {e}")))?;
        if ders.is_empty() {
            return Err(bad("no revocation list (X509 CRL) in file".to_owned()));
        }
        for der in ders {
            check_crl_signer(&der, path, ca_path, cas)?;
            let crl = OwnedCertRevocationList::from_der(&der)
                .map_err(|e| bad(format!("not a usable revocation list: {e}")))?;
            self.crls.push(crl.into());
        }
        Ok(())
    }

    /// Verifies a peer's chain: issued by a trusted CA, valid at `now`,
    /// meant for `usage`, and not in a revocation list of its CA. A CA
    /// without a list revokes nothing (during a CA rotation the new CA
    /// has none yet).
    pub(crate) fn verify(
        &self,
        provider: &CryptoProvider,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
        usage: KeyUsage,
    ) -> Result<(), rustls::Error> {
        let cert = webpki::EndEntityCert::try_from(end_entity).map_err(pki_error)?;
        let crls: Vec<&CertRevocationList<'_>> = self.crls.iter().collect();
        let revocation = RevocationOptionsBuilder::new(&crls).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::EndEntity)
                .with_status_policy(UnknownStatusPolicy::Allow)
                .with_expiration_policy(ExpirationPolicy::Ignore)
                .build()
        });
        cert.verify_for_usage(
            provider.signature_verification_algorithms.all,
            &self.roots.roots,
            intermediates,
            now,
            usage,
            revocation,
            None,
        )
        .map(|_| ())
        .map_err(pki_error)
    }
}

/// Refuses a revocation list that no CA of the bundle signed: nodes
/// would otherwise refuse every certificate of the CA it claims to be
/// from.
fn check_crl_signer(
    der: &[u8],
    path: &Path,
    ca_path: &Path,
    cas: &[CertificateDer<'static>],
) -> Result<(), IdentityError> {
    use x509_parser::prelude::FromDer as _;
    let (_, crl) =
        x509_parser::revocation_list::CertificateRevocationList::from_der(der).map_err(|e| {
            IdentityError::BadPem {
                path: path.to_owned(),
                what: format!("not a revocation list: {e}"),
            }
        })?;
    let signed = cas.iter().any(|ca| {
        x509_parser::parse_x509_certificate(ca).is_ok_and(|(_, ca)| {
            ca.subject() == crl.issuer() && crl.verify_signature(ca.public_key()).is_ok()
        })
    });
    if signed {
        Ok(())
    } else {
        Err(IdentityError::CrlNotFromCa {
            path: path.to_owned(),
            issuer: crl.issuer().to_string(),
            ca: ca_path.to_owned(),
        })
    }
}

/// The trust in force, swapped whole on reload.
#[derive(Debug)]
pub(crate) struct TrustCell(RwLock<Arc<Trust>>);

impl TrustCell {
    pub(crate) fn new(trust: Trust) -> Self {
        Self(RwLock::new(Arc::new(trust)))
    }

    pub(crate) fn get(&self) -> Arc<Trust> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub(crate) fn set(&self, trust: Trust) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(trust);
    }
}

/// The listener's client-certificate verifier: a client certificate is
/// mandatory and must verify under the trust in force at the handshake.
#[derive(Debug)]
pub(crate) struct TrustVerifier {
    pub(crate) trust: Arc<TrustCell>,
    pub(crate) provider: Arc<CryptoProvider>,
}

impl ClientCertVerifier for TrustVerifier {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        // Hints are optional in TLS 1.3, and every node presents the one
        // certificate it has whatever they say.
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.trust.get().verify(
            &self.provider,
            end_entity,
            intermediates,
            now,
            KeyUsage::client_auth(),
        )?;
        Ok(ClientCertVerified::assertion())
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

/// The configs allow TLS 1.3 only; a TLS 1.2 signature is a bug.
pub(crate) fn tls12_refused() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls13RequiredForQuic,
    ))
}

/// Checks a TLS 1.3 handshake signature with the provider's algorithms.
pub(crate) fn tls13_signature(
    provider: &CryptoProvider,
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    rustls::crypto::verify_tls13_signature(
        message,
        cert,
        dss,
        &provider.signature_verification_algorithms,
    )
}

/// The signature schemes the provider verifies.
pub(crate) fn schemes(provider: &CryptoProvider) -> Vec<SignatureScheme> {
    provider
        .signature_verification_algorithms
        .supported_schemes()
}

/// A webpki verification error as the rustls error (and so the TLS
/// alert) it stands for.
fn pki_error(e: webpki::Error) -> rustls::Error {
    use webpki::Error as E;
    let c = match e {
        E::BadDer | E::BadDerTime | E::TrailingData(_) => CertificateError::BadEncoding,
        E::CertNotValidYet { time, not_before } => {
            CertificateError::NotValidYetContext { time, not_before }
        }
        E::CertExpired { time, not_after } => CertificateError::ExpiredContext { time, not_after },
        E::InvalidCertValidity => CertificateError::Expired,
        E::UnknownIssuer => CertificateError::UnknownIssuer,
        E::CertRevoked => CertificateError::Revoked,
        E::InvalidSignatureForPublicKey => CertificateError::BadSignature,
        E::RequiredEkuNotFoundContext(_) => CertificateError::InvalidPurpose,
        other => CertificateError::Other(rustls::OtherError(Arc::new(other))),
    };
    rustls::Error::InvalidCertificate(c)
}

/// A short fingerprint of a certificate's public key.
pub(crate) fn spki_fingerprint(cert: &CertificateDer<'_>) -> String {
    match x509_parser::parse_x509_certificate(cert) {
        Ok((_, x)) => short_fingerprint(&x.public_key().subject_public_key.data),
        Err(_) => short_fingerprint(cert),
    }
}
