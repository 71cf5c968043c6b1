//! The QUIC layer: one quinn endpoint per node, its TLS configs, and the
//! translation of transport errors into quicmesh's.

use std::net::SocketAddr;
use std::sync::Arc;

use quicmesh_identity::{AuthFailure, Identity, NodeName};
use quicmesh_wire::CloseCode;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{ConnectionError, VarInt};

use crate::config::MeshConfig;
use crate::error::BindError;
use crate::event::DownReason;

/// quinn needs a DNS-valid server name for SNI; the real check is the node
/// name in the certificate, done by the identity's verifier.
const SNI: &str = "quicmesh";

/// Transport parameters shared by every connection of a node.
/// Bytes of received datagrams a connection holds (see
/// [`transport_config`]): more than the largest datagram the endpoint
/// takes in (UDP payloads of at most 1,472 bytes), which quinn would
/// refuse as a protocol violation.
const DATAGRAM_WINDOW: usize = 4 * 1024;

pub(crate) fn transport_config(cfg: &MeshConfig) -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    // A backstop behind the heartbeat detector: QUIC gives up on a silent
    // path after twice the heartbeat timeout.
    let idle = quinn::IdleTimeout::try_from(cfg.heartbeat.timeout * 2)
        .unwrap_or_else(|_| quinn::IdleTimeout::from(VarInt::from_u32(60_000)));
    t.max_idle_timeout(Some(idle));
    t.keep_alive_interval(None);
    t.max_concurrent_bidi_streams(VarInt::from_u32(1024));
    t.max_concurrent_uni_streams(VarInt::from_u32(256));
    // Datagrams are heartbeats, never read: their arrival shows in the
    // connection's packet count (see `liveness`). The window holds a few
    // of the largest a path carries; past it quinn drops the oldest, so a
    // peer's datagrams cost at most this much each connection and no
    // task ever wakes for them.
    t.datagram_receive_buffer_size(Some(DATAGRAM_WINDOW));
    Arc::new(t)
}

/// Binds the node's endpoint: the server side requires client
/// certificates; the client side is configured per dial.
pub(crate) fn bind(
    addr: SocketAddr,
    identity: &Identity,
    transport: Arc<quinn::TransportConfig>,
) -> Result<quinn::Endpoint, BindError> {
    let tls = identity.server_config()?;
    let quic = QuicServerConfig::try_from(tls)
        .map_err(|e| BindError::Identity(rustls::Error::General(e.to_string()).into()))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
    server.transport_config(transport);
    let io = |source| BindError::Io { addr, source };
    let socket = std::net::UdpSocket::bind(addr).map_err(io)?;
    // The kernel's default buffers (about 200 KiB on Linux) overflow
    // under one 1 MiB call on loopback; a dropped datagram costs a loss
    // recovery and a smaller congestion window. Capped by the system's
    // maximum (`net.core.rmem_max`, `wmem_max`), so best effort.
    let sock = socket2::SockRef::from(&socket);
    let _ = sock.set_recv_buffer_size(SOCKET_BUFFER);
    let _ = sock.set_send_buffer_size(SOCKET_BUFFER);
    let runtime = quinn::default_runtime().ok_or_else(|| {
        io(std::io::Error::other(
            "no async runtime to drive the endpoint",
        ))
    })?;
    quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server),
        socket,
        runtime,
    )
    .map_err(io)
}

/// Send and receive buffer asked of the kernel for a node's UDP sockets.
const SOCKET_BUFFER: usize = 4 << 20;

/// Starts a dial to `expected` at `addr` with a client config whose
/// verifier insists on that name. Returns the handshake future and the
/// verdict slot that explains a refusal.
pub(crate) fn connect(
    endpoint: &quinn::Endpoint,
    identity: &Identity,
    transport: &Arc<quinn::TransportConfig>,
    expected: &NodeName,
    addr: SocketAddr,
) -> Result<(quinn::Connecting, quicmesh_identity::DialVerdict), String> {
    let (tls, verdict) = identity
        .client_config(expected)
        .map_err(|e| e.to_string())?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| e.to_string())?;
    let mut client = quinn::ClientConfig::new(Arc::new(quic));
    client.transport_config(transport.clone());
    let connecting = endpoint
        .connect_with(client, addr, SNI)
        .map_err(|e| e.to_string())?;
    Ok((connecting, verdict))
}

/// The certificate chain a connection's peer presented at its handshake.
pub(crate) fn peer_certs(
    conn: &quinn::Connection,
) -> Option<Vec<rustls::pki_types::CertificateDer<'static>>> {
    conn.peer_identity()
        .and_then(|any| any.downcast().ok())
        .map(|certs| *certs)
}

/// The verified node name of a connection's peer.
pub(crate) fn peer_name(conn: &quinn::Connection) -> Result<NodeName, AuthFailure> {
    let certs = peer_certs(conn).ok_or(AuthFailure::NoNodeName)?;
    quicmesh_identity::peer_name(&certs)
}

/// Closes `conn` with a quicmesh code and a short reason.
pub(crate) fn close(conn: &quinn::Connection, code: CloseCode, reason: &str) {
    conn.close(VarInt::from_u32(code.code()), reason.as_bytes());
}

/// Whether a transport error code is a TLS alert (0x100–0x1ff), i.e. an
/// authentication failure on one side or the other.
fn tls_alert(code: quinn::TransportErrorCode) -> Option<u8> {
    let c = u64::from(code);
    (0x100..0x200).contains(&c).then(|| (c - 0x100) as u8)
}

/// The TLS alert `certificate_revoked` (RFC 8446).
const ALERT_REVOKED: u8 = 44;

/// Whether the connection failed because one side found the other's
/// certificate revoked.
pub(crate) fn revoked(e: &ConnectionError) -> bool {
    match e {
        ConnectionError::TransportError(t) => tls_alert(t.code) == Some(ALERT_REVOKED),
        ConnectionError::ConnectionClosed(c) => tls_alert(c.error_code) == Some(ALERT_REVOKED),
        ConnectionError::ApplicationClosed(a) => {
            a.error_code.into_inner() == u64::from(CloseCode::Revoked.code())
        }
        _ => false,
    }
}

/// If the connection failed on a TLS alert, what the peer (or this side)
/// said, as an authentication failure.
pub(crate) fn auth_refusal(e: &ConnectionError) -> Option<AuthFailure> {
    let (alert, reason) = match e {
        ConnectionError::TransportError(t) => (tls_alert(t.code)?, t.reason.clone()),
        ConnectionError::ConnectionClosed(c) => (
            tls_alert(c.error_code)?,
            String::from_utf8_lossy(&c.reason).into_owned(),
        ),
        _ => return None,
    };
    Some(AuthFailure::RefusedByPeer(format!(
        "TLS alert {alert}: {reason}"
    )))
}

/// Why a connection ended, from the transport's error.
pub(crate) fn down_reason(e: &ConnectionError) -> DownReason {
    match e {
        ConnectionError::ApplicationClosed(a) => {
            let reason = String::from_utf8_lossy(&a.reason);
            match CloseCode::from_code(a.error_code.into_inner()) {
                CloseCode::Shutdown => DownReason::Shutdown,
                CloseCode::Disconnected => DownReason::DisconnectedByPeer,
                // The peer heard nothing from this node: the link failed,
                // as when this node hears nothing.
                CloseCode::HeartbeatTimeout => DownReason::HeartbeatTimeout,
                CloseCode::Revoked => DownReason::Revoked,
                other => DownReason::ClosedByPeer {
                    detail: format!("{other:?}: {reason}"),
                },
            }
        }
        ConnectionError::TimedOut => DownReason::HeartbeatTimeout,
        ConnectionError::LocallyClosed => DownReason::LocalShutdown,
        other => DownReason::ConnectionLost {
            detail: other.to_string(),
        },
    }
}
