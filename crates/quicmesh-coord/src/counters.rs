//! What coordination refused from its peers, counted.

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters (one set per node).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) claims_refused: AtomicU64,
    pub(crate) clocks_refused: AtomicU64,
    pub(crate) announcements_refused: AtomicU64,
    pub(crate) names_refused: AtomicU64,
    pub(crate) locks_refused: AtomicU64,
    pub(crate) locks_lost: AtomicU64,
}

/// Adds one.
pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// What coordination refused from peers, and what it lost, since the node
/// started (`quicmesh::Node::coordination_counters`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct CoordCounters {
    /// Claims to a name this node holds, refused because the claimant had
    /// stored this node's registration and claimed an earlier one.
    pub claims_refused: u64,
    /// Messages refused for a clock reading too far from this node's
    /// ([`crate::MAX_CLOCK_DRIFT`]).
    pub clocks_refused: u64,
    /// Announcements of leadership from a node not holding the election's
    /// lock with that term.
    pub announcements_refused: u64,
    /// Names refused because their owner has as many as an owner may.
    pub names_refused: u64,
    /// Locks refused because their node holds as many as a node may here.
    pub locks_refused: u64,
    /// This node's locks (and leaderships) lost to another node's grant
    /// with a larger token, learnt when the two met.
    pub locks_lost: u64,
}

impl Counters {
    pub(crate) fn snapshot(&self) -> CoordCounters {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        CoordCounters {
            claims_refused: get(&self.claims_refused),
            clocks_refused: get(&self.clocks_refused),
            announcements_refused: get(&self.announcements_refused),
            names_refused: get(&self.names_refused),
            locks_refused: get(&self.locks_refused),
            locks_lost: get(&self.locks_lost),
        }
    }
}
