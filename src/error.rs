//! Why a node did not start.

use quicmesh_identity::IdentityError;
use quicmesh_mesh::BindError;

use crate::config::ConfigError;

/// Why a node did not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The configuration is invalid; fix the named value.
    #[error("invalid configuration: {0}")]
    Config(#[from] ConfigError),
    /// The identity (cookie or certificate files) could not be loaded.
    #[error("identity: {0}")]
    Identity(#[from] IdentityError),
    /// Consensus mode could not start (its store, or openraft).
    #[error("consensus: {0}")]
    Consensus(#[from] quicmesh_consensus::StartError),
    /// The UDP socket could not be bound (address in use?).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: std::net::SocketAddr,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// The mesh could not bind the node's endpoint.
    pub(crate) fn bind(e: BindError) -> Self {
        match e {
            BindError::Identity(e) => Self::Identity(e),
            BindError::Io { addr, source } => Self::Bind { addr, source },
        }
    }
}
