//! The node's hybrid logical clock, shared by the registry, locks and
//! elections: wall-clock milliseconds with a counter, moved past every
//! reading a peer sends, so causally later events read later on every
//! node. A reading from a peer ahead of this node's wall clock by more
//! than [`MAX_DRIFT`] is refused rather than followed, so one node with a
//! wrong clock (or a forged reading) cannot drag every clock ahead.

use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quicmesh_wire::coord::Hlc;

use crate::locked;

/// How far ahead of this node's wall clock a peer's reading may be.
pub(crate) const MAX_DRIFT: Duration = Duration::from_secs(5);

/// A reading that was too far ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ahead {
    /// By how much it was ahead of this node's wall clock.
    pub(crate) by: Duration,
}

/// The clock (readings kept packed, see [`Hlc::packed`]).
#[derive(Debug, Default)]
pub(crate) struct Clock {
    last: Mutex<u64>,
}

fn wall_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The reading after `last` at wall-clock `wall` milliseconds.
fn tick(last: u64, wall: u64) -> u64 {
    (wall << 16).max(last.saturating_add(1))
}

/// Whether `seen` is acceptable at wall-clock `wall` milliseconds.
fn check(seen: Hlc, wall: u64) -> Result<(), Ahead> {
    let limit = wall.saturating_add(MAX_DRIFT.as_millis() as u64);
    if seen.millis > limit {
        Err(Ahead {
            by: Duration::from_millis(seen.millis - wall),
        })
    } else {
        Ok(())
    }
}

impl Clock {
    /// A reading after every earlier one of this node and every reading
    /// it took in.
    pub(crate) fn now(&self) -> Hlc {
        let mut last = locked(&self.last);
        *last = tick(*last, wall_millis());
        Hlc::unpacked(*last)
    }

    /// Moves the clock past `seen` from a peer, unless `seen` is more than
    /// [`MAX_DRIFT`] ahead of this node's wall clock.
    pub(crate) fn observe(&self, seen: Hlc) -> Result<(), Ahead> {
        check(seen, wall_millis())?;
        let mut last = locked(&self.last);
        *last = (*last).max(seen.packed());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readings_pass_the_wall_and_each_other_and_the_counter_rolls_over() {
        let at = |millis, counter| Hlc { millis, counter }.packed();
        assert_eq!(tick(at(10, 4), 20), at(20, 0));
        assert_eq!(tick(at(10, 4), 10), at(10, 5));
        assert_eq!(tick(at(10, 4), 3), at(10, 5), "a wall clock behind");
        assert_eq!(
            tick(at(10, Hlc::MAX_COUNTER), 10),
            at(11, 0),
            "a full counter moves on to the next millisecond"
        );
    }

    #[test]
    fn a_reading_too_far_ahead_is_refused_and_not_followed() {
        let wall = 1_000_000;
        let drift = MAX_DRIFT.as_millis() as u64;
        let ok = Hlc {
            millis: wall + drift,
            counter: 9,
        };
        assert_eq!(check(ok, wall), Ok(()));
        let ahead = Hlc {
            millis: wall + drift + 1,
            counter: 0,
        };
        assert_eq!(
            check(ahead, wall),
            Err(Ahead {
                by: Duration::from_millis(drift + 1)
            })
        );
        let clock = Clock::default();
        let far = Hlc {
            millis: wall_millis() + 3_600_000,
            counter: 0,
        };
        assert!(clock.observe(far).is_err());
        assert!(clock.now() < far, "the clock did not follow it");
        let near = clock.now();
        let near = Hlc {
            millis: near.millis + 1000,
            counter: 3,
        };
        clock.observe(near).expect("within the drift");
        assert!(clock.now() > near);
    }
}
