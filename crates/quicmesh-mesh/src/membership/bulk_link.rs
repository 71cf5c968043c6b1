//! The bulk path's connections (see [`crate::bulk`]): accepting them
//! from peers, dialling them to peers, and tying each to its peer's main
//! connection.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use quicmesh_wire::CloseCode;
use tracing::debug;

use super::{Inner, link};
use crate::bulk::{self, BulkEndpoint};
use crate::peer::Peer;
use crate::transport;

impl Inner {
    /// Accepts bulk connections until the node stops. Every sender must
    /// first prove its address (a QUIC Retry), and at most
    /// [`bulk::MAX_BULK_HANDSHAKES`] handshakes run at once.
    pub(super) async fn accept_bulk_loop(self: Arc<Self>, path: Arc<BulkEndpoint>) {
        loop {
            let incoming = tokio::select! {
                biased;
                _ = self.tasks.cancelled() => return,
                i = path.endpoint().accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            if !incoming.remote_address_validated() && incoming.may_retry() {
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            let Some(permit) = path.handshake_permit() else {
                bulk::refused(
                    &self.counters,
                    incoming.remote_address(),
                    None,
                    "too many bulk handshakes",
                );
                incoming.refuse();
                continue;
            };
            let inner = self.clone();
            self.tasks.spawn(async move {
                let conn = inner.bulk_handshake(incoming).await;
                drop(permit);
                if let Some((main, link)) = conn {
                    inner.serve_bulk(main, link).await;
                }
            });
        }
    }

    /// Completes an incoming bulk handshake: the certificate names a node
    /// that has a main connection here. Returns that connection's peer and
    /// the bulk link.
    async fn bulk_handshake(&self, incoming: quinn::Incoming) -> Option<(Peer, Peer)> {
        let from = incoming.remote_address();
        let patience = self.config.handshake_timeout;
        let conn = match crate::io::within(patience, async { incoming.accept()?.await }).await {
            Some(Ok(conn)) => conn,
            Some(Err(e)) => {
                bulk::refused(&self.counters, from, None, &e.to_string());
                return None;
            }
            None => {
                bulk::refused(&self.counters, from, None, "no handshake in time");
                return None;
            }
        };
        let name = match transport::peer_name(&conn) {
            Ok(name) => name,
            Err(e) => {
                bulk::refused(&self.counters, from, None, &e.to_string());
                transport::close(&conn, CloseCode::NotAuthenticated, "no node name");
                return None;
            }
        };
        let Some(main) = self.peer(&name) else {
            bulk::refused(
                &self.counters,
                from,
                Some(&name),
                "no main connection to it",
            );
            transport::close(&conn, CloseCode::NotAPeer, "bulk path without a link");
            return None;
        };
        let old = main.bulk().accepted.replace(conn.clone());
        if let Some(old) = old {
            transport::close(
                &old,
                CloseCode::Duplicate,
                "replaced by a newer bulk connection",
            );
        }
        self.counters.bulk_accepted.fetch_add(1, Ordering::Relaxed);
        let link = Peer::new(name, conn, main.control().clone(), self.counters.clone());
        Some((main, link))
    }

    /// Serves the streams of an accepted bulk link until it, its main
    /// connection or the node ends.
    async fn serve_bulk(self: Arc<Self>, main: Peer, link: Peer) {
        let conn = link.connection().clone();
        tokio::select! {
            biased;
            _ = self.tasks.cancelled() => {}
            _ = main.closed() => {
                transport::close(&conn, CloseCode::Disconnected, "the main connection ended");
            }
            () = link::serve_streams(self.clone(), link.clone()) => {}
        }
        let mut state = main.bulk();
        if state
            .accepted
            .as_ref()
            .is_some_and(|c| c.stable_id() == conn.stable_id())
        {
            state.accepted = None;
        }
    }

    /// The bulk link to `main`'s peer if it is open; otherwise starts a
    /// dial (if the peer has a bulk port and none is in progress or
    /// backing off) and returns `None`.
    pub(super) fn bulk_link(self: &Arc<Self>, main: &Peer) -> Option<Peer> {
        let path = self.bulk.clone()?;
        let (start, port) = {
            let mut state = main.bulk();
            match state.usable_or_start(Instant::now()) {
                Ok(link) => return Some(link),
                Err(start) => (start, state.port),
            }
        };
        if let (true, Some(port)) = (start, port) {
            let (inner, main) = (self.clone(), main.clone());
            let handle = path.handle();
            self.tasks.spawn_on(
                async move { inner.dial_bulk(path, main, port).await },
                handle,
            );
        }
        None
    }

    /// Dials `main`'s peer's bulk endpoint and keeps the link until it,
    /// the main connection or the node ends.
    async fn dial_bulk(self: Arc<Self>, path: Arc<BulkEndpoint>, main: Peer, port: u16) {
        let patience = self.config.handshake_timeout;
        let dialled = path
            .dial(&self.identity, &self.transport, &main, port, patience)
            .await;
        let conn = match dialled {
            Ok(conn) => conn,
            Err(e) => {
                debug!(peer = %main.name(), port, "bulk path not dialled (large calls use the main connection): {e}");
                main.bulk().dialled(None, Instant::now());
                return;
            }
        };
        let link = Peer::new(
            main.name().clone(),
            conn.clone(),
            main.control().clone(),
            self.counters.clone(),
        );
        main.bulk().dialled(Some(link), Instant::now());
        tokio::select! {
            biased;
            _ = self.tasks.cancelled() => {}
            _ = main.closed() => {
                transport::close(&conn, CloseCode::Disconnected, "the main connection ended");
            }
            _ = conn.closed() => {}
        }
    }
}
