//! Dialling: one dial with its handshake, and the keepers that re-dial
//! seeds with capped exponential backoff and jitter.

use std::net::SocketAddr;
use std::sync::Arc;

use quicmesh_identity::{AuthFailure, DialVerdict};
use quicmesh_wire::{CloseCode, Control, NodeAddr, NodeName, Refusal, StreamKind};
use quinn::ConnectionError;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span, warn};

use super::{CONTROL_PRIORITY, Handshake, Inner, Role};
use crate::error::ConnectError;
use crate::io::{self, StreamError};
use crate::transport;

impl Inner {
    /// Dials `addr` (resolving its host) unless the node is up already.
    pub(super) async fn dial_addr(self: &Arc<Self>, addr: &NodeAddr) -> Result<(), ConnectError> {
        let target = addr.host_port();
        let addrs: Vec<SocketAddr> = tokio::net::lookup_host(&target)
            .await
            .map_err(|e| ConnectError::Unreachable {
                addr: addr.to_string(),
                detail: format!("cannot resolve {target}: {e}"),
            })?
            .collect();
        self.dial(&addr.name, &addrs).await
    }

    /// Dials `name` at the first of `addrs` that answers, unless it is up.
    pub(super) async fn dial(
        self: &Arc<Self>,
        name: &NodeName,
        addrs: &[SocketAddr],
    ) -> Result<(), ConnectError> {
        if *name == self.me {
            return Err(ConnectError::Refused {
                peer: name.clone(),
                reason: "that is this node itself".to_owned(),
            });
        }
        if self.tasks.is_cancelled() {
            return Err(ConnectError::ShuttingDown);
        }
        if !self.update(|t| t.begin_dial(name)) {
            return Ok(());
        }
        self.dial_started(name, addrs).await
    }

    /// The rest of a dial once `begin_dial` counted it.
    pub(super) async fn dial_started(
        self: &Arc<Self>,
        name: &NodeName,
        addrs: &[SocketAddr],
    ) -> Result<(), ConnectError> {
        let span = info_span!("dial", node = %self.me, peer = %name);
        let result = async {
            let mut last = ConnectError::Unreachable {
                addr: name.to_string(),
                detail: "no address to dial".to_owned(),
            };
            for &addr in addrs {
                match self.attempt(name, addr).await {
                    Ok(()) => return Ok(()),
                    Err(e @ ConnectError::AuthenticationFailed { .. }) => return Err(e),
                    Err(e) => last = e,
                }
            }
            Err(last)
        }
        .instrument(span)
        .await;
        let error = result.as_ref().err().map(ToString::to_string);
        self.update(|t| t.end_dial(name, error));
        result
    }

    async fn attempt(
        self: &Arc<Self>,
        name: &NodeName,
        addr: SocketAddr,
    ) -> Result<(), ConnectError> {
        let timeout = self.config.handshake_timeout;
        let deadline = Instant::now() + timeout;
        let timed_out = || ConnectError::HandshakeTimeout {
            peer: name.clone(),
            addr: addr.to_string(),
            after: timeout,
        };
        let (connecting, verdict) =
            transport::connect(&self.endpoint, &self.identity, &self.transport, name, addr)
                .map_err(|detail| ConnectError::Unreachable {
                    addr: addr.to_string(),
                    detail,
                })?;
        let conn = match tokio::time::timeout_at(deadline, connecting).await {
            Err(_) => return Err(timed_out()),
            Ok(Err(e)) => return Err(self.classify(name, &e, &verdict)),
            Ok(Ok(conn)) => conn,
        };
        // In QUIC the client finishes its handshake before the server has
        // checked the client certificate: the peer is up only once its
        // Welcome arrives; a refusal shows up as a close in the meantime.
        match tokio::time::timeout_at(
            deadline,
            self.hello_exchange(name, &conn, &verdict, deadline),
        )
        .await
        {
            Ok(result) => result,
            Err(_) => {
                transport::close(&conn, CloseCode::HandshakeTimeout, "no welcome in time");
                Err(timed_out())
            }
        }
    }

    async fn hello_exchange(
        self: &Arc<Self>,
        name: &NodeName,
        conn: &quinn::Connection,
        verdict: &DialVerdict,
        deadline: Instant,
    ) -> Result<(), ConnectError> {
        let max = self.config.max_frame;
        let violation = |detail: String| {
            transport::close(conn, CloseCode::ProtocolViolation, &detail);
            ConnectError::ProtocolViolation {
                peer: name.clone(),
                detail,
            }
        };
        let (mut send, mut recv) = match conn.open_bi().await {
            Ok(s) => s,
            Err(e) => return Err(self.classify(name, &e, verdict)),
        };
        let _ = send.set_priority(CONTROL_PRIORITY);
        let hello = Control::Hello(self.hello(name));
        let opening =
            io::opening(StreamKind::Control, &hello, max).map_err(|e| violation(e.to_string()))?;
        let reply = match send.write_all(&opening).await {
            Ok(()) => io::read_frame::<Control>(&mut recv, max).await,
            Err(e) => Err(StreamError::Transport(e.to_string())),
        };
        match reply {
            Ok(Some(Control::Welcome(hello))) => {
                if hello.name != *name {
                    return Err(violation(format!("welcome names {}", hello.name)));
                }
                // The listener applied the tie-break: what it welcomes is kept.
                let handshake = Handshake {
                    name: name.clone(),
                    conn: conn.clone(),
                    send,
                    recv,
                    hello,
                };
                let _ = self.install(handshake, Role::Dialler);
                Ok(())
            }
            Ok(Some(Control::Refuse(Refusal::Duplicate))) => {
                transport::close(conn, CloseCode::Duplicate, "refused as duplicate");
                // The peer's own dial to this node wins the tie-break.
                if self.wait_up(name, deadline).await {
                    Ok(())
                } else {
                    Err(ConnectError::ConnectionLost {
                        peer: name.clone(),
                        detail:
                            "refused as a duplicate, and the peer's own connection did not arrive"
                                .to_owned(),
                    })
                }
            }
            Ok(Some(Control::Refuse(Refusal::NameInUse { live }))) => {
                transport::close(conn, CloseCode::Disconnected, "name in use");
                Err(ConnectError::NameInUse {
                    peer: name.clone(),
                    live,
                })
            }
            Ok(Some(Control::Refuse(r))) => {
                transport::close(conn, CloseCode::Disconnected, "refused");
                Err(ConnectError::Refused {
                    peer: name.clone(),
                    reason: format!("{r:?}"),
                })
            }
            Ok(Some(other)) => Err(violation(format!("expected Welcome, got {other:?}"))),
            Err(StreamError::Bad(e)) => Err(violation(format!("reply to Hello: {e}"))),
            Ok(None) | Err(StreamError::Transport(_)) => {
                let e = conn.closed().await;
                Err(self.classify(name, &e, verdict))
            }
        }
    }

    fn classify(
        &self,
        name: &NodeName,
        e: &ConnectionError,
        verdict: &DialVerdict,
    ) -> ConnectError {
        if transport::revoked(e) || verdict.failure() == Some(AuthFailure::Revoked) {
            super::count(&self.counters.revoked);
        }
        if let Some(reason) = verdict.failure().or_else(|| transport::auth_refusal(e)) {
            return ConnectError::AuthenticationFailed {
                peer: name.clone(),
                reason,
            };
        }
        match e {
            ConnectionError::LocallyClosed => ConnectError::ShuttingDown,
            ConnectionError::ApplicationClosed(a)
                if a.error_code.into_inner() == u64::from(CloseCode::Shutdown.code()) =>
            {
                ConnectError::Refused {
                    peer: name.clone(),
                    reason: "it is shutting down".to_owned(),
                }
            }
            other => ConnectError::ConnectionLost {
                peer: name.clone(),
                detail: other.to_string(),
            },
        }
    }

    /// Keeps a seed connected until the node stops or the seed is removed;
    /// `via` names the topology that found it (for its log lines).
    pub(super) fn spawn_keeper(self: &Arc<Self>, seed: NodeAddr, via: Option<&str>) {
        let via = via.unwrap_or("seeds");
        let span = info_span!("seed", node = %self.me, peer = %seed, via);
        let inner = self.clone();
        self.tasks
            .spawn(async move { inner.keep_connected(seed).await }.instrument(span));
    }

    async fn keep_connected(self: Arc<Self>, seed: NodeAddr) {
        let mut attempt = 0u32;
        loop {
            if self.tasks.is_cancelled() || !self.table().is_seed(&seed.name) {
                return;
            }
            if self.is_up(&seed.name) {
                attempt = 0;
                self.wait_down(&seed.name).await;
                continue;
            }
            let pinned = self.dial_at(&seed.name);
            let dialled = if pinned.is_empty() {
                self.dial_addr(&seed).await
            } else {
                self.dial(&seed.name, &pinned).await
            };
            match dialled {
                Ok(()) => attempt = 0,
                Err(ConnectError::ShuttingDown) => return,
                Err(e) => {
                    if attempt == 0 {
                        warn!("cannot connect, will retry with backoff: {e}");
                    } else {
                        debug!(attempt, "still cannot connect: {e}");
                    }
                    let delay = self.config.reconnect.delay(attempt, fastrand::f64());
                    attempt = attempt.saturating_add(1);
                    tokio::select! {
                        biased;
                        _ = self.tasks.cancelled() => return,
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        }
    }
}
