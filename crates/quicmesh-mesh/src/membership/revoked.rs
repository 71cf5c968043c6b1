//! After the identity is reloaded: peers whose certificate the new
//! revocation lists name are dropped with `Revoked`.
//!
//! Only revocation ends a connection. A peer whose CA was dropped from the
//! bundle, or whose certificate expired since its handshake, stays
//! connected until its connection ends; its next handshake is refused.
//! That keeps a CA rotation free of disconnections: connections made
//! before the new certificates were in place outlive the old CA.

use quicmesh_identity::AuthFailure;
use quicmesh_wire::{CloseCode, NodeName};
use tracing::warn;

use super::{Inner, count};
use crate::event::DownReason;
use crate::peer::Peer;
use crate::transport;

impl Inner {
    /// Checks the certificate every up peer presented against the trust
    /// in force and drops those it finds revoked; returns their names.
    pub(super) fn drop_revoked(&self) -> Vec<NodeName> {
        let links: Vec<Peer> = self.table().up().map(|(_, u)| u.link.clone()).collect();
        let mut dropped = Vec::new();
        for link in links {
            let Some(certs) = transport::peer_certs(link.connection()) else {
                continue;
            };
            if self.identity.check_peer(&certs) != Err(AuthFailure::Revoked) {
                continue;
            }
            count(&self.counters.revoked);
            warn!(peer = %link.name(), "dropping the peer: its certificate is revoked");
            link.close(
                CloseCode::Revoked,
                DownReason::Revoked,
                "certificate revoked",
            );
            dropped.push(link.name().clone());
        }
        dropped
    }
}
