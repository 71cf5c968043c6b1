//! quicmesh identities: who a node is and whom it trusts.
//!
//! Two modes give every node a certificate whose URI SAN
//! `quicmesh:node/<name@host>` carries its [`NodeName`], and a set of
//! trusted roots:
//!
//! - **cookie** ([`Cookie`], [`ClusterCa`]): the shared cookie is stretched
//!   with argon2id into the seed of an Ed25519 cluster CA key. Every node
//!   rebuilds the same CA, mints a fresh leaf certificate for itself at
//!   start (new key, short validity, renewed before expiry) and trusts
//!   only that CA. The cookie never leaves the process.
//! - **certificate** ([`CertificateAuthority`], [`CertFiles`]): a CA and
//!   node certificates issued by `quicmesh certs`, loaded from PEM files.
//!
//! [`Identity`] turns either into rustls configs: TLS 1.3 only, client
//! certificates required, no session resumption, ALPN `quicmesh/2`, and
//! a server verifier that checks the chain *and* that the certificate
//! names the node that was dialled. [`peer_name`] reads a verified peer's
//! name from its certificate.

mod ca;
mod cookie;
mod error;
mod ledger;
mod pki;
mod tls;
mod trust;

pub use ca::ClusterCa;
pub use cookie::{COOKIE_ENV, Cookie, default_cookie_path};
pub use error::{AuthFailure, IdentityError};
pub use ledger::{Ledger, Revocation, serial_of};
pub use pki::{CertFiles, CertInfo, CertificateAuthority, IssuedCert, describe_pem, write_issued};
pub use quicmesh_wire::NodeName;
pub use tls::{DialVerdict, Identity, peer_name};

/// The URI SAN prefix that carries a node name in a certificate.
pub const URI_PREFIX: &str = "quicmesh:node/";

/// The URI SAN for `name`.
pub fn node_uri(name: &NodeName) -> String {
    format!("{URI_PREFIX}{name}")
}
