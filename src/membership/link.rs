//! The task that owns one installed connection.
//!
//! It sends a heartbeat datagram every interval and declares the peer down
//! when no packet at all (heartbeat, data, acknowledgement) has arrived for
//! the heartbeat timeout; it writes and reads the control stream, and
//! dispatches every stream the peer opens by its header. A peer that
//! breaks the protocol is dropped with `ProtocolViolation`; nothing it
//! sends can panic the node.

use std::sync::Arc;
use std::time::Duration;

use quicmesh_wire::{CloseCode, Control, Datagram, Ping, StreamKind};
use quinn::{Connection, RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{Instrument, debug, info_span};

use super::{LinkHandle, Membership};
use crate::config::HeartbeatConfig;
use crate::event::DownReason;
use crate::transport::{self, StreamError};

/// Starts the task that owns an installed connection until it ends, then
/// reports the end to the peer table.
pub(super) fn spawn(
    m: &Arc<Membership>,
    name: quicmesh_wire::NodeName,
    handle: LinkHandle,
    send: SendStream,
    recv: RecvStream,
    queue: mpsc::Receiver<Control>,
    first: Option<Control>,
) {
    let span = info_span!("link", node = %m.me, peer = %name);
    let tracker = m.tracker.clone();
    let m = m.clone();
    let task = async move {
        let conn = handle.conn.clone();
        let mut tasks = JoinSet::new();
        let max = m.config.max_frame;
        tasks.spawn(write_control(send, queue, first, max).in_current_span());
        tasks.spawn(read_control(m.clone(), name.clone(), handle.clone(), recv).in_current_span());
        tasks.spawn(serve_streams(m.clone(), name.clone(), handle.clone()).in_current_span());
        tasks.spawn(drain_datagrams(conn.clone()));

        let reason = tokio::select! {
            biased;
            _ = m.token.cancelled() => DownReason::LocalShutdown,
            e = conn.closed() => handle
                .closing
                .get()
                .cloned()
                .unwrap_or_else(|| transport::down_reason(&e)),
            () = heartbeat(&conn, m.config.heartbeat) => {
                let reason = DownReason::HeartbeatTimeout;
                handle.close(CloseCode::HeartbeatTimeout, reason.clone(), "no heartbeat");
                reason
            }
        };
        tasks.abort_all();
        m.link_closed(&name, conn.stable_id(), reason);
    };
    tracker.spawn(task.instrument(span));
}

/// Sends a heartbeat every interval and checks liveness four times as
/// often; returns when nothing has arrived for `timeout`.
async fn heartbeat(conn: &Connection, hb: HeartbeatConfig) {
    const CHECKS_PER_INTERVAL: u32 = 4;
    let mut tick = tokio::time::interval(hb.interval / CHECKS_PER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    let mut seq = 0u64;
    let mut seen_packets = conn.stats().udp_rx.datagrams;
    let mut last_heard = Instant::now();
    loop {
        tick.tick().await;
        if ticks % CHECKS_PER_INTERVAL == 0 {
            if let Err(e) = conn.send_datagram(Datagram::Heartbeat { seq }.encode().into()) {
                debug!("heartbeat not sent: {e}");
            }
            seq += 1;
        }
        ticks = ticks.wrapping_add(1);
        // Any packet from the peer proves it alive, so bulk transfers that
        // crowd out heartbeat datagrams never cause a false NodeDown.
        let packets = conn.stats().udp_rx.datagrams;
        if packets != seen_packets {
            seen_packets = packets;
            last_heard = Instant::now();
        } else if last_heard.elapsed() >= hb.timeout {
            return;
        }
    }
}

/// Reads and discards datagrams so the receive buffer never fills; their
/// arrival is what counts, and it shows in the connection's statistics.
async fn drain_datagrams(conn: Connection) {
    while let Ok(d) = conn.read_datagram().await {
        if Datagram::decode(&d).is_none() {
            debug!("ignored an unknown datagram of {} bytes", d.len());
        }
    }
}

async fn write_control(
    mut send: SendStream,
    mut queue: mpsc::Receiver<Control>,
    first: Option<Control>,
    max: usize,
) {
    if let Some(msg) = first
        && transport::write_frame(&mut send, &msg, max).await.is_err()
    {
        return;
    }
    while let Some(msg) = queue.recv().await {
        if let Err(e) = transport::write_frame(&mut send, &msg, max).await {
            debug!("control stream closed: {e}");
            return;
        }
    }
}

async fn read_control(
    m: Arc<Membership>,
    name: quicmesh_wire::NodeName,
    handle: LinkHandle,
    mut recv: RecvStream,
) {
    loop {
        match transport::read_frame::<Control>(&mut recv, m.config.max_frame).await {
            Ok(Some(Control::Peers(peers))) => m.learn(peers),
            Ok(Some(other)) => {
                let detail = format!("unexpected control message after the handshake: {other:?}");
                return m.protocol_violation(&name, &handle, detail);
            }
            Ok(None) => return,
            Err(StreamError::Bad(e)) => {
                return m.protocol_violation(&name, &handle, format!("control stream: {e}"));
            }
            Err(StreamError::Transport(e)) => {
                debug!("control stream ended: {e}");
                return;
            }
        }
    }
}

/// Accepts the streams the peer opens and routes each by its header.
async fn serve_streams(m: Arc<Membership>, name: quicmesh_wire::NodeName, handle: LinkHandle) {
    let conn = handle.conn.clone();
    let mut streams = JoinSet::new();
    let rpc_permits = Arc::new(Semaphore::new(m.config.rpc.max_inbound_per_peer));
    loop {
        tokio::select! {
            bi = conn.accept_bi() => match bi {
                Ok((send, recv)) => {
                    let served = serve_bi(m.clone(), name.clone(), handle.clone(), rpc_permits.clone(), send, recv);
                    streams.spawn(served.in_current_span());
                }
                Err(_) => return,
            },
            uni = conn.accept_uni() => match uni {
                Ok(recv) => {
                    let served = serve_uni(m.clone(), name.clone(), handle.clone(), recv);
                    streams.spawn(served.in_current_span());
                }
                Err(_) => return,
            },
            Some(_) = streams.join_next() => {}
        }
    }
}

async fn serve_bi(
    m: Arc<Membership>,
    name: quicmesh_wire::NodeName,
    handle: LinkHandle,
    rpc_permits: Arc<Semaphore>,
    mut send: SendStream,
    mut recv: RecvStream,
) {
    let patience = m.config.handshake_timeout;
    let refuse = |send: &mut SendStream, recv: &mut RecvStream, code: CloseCode| {
        let _ = send.reset(VarInt::from_u32(code.code()));
        let _ = recv.stop(VarInt::from_u32(code.code()));
    };
    let kind = match transport::within(patience, transport::read_kind(&mut recv)).await {
        None => return refuse(&mut send, &mut recv, CloseCode::HandshakeTimeout),
        Some(Err(StreamError::Bad(e))) => {
            return m.protocol_violation(&name, &handle, format!("stream header: {e}"));
        }
        Some(Err(StreamError::Transport(_))) => return,
        Some(Ok(kind)) => kind,
    };
    match kind {
        Ok(StreamKind::Ping) => {
            let _ = send.set_priority(super::CONTROL_PRIORITY);
            let ping =
                transport::within(patience, transport::read_frame::<Ping>(&mut recv, 64)).await;
            match ping {
                Some(Ok(Some(p))) => {
                    if transport::write_frame(&mut send, &p, 64).await.is_ok() {
                        let _ = send.finish();
                        // Keep the stream until the pong is acknowledged.
                        let _ = transport::within(Duration::from_secs(1), send.stopped()).await;
                    }
                }
                Some(Ok(None)) | Some(Err(StreamError::Bad(_))) => {
                    m.protocol_violation(&name, &handle, "malformed ping".to_owned());
                }
                Some(Err(StreamError::Transport(_))) | None => {}
            }
        }
        Ok(StreamKind::Rpc) => {
            if let Err(detail) =
                crate::rpc::serve(m.clone(), name.clone(), rpc_permits, send, recv).await
            {
                m.protocol_violation(&name, &handle, detail);
            }
        }
        Ok(StreamKind::RpcLane) => {
            let conn = handle.conn.clone();
            let served =
                crate::rpc::serve_lane(m.clone(), name.clone(), conn, rpc_permits, send, recv);
            if let Err(detail) = served.await {
                m.protocol_violation(&name, &handle, detail);
            }
        }
        Ok(StreamKind::App) => {
            if let Err(detail) = m
                .protocols
                .dispatch(name.clone(), Some(send), recv, patience)
                .await
            {
                m.protocol_violation(&name, &handle, detail);
            }
        }
        Ok(StreamKind::Control) => {
            m.protocol_violation(&name, &handle, "a second control stream".to_owned());
        }
        Err(code) => {
            debug!("refused a stream of unknown kind {code:#06x}");
            refuse(&mut send, &mut recv, CloseCode::UnknownStreamKind);
        }
        #[allow(unreachable_patterns)]
        Ok(other) => {
            debug!("refused a stream of kind {other:?}, which this node does not serve");
            refuse(&mut send, &mut recv, CloseCode::UnknownStreamKind);
        }
    }
}

/// Unidirectional streams: application protocols and large lane replies.
async fn serve_uni(
    m: Arc<Membership>,
    name: quicmesh_wire::NodeName,
    handle: LinkHandle,
    mut recv: RecvStream,
) {
    let patience = m.config.handshake_timeout;
    match transport::within(patience, transport::read_kind(&mut recv)).await {
        Some(Ok(Ok(StreamKind::App))) => {
            if let Err(detail) = m
                .protocols
                .dispatch(name.clone(), None, recv, patience)
                .await
            {
                m.protocol_violation(&name, &handle, detail);
            }
        }
        Some(Ok(Ok(StreamKind::RpcReply))) => {
            let lane = handle.lane.get().cloned();
            let received = transport::within(patience, crate::rpc::receive_reply(lane, recv)).await;
            if let Some(Err(detail)) = received {
                m.protocol_violation(&name, &handle, detail);
            }
        }
        Some(Err(StreamError::Bad(e))) => {
            m.protocol_violation(&name, &handle, format!("stream header: {e}"));
        }
        Some(Err(StreamError::Transport(_))) => {}
        Some(Ok(_)) | None => {
            let _ = recv.stop(VarInt::from_u32(CloseCode::UnknownStreamKind.code()));
        }
    }
}
