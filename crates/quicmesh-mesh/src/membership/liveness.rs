//! Liveness of every link, watched by one task per node.
//!
//! Of the two ends of a link only one (`sends`: the smaller name) sends a
//! heartbeat datagram every interval: the other end hears it, and hears
//! back the acknowledgement QUIC sends for it (within its ACK delay), so
//! each side hears the other with half the packets of both sending. Four
//! times an interval the watcher looks at every link's count of received
//! packets: any packet (heartbeat, data, acknowledgement) proves the peer
//! alive, so bulk transfers that crowd out heartbeat datagrams never cause
//! a false `NodeDown`. A link that heard nothing for the heartbeat timeout
//! is told, and its task closes the connection. Both ends record the
//! connection's RTT estimate once an interval for the metrics' heartbeat
//! RTT histogram.
//!
//! One task and one timer for all links, rather than one each: a node of
//! a 100-node mesh wakes 8 times a second, not 800.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use quicmesh_wire::Datagram;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::debug;

use super::Inner;
use crate::peer::Peer;

/// Checks of every link per heartbeat interval.
const CHECKS_PER_INTERVAL: u32 = 4;

/// The links watched, by connection id.
#[derive(Debug, Default)]
pub(super) struct Liveness {
    links: Mutex<HashMap<usize, Watched>>,
}

#[derive(Debug)]
struct Watched {
    peer: Peer,
    /// Whether this end sends the heartbeats.
    sends: bool,
    seq: u64,
    seen_packets: u64,
    last_heard: Instant,
    /// Fired when nothing was heard for the timeout.
    silent: Option<oneshot::Sender<()>>,
}

/// A link watched until this is dropped; [`Watch::silent`] resolves when
/// nothing was heard from the peer for the heartbeat timeout.
pub(super) struct Watch {
    liveness: Weak<Liveness>,
    id: usize,
    silent: oneshot::Receiver<()>,
}

impl Watch {
    /// Resolves once the peer has been silent for the heartbeat timeout.
    pub(super) async fn silent(&mut self) {
        if (&mut self.silent).await.is_err() {
            // The watcher went (the node shuts down): the link's own
            // shutdown branch ends it.
            std::future::pending::<()>().await;
        }
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        if let Some(liveness) = self.liveness.upgrade() {
            liveness.lock().remove(&self.id);
        }
    }
}

impl Liveness {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<usize, Watched>> {
        self.links.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Watches `peer`'s connection from now on; `sends` if this end sends
    /// the heartbeats.
    pub(super) fn watch(self: &Arc<Self>, peer: &Peer, sends: bool) -> Watch {
        let (tx, silent) = oneshot::channel();
        let id = peer.connection_id();
        let watched = Watched {
            peer: peer.clone(),
            sends,
            seq: 0,
            seen_packets: peer.connection().stats().udp_rx.datagrams,
            last_heard: Instant::now(),
            silent: Some(tx),
        };
        self.lock().insert(id, watched);
        Watch {
            liveness: Arc::downgrade(self),
            id,
            silent,
        }
    }
}

/// Checks every link four times a heartbeat interval until the node shuts
/// down.
pub(super) async fn run(inner: Arc<Inner>) {
    let hb = inner.config.heartbeat;
    let mut tick = tokio::time::interval(hb.interval / CHECKS_PER_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tokio::select! {
            _ = inner.tasks.cancelled() => return,
            _ = tick.tick() => {}
        }
        let beat = ticks % CHECKS_PER_INTERVAL == 0;
        ticks = ticks.wrapping_add(1);
        let now = Instant::now();
        let mut links = inner.liveness.lock();
        for link in links.values_mut() {
            let conn = link.peer.connection();
            if beat {
                inner.stats.heartbeat_rtt.record(conn.rtt());
                if link.sends {
                    let datagram = Datagram::Heartbeat { seq: link.seq }.encode();
                    if let Err(e) = conn.send_datagram(datagram.into()) {
                        debug!(peer = %link.peer.name(), "heartbeat not sent: {e}");
                    }
                    link.seq += 1;
                }
            }
            let packets = conn.stats().udp_rx.datagrams;
            if packets != link.seen_packets {
                link.seen_packets = packets;
                link.last_heard = now;
                link.peer.heard();
            } else if now.duration_since(link.last_heard) >= hb.timeout
                && let Some(silent) = link.silent.take()
            {
                let _ = silent.send(());
            }
        }
    }
}
