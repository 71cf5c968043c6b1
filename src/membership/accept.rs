//! The listener side: accept connections, check who they are, run the
//! `Hello` exchange and the tie-break.

use std::sync::Arc;

use quicmesh_wire::{CloseCode, Control, Hello, NodeName, PROTOCOL_MAJOR, Refusal, StreamKind};
use tracing::{Instrument, debug, info_span, warn};

use super::{Membership, count};
use crate::transport::{self, StreamError};

/// How a handshake on the listener side failed.
enum Refuse {
    /// Drop quietly (the transport already failed or timed out).
    Quietly,
    /// Close with this code and reason (protocol violation).
    Violation(String),
}

impl Membership {
    pub(super) async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                biased;
                _ = self.token.cancelled() => return,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                warn!(remote = %incoming.remote_address(), "too many handshakes in progress; refusing");
                incoming.refuse();
                continue;
            };
            let span = info_span!("accept", node = %self.me, remote = %incoming.remote_address());
            let m = self.clone();
            self.tracker.spawn(
                async move {
                    m.handle_incoming(incoming).await;
                    drop(permit);
                }
                .instrument(span),
            );
        }
    }

    async fn handle_incoming(self: &Arc<Self>, incoming: quinn::Incoming) {
        let timeout = self.config.handshake_timeout;
        let handshake = async { incoming.accept()?.await };
        let conn = match transport::within(timeout, handshake).await {
            None => {
                count(&self.counters.handshake_failures);
                debug!("TLS handshake timed out");
                return;
            }
            Some(Err(e)) => {
                if transport::auth_refusal(&e).is_some() {
                    count(&self.counters.auth_failures);
                    warn!("refused a connection: authentication failed: {e}");
                } else {
                    count(&self.counters.handshake_failures);
                    debug!("handshake failed: {e}");
                }
                return;
            }
            Some(Ok(conn)) => conn,
        };
        // The TLS layer verified the chain; the node name must be there too.
        let name = match transport::peer_name(&conn) {
            Ok(name) => name,
            Err(reason) => {
                count(&self.counters.auth_failures);
                warn!("refused a connection: {reason}");
                transport::close(&conn, CloseCode::NotAuthenticated, &reason.to_string());
                return;
            }
        };
        let opened = transport::within(timeout, self.read_hello(&conn, &name)).await;
        let (mut send, recv, hello) = match opened {
            Some(Ok(opened)) => opened,
            Some(Err(Refuse::Quietly)) => return,
            Some(Err(Refuse::Violation(detail))) => {
                count(&self.counters.protocol_violations);
                warn!(peer = %name, "protocol violation during the handshake: {detail}");
                transport::close(&conn, CloseCode::ProtocolViolation, &detail);
                return;
            }
            None => {
                count(&self.counters.handshake_failures);
                debug!(peer = %name, "no Hello in time");
                transport::close(&conn, CloseCode::HandshakeTimeout, "no Hello in time");
                return;
            }
        };
        let refusal = if hello.name != name {
            Some(Refusal::NameMismatch {
                certificate: name.clone(),
                claimed: hello.name.clone(),
            })
        } else if name == self.me {
            Some(Refusal::SelfConnect)
        } else if self.token.is_cancelled() {
            Some(Refusal::ShuttingDown)
        } else {
            None
        };
        if let Some(r) = refusal {
            debug!(peer = %name, "refusing: {r:?}");
            let _ = transport::write_frame(&mut send, &Control::Refuse(r), 1024).await;
            let _ = send.finish();
            let _ = transport::within(timeout, conn.closed()).await;
            return;
        }
        let welcome = Control::Welcome(self.hello(&name));
        let Err(mut send) =
            self.install(&name, conn.clone(), send, recv, hello, Some(welcome), true)
        else {
            return;
        };
        // The tie-break kept another connection: tell the dialler, which
        // closes this one.
        count(&self.counters.duplicates);
        debug!(peer = %name, "refusing a duplicate connection");
        let _ = transport::write_frame(&mut send, &Control::Refuse(Refusal::Duplicate), 1024).await;
        let _ = send.finish();
        if transport::within(timeout, conn.closed()).await.is_none() {
            transport::close(&conn, CloseCode::Duplicate, "duplicate connection");
        }
    }

    /// Waits for the control stream and reads the dialler's `Hello`.
    async fn read_hello(
        &self,
        conn: &quinn::Connection,
        name: &NodeName,
    ) -> Result<(quinn::SendStream, quinn::RecvStream, Hello), Refuse> {
        let (send, mut recv) = conn.accept_bi().await.map_err(|e| {
            if let Some(reason) = transport::auth_refusal(&e) {
                count(&self.counters.auth_failures);
                warn!(peer = %name, "connection refused during the handshake: {reason}");
            }
            Refuse::Quietly
        })?;
        match transport::read_kind(&mut recv).await {
            Ok(Ok(StreamKind::Control)) => {}
            Ok(other) => {
                return Err(Refuse::Violation(format!(
                    "first stream must be the control stream, got {other:?}"
                )));
            }
            Err(StreamError::Bad(e)) => return Err(Refuse::Violation(e.to_string())),
            Err(StreamError::Transport(_)) => return Err(Refuse::Quietly),
        }
        match transport::read_frame::<Control>(&mut recv, self.config.max_frame).await {
            Ok(Some(Control::Hello(h))) if h.major == PROTOCOL_MAJOR => {
                let _ = send.set_priority(super::CONTROL_PRIORITY);
                Ok((send, recv, h))
            }
            Ok(Some(Control::Hello(h))) => Err(Refuse::Violation(format!(
                "protocol major {} where {PROTOCOL_MAJOR} was expected",
                h.major
            ))),
            Ok(Some(other)) => Err(Refuse::Violation(format!("expected Hello, got {other:?}"))),
            Ok(None) => Err(Refuse::Violation(
                "control stream ended before Hello".into(),
            )),
            Err(StreamError::Bad(e)) => Err(Refuse::Violation(format!("Hello: {e}"))),
            Err(StreamError::Transport(_)) => Err(Refuse::Quietly),
        }
    }
}
