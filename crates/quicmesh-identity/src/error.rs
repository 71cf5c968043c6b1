//! Identity errors.

use std::path::PathBuf;

use quicmesh_wire::NodeName;

/// Why an identity could not be loaded or built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IdentityError {
    /// The cookie file can be read by group or others.
    #[error(
        "cookie file {path} has mode {mode:o}, readable by others: \
         run `chmod 600 {path}` (the cookie is the cluster's secret)"
    )]
    CookieFileOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A private key file can be read by group or others.
    #[error(
        "key file {path} has mode {mode:o}, readable by others: \
         run `chmod 600 {path}` (the key is a node's or the CA's identity)"
    )]
    KeyFileOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// A cookie file was named but does not exist (only the default
    /// `~/.quicmesh.cookie` is created when missing).
    #[error(
        "cookie file {path} does not exist: check the path, or create it with the \
         cluster's cookie (mode 0600)"
    )]
    NoCookieFile {
        /// The file.
        path: PathBuf,
    },
    /// The node's key is not the key of its certificate (files of two
    /// nodes mixed up?).
    #[error("key {key} is not the key of certificate {cert}: are the two files of one node?")]
    KeyMismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// The cookie is empty.
    #[error("the cookie is empty: set a non-empty cookie")]
    EmptyCookie,
    /// No home directory to keep `~/.quicmesh.cookie` in.
    #[error("no cookie given and $HOME is not set: pass a cookie or set QUICMESH_COOKIE")]
    NoHome,
    /// Reading or writing a file failed.
    #[error("{role} {path}: {source}")]
    Io {
        /// What the file is for: "CA certificate", "node key", "cookie
        /// file", …
        role: &'static str,
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: std::io::Error,
    },
    /// A file exists and `force` was not given.
    #[error("{0} exists; pass --force to overwrite it")]
    Exists(PathBuf),
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    BadPem {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// The node certificate does not name this node.
    #[error("certificate {path} names {found:?}, not this node {expected}")]
    CertNamesOtherNode {
        /// The certificate file.
        path: PathBuf,
        /// This node's name.
        expected: NodeName,
        /// The node names in the certificate.
        found: Vec<String>,
    },
    /// The node certificate is not signed by the given CA, or is not valid
    /// now (expired, not yet valid, wrong key usage).
    #[error("certificate {path} is not valid under CA {ca}: {reason}")]
    CertNotValid {
        /// The certificate file.
        path: PathBuf,
        /// The CA file.
        ca: PathBuf,
        /// The verifier's reason.
        reason: String,
    },
    /// A revocation list is not signed by any CA of the bundle (a list
    /// from another CA, or the CA it came from was dropped from the
    /// bundle).
    #[error("revocation list {path} is issued by {issuer}, which is not a CA in {ca}")]
    CrlNotFromCa {
        /// The revocation list file.
        path: PathBuf,
        /// The issuer it names.
        issuer: String,
        /// The CA bundle.
        ca: PathBuf,
    },
    /// A certificate serial number that is not hexadecimal.
    #[error(
        "{serial:?} is not a certificate serial (hexadecimal, as `quicmesh certs show` prints)"
    )]
    BadSerial {
        /// What was given.
        serial: String,
    },
    /// Certificate generation or parsing failed.
    #[error("certificate error: {0}")]
    Cert(#[from] rcgen::Error),
    /// rustls refused a configuration.
    #[error("TLS configuration error: {0}")]
    Tls(#[from] rustls::Error),
    /// The key derivation failed (bad parameters).
    #[error("cookie key derivation failed: {0}")]
    Kdf(String),
}

/// Why a peer's certificate was refused, or why a peer refused ours.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum AuthFailure {
    /// The peer's certificate is not signed by a CA this node trusts: in
    /// cookie mode, the peer has another cookie.
    #[error("certificate not issued by this cluster's CA (another cookie or CA?)")]
    UnknownIssuer,
    /// The certificate is valid but names another node than the one dialled.
    #[error("expected {expected}, certificate names {}", found_list(.found))]
    NameMismatch {
        /// The node dialled.
        expected: NodeName,
        /// The node names the certificate carries.
        found: Vec<String>,
    },
    /// The certificate verifies but carries no quicmesh node name.
    #[error("certificate carries no quicmesh node name (URI SAN quicmesh:node/...)")]
    NoNodeName,
    /// The certificate has expired.
    #[error("certificate expired")]
    Expired,
    /// The certificate is not valid yet (clock skew?).
    #[error("certificate not valid yet (check clocks)")]
    NotYetValid,
    /// Another verification failure.
    #[error("bad certificate: {0}")]
    BadCertificate(String),
    /// The certificate is in a revocation list of its CA.
    #[error("certificate revoked by its CA")]
    Revoked,
    /// The peer refused this node's certificate (TLS alert during or right
    /// after the handshake).
    #[error("peer refused our certificate: {0}")]
    RefusedByPeer(String),
}

fn found_list(found: &[String]) -> String {
    if found.is_empty() {
        "no node".to_owned()
    } else {
        found.join(", ")
    }
}
