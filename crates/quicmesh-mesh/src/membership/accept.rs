//! The listener side: accept connections, check who they are, run the
//! `Hello` exchange and the tie-break.

use std::sync::Arc;

use quicmesh_wire::{CloseCode, Control, Hello, NodeName, Refusal, StreamKind};
use tracing::{Instrument, debug, info_span, warn};

use super::hello::{self, Verdict};
use super::{
    CONTROL_PRIORITY, Handshake, Inner, MAX_CONCURRENT_HANDSHAKES, MAX_HANDSHAKES_PER_SOURCE, Role,
    count,
};
use crate::io::{self, StreamError, within};
use crate::transport;

/// Handshakes in progress past which an unvalidated sender is sent a
/// Retry first.
const RETRY_PAST: usize = 16;

/// How a handshake on the listener side failed.
enum Refuse {
    /// Drop quietly (the transport already failed or timed out).
    Quietly,
    /// Close with this code and reason (protocol violation).
    Violation(String),
}

impl Inner {
    pub(super) async fn accept_loop(self: Arc<Self>) {
        loop {
            let incoming = tokio::select! {
                biased;
                _ = self.tasks.cancelled() => return,
                i = self.endpoint.accept() => match i {
                    Some(i) => i,
                    None => return,
                },
            };
            // Past a few handshakes in progress, a sender must first prove
            // it receives at its address (QUIC Retry, no state kept here), so
            // a flood of bare ClientHellos from made-up or silent senders
            // holds no handshake slot.
            let busy = MAX_CONCURRENT_HANDSHAKES - self.handshakes.available_permits();
            if busy >= RETRY_PAST && !incoming.remote_address_validated() && incoming.may_retry() {
                count(&self.counters.handshakes_retried);
                if let Err(e) = incoming.retry() {
                    e.into_incoming().ignore();
                }
                continue;
            }
            // One address holds at most a few slots, validated or not, so
            // one sender cannot take them all.
            let ip = incoming.remote_address().ip().to_canonical();
            let Some(source) = self.handshakes_per_source.try_acquire(ip) else {
                count(&self.counters.handshakes_refused_per_source);
                if let Some(earlier) = self.handshakes_per_source_logged.allow() {
                    let more = earlier.since_last();
                    warn!(
                        %ip,
                        "{MAX_HANDSHAKES_PER_SOURCE} handshakes in progress from this address \
                         already; refusing more{more}"
                    );
                }
                incoming.refuse();
                continue;
            };
            let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
                count(&self.counters.handshakes_refused);
                if let Some(earlier) = self.handshakes_refused_logged.allow() {
                    let (remote, more) = (incoming.remote_address(), earlier.since_last());
                    warn!(%remote, "too many handshakes in progress; refusing{more}");
                }
                incoming.refuse();
                continue;
            };
            let span = info_span!("accept", node = %self.me, remote = %incoming.remote_address());
            let inner = self.clone();
            self.tasks.spawn(
                async move {
                    inner.handle_incoming(incoming).await;
                    drop((permit, source));
                }
                .instrument(span),
            );
        }
    }

    async fn handle_incoming(self: &Arc<Self>, incoming: quinn::Incoming) {
        let timeout = self.config.handshake_timeout;
        let handshake = async { incoming.accept()?.await };
        let conn = match within(timeout, handshake).await {
            None => {
                count(&self.counters.handshake_failures);
                debug!("TLS handshake timed out");
                return;
            }
            Some(Err(e)) => {
                if transport::revoked(&e) {
                    count(&self.counters.revoked);
                }
                if let Some(reason) = transport::auth_refusal(&e) {
                    count(&self.counters.auth_failures);
                    self.stats.auth_failure(&reason);
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
                self.stats.auth_failure(&reason);
                warn!("refused a connection: {reason}");
                transport::close(&conn, CloseCode::NotAuthenticated, &reason.to_string());
                return;
            }
        };
        let opened = within(timeout, self.read_hello(&conn, &name)).await;
        let (mut send, recv, hello) = match opened {
            Some(Ok(opened)) => opened,
            Some(Err(Refuse::Quietly)) => return,
            Some(Err(Refuse::Violation(detail))) => {
                return self.handshake_violation(&conn, &name, &detail);
            }
            None => {
                count(&self.counters.handshake_failures);
                debug!(peer = %name, "no Hello in time");
                transport::close(&conn, CloseCode::HandshakeTimeout, "no Hello in time");
                return;
            }
        };
        match hello::judge(&hello, &name, &self.me, self.tasks.is_cancelled()) {
            Verdict::Accept => {}
            Verdict::Refuse(r) => {
                if let Refusal::NameMismatch { claimed, .. } = &r {
                    // An operator's mistake, or someone pretending: say so.
                    warn!(peer = %name, "refused a node whose certificate names {name} but that calls itself {claimed}");
                } else {
                    debug!(peer = %name, "refusing: {r:?}");
                }
                let _ = io::write_frame(&mut send, &Control::Refuse(r), 1024).await;
                let _ = send.finish();
                let _ = within(timeout, conn.closed()).await;
                return;
            }
            Verdict::Violation(detail) => return self.handshake_violation(&conn, &name, &detail),
        }
        let _ = send.set_priority(CONTROL_PRIORITY);
        let welcome = Control::Welcome(self.hello(&name));
        let handshake = Handshake {
            name: name.clone(),
            conn: conn.clone(),
            send,
            recv,
            hello,
        };
        let Err((mut send, refusal)) = self.install(handshake, Role::Listener { welcome }) else {
            count(&self.stats.handshakes_accepted);
            return;
        };
        match &refusal {
            // The tie-break kept another connection: the dialler closes
            // this one.
            Refusal::Duplicate => {
                count(&self.counters.duplicates);
                debug!(peer = %name, "refusing a duplicate connection");
            }
            Refusal::NameInUse { live } => {
                count(&self.counters.names_in_use);
                if let Some(earlier) = self.names_in_use_logged.allow() {
                    let (from, more) = (conn.remote_address(), earlier.since_last());
                    warn!(
                        peer = %name,
                        "refused a second node named {name} (from {from}): the name is in use \
                         by the live node at {live:?}{more}"
                    );
                }
            }
            other => debug!(peer = %name, "refusing: {other:?}"),
        }
        let _ = io::write_frame(&mut send, &Control::Refuse(refusal), 1024).await;
        let _ = send.finish();
        if within(timeout, conn.closed()).await.is_none() {
            transport::close(&conn, CloseCode::Duplicate, "duplicate connection");
        }
    }

    /// The dialler broke the protocol before it was installed.
    fn handshake_violation(&self, conn: &quinn::Connection, name: &NodeName, detail: &str) {
        count(&self.counters.protocol_violations);
        warn!(peer = %name, "protocol violation during the handshake: {detail}");
        transport::close(conn, CloseCode::ProtocolViolation, detail);
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
                self.stats.auth_failure(&reason);
                warn!(peer = %name, "connection refused during the handshake: {reason}");
            }
            Refuse::Quietly
        })?;
        match io::read_kind(&mut recv).await {
            Ok(Ok(StreamKind::Control)) => {}
            Ok(other) => {
                return Err(Refuse::Violation(format!(
                    "first stream must be the control stream, got {other:?}"
                )));
            }
            Err(StreamError::Bad(e)) => return Err(Refuse::Violation(e.to_string())),
            Err(StreamError::Transport(_)) => return Err(Refuse::Quietly),
        }
        match io::read_frame::<Control>(&mut recv, self.config.max_frame).await {
            Ok(Some(Control::Hello(h))) => Ok((send, recv, h)),
            Ok(Some(other)) => Err(Refuse::Violation(format!("expected Hello, got {other:?}"))),
            Ok(None) => Err(Refuse::Violation(
                "control stream ended before Hello".into(),
            )),
            Err(StreamError::Bad(e)) => Err(Refuse::Violation(format!("Hello: {e}"))),
            Err(StreamError::Transport(_)) => Err(Refuse::Quietly),
        }
    }
}
