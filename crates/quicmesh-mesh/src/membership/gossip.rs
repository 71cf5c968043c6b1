//! How many `Peers` frames from one peer taught this node nothing, as
//! data: no I/O, no clock (the link task passes `now`).
//!
//! A node tells its other peers of a node once each time that node comes
//! up at it, so an honest peer's `Peers` frames are as many as the nodes
//! coming up there; many of them teach nothing (the node is known already
//! from elsewhere) and that is fine. A peer that keeps sending frames that
//! teach nothing, many more than any number of nodes coming up, is only
//! making this node work, and is dropped.

use std::time::{Duration, Instant};

/// The window in which useless `Peers` frames are counted.
pub(super) const USELESS_PEERS_WINDOW: Duration = Duration::from_secs(10);
/// The fewest useless `Peers` frames a peer may send in one window,
/// whatever `max_peers` is.
pub(super) const MIN_USELESS_PEERS: u64 = 64;

/// The useless `Peers` frames one peer sent in the current window. A
/// peer may send `max(max_peers, MIN_USELESS_PEERS)` of them per window:
/// an honest peer announces each node coming up there once, and within
/// [`USELESS_PEERS_WINDOW`] no honest peer sees more nodes come up than a
/// peer table holds. Frames that taught something are not counted (nor
/// do they forgive the useless ones).
#[derive(Debug)]
pub(super) struct UselessPeers {
    allowed: u64,
    window: Option<(Instant, u64)>,
}

/// The peer passed its allowance: how many useless frames it sent in the
/// window, and the allowance.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct TooManyUseless {
    pub(super) sent: u64,
    pub(super) allowed: u64,
}

impl UselessPeers {
    /// The count for one peer of a node whose table holds `max_peers`.
    pub(super) fn new(max_peers: usize) -> Self {
        let max_peers = u64::try_from(max_peers).unwrap_or(u64::MAX);
        Self {
            allowed: max_peers.max(MIN_USELESS_PEERS),
            window: None,
        }
    }

    /// A `Peers` frame arrived at `now`; `taught` says whether this node
    /// took in any node it named. `Err` once the useless ones in the
    /// current window pass the allowance.
    pub(super) fn note(&mut self, taught: bool, now: Instant) -> Result<(), TooManyUseless> {
        if taught {
            return Ok(());
        }
        let (start, sent) = self.window.get_or_insert((now, 0));
        if now.saturating_duration_since(*start) >= USELESS_PEERS_WINDOW {
            (*start, *sent) = (now, 0);
        }
        *sent += 1;
        if *sent > self.allowed {
            return Err(TooManyUseless {
                sent: *sent,
                allowed: self.allowed,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn useless_frames_past_the_allowance_in_one_window_are_too_many() {
        let mut useless = UselessPeers::new(100);
        let t0 = Instant::now();
        for i in 0..100 {
            assert_eq!(useless.note(false, t0 + Duration::from_millis(i)), Ok(()));
        }
        assert_eq!(useless.note(true, t0), Ok(()), "a useful frame always goes");
        assert_eq!(
            useless.note(false, t0 + Duration::from_secs(1)),
            Err(TooManyUseless {
                sent: 101,
                allowed: 100
            })
        );
    }

    #[test]
    fn a_new_window_starts_the_count_again() {
        let mut useless = UselessPeers::new(100);
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(useless.note(false, t0).is_ok());
        }
        let later = t0 + USELESS_PEERS_WINDOW;
        for _ in 0..100 {
            assert!(useless.note(false, later).is_ok(), "a window later");
        }
        assert!(useless.note(false, later).is_err());
    }

    #[test]
    fn useful_frames_do_not_forgive_useless_ones() {
        let mut useless = UselessPeers::new(0);
        let t0 = Instant::now();
        for _ in 0..MIN_USELESS_PEERS {
            assert!(useless.note(false, t0).is_ok());
            assert!(useless.note(true, t0).is_ok());
        }
        assert!(
            useless.note(false, t0).is_err(),
            "a small max_peers still allows the floor, no more"
        );
    }
}
