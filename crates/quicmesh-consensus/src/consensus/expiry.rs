//! The leader's side of session expiry: it watches every session's last
//! renewal by its own clock and proposes `Expire` for one not renewed
//! within its TTL. The machine decides (see [`crate::machine`]); this only
//! proposes.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use tokio::time::Instant;

use super::{Inner, leads};
use crate::machine::{Command, SessionId};

/// Runs while the node's consensus does: every heartbeat, while this
/// voter leads, proposes the expiry of each session seen with the same
/// renewal for longer than its TTL. A renewal is first seen when this
/// voter, as leader, first looks at it: a new leader gives every session
/// a full TTL from its election.
pub(super) async fn run(inner: Weak<Inner>) {
    let mut seen: HashMap<(SessionId, u64), Instant> = HashMap::new();
    loop {
        let Some(this) = inner.upgrade() else { return };
        let (Some(v), cancel) = (&this.voter, this.cancel.clone()) else {
            return;
        };
        let period = this.config.heartbeat;
        if !leads(v) {
            seen.clear();
        } else {
            let now = Instant::now();
            let sessions: Vec<(SessionId, u64, u64)> = v
                .shared
                .state()
                .machine
                .sessions()
                .iter()
                .map(|(id, s)| (*id, s.renewed, s.ttl_ms))
                .collect();
            seen.retain(|key, _| sessions.iter().any(|(id, r, _)| (*id, *r) == *key));
            for (session, renewed, ttl_ms) in sessions {
                let first = *seen.entry((session, renewed)).or_insert(now);
                if now.duration_since(first) <= Duration::from_millis(ttl_ms) {
                    continue;
                }
                let expire = Command::Expire { session, renewed };
                match tokio::time::timeout(period * 10, v.raft.client_write(expire)).await {
                    Ok(Ok(r)) => tracing::info!(session, reply = ?r.data, "session expiry applied"),
                    Ok(Err(e)) => tracing::debug!(session, "could not expire the session: {e}"),
                    Err(_) => tracing::debug!(session, "expiry not committed in time"),
                }
            }
        }
        drop(this);
        tokio::select! {
            biased;
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(period) => {}
        }
    }
}
