//! What coordination refused from its peers, counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use quicmesh_mesh::{Histogram, HistogramSnapshot};

/// Live counters (one set per node).
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) claims_refused: AtomicU64,
    pub(crate) clocks_refused: AtomicU64,
    pub(crate) announcements_refused: AtomicU64,
    pub(crate) names_refused: AtomicU64,
    pub(crate) locks_refused: AtomicU64,
    pub(crate) locks_lost: AtomicU64,
    /// Lock attempts of this node's callers and how long each waited.
    pub(crate) locks_acquired: AtomicU64,
    pub(crate) locks_failed: AtomicU64,
    pub(crate) lock_wait: Histogram,
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

impl CoordCounters {
    /// Every counter with its field's name, in declaration order (what
    /// `quicmesh status` lists).
    pub fn named(&self) -> [(&'static str, u64); 6] {
        // Destructured whole: a new counter does not compile until named.
        let Self {
            claims_refused,
            clocks_refused,
            announcements_refused,
            names_refused,
            locks_refused,
            locks_lost,
        } = *self;
        [
            ("claims_refused", claims_refused),
            ("clocks_refused", clocks_refused),
            ("announcements_refused", announcements_refused),
            ("names_refused", names_refused),
            ("locks_refused", locks_refused),
            ("locks_lost", locks_lost),
        ]
    }
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

impl Counters {
    /// Counts a lock attempt of this node's that ended after `waited`.
    pub(crate) fn lock_attempt(&self, acquired: bool, waited: Duration) {
        count(if acquired {
            &self.locks_acquired
        } else {
            &self.locks_failed
        });
        self.lock_wait.record(waited);
    }
}

/// What coordination measured, at one moment
/// (`quicmesh::Node::register_metrics` reads it at each scrape).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct CoordMetrics {
    /// What coordination refused and lost.
    pub counters: CoordCounters,
    /// Locks this node's callers took with `Coord::lock` (an election's
    /// campaign retries its lock until it leads: those attempts are not
    /// counted here, its leader changes are).
    pub locks_acquired: u64,
    /// `Coord::lock` calls that failed (timed out, refused).
    pub locks_failed: u64,
    /// How long each `Coord::lock` call waited, acquired or not.
    pub lock_wait: HistogramSnapshot,
    /// Locks held in this node's lock table (its own and its peers').
    pub locks_held: usize,
    /// Names in the global registry, as this node knows them.
    pub registry_names: usize,
    /// Changes of leader this node saw, over every election.
    pub leader_changes: u64,
}
