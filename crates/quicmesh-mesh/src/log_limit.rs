//! Log lines that a peer's behaviour causes, limited: the first at once,
//! then at most one per interval, saying how many were held back, so a
//! flood never turns into a flood of log lines.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Shortest time between two lines of one kind.
const INTERVAL: Duration = Duration::from_secs(10);

/// One kind of limited log line.
#[derive(Debug, Default)]
pub(crate) struct LogLimit {
    /// When the last line was written, and how many were held back since.
    state: Mutex<Option<(Instant, u64)>>,
}

/// Leave to write a line; how many were held back before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Leave {
    held_back: u64,
}

impl Leave {
    /// A suffix for the line: empty, or how many lines it stands for.
    pub(crate) fn since_last(self) -> String {
        match self.held_back {
            0 => String::new(),
            n => format!(" (and {n} more like it since the last such line)"),
        }
    }
}

impl LogLimit {
    /// Whether a line may be written now.
    pub(crate) fn allow(&self) -> Option<Leave> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<Leave> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match &mut *state {
            Some((last, held_back)) if now.duration_since(*last) < INTERVAL => {
                *held_back += 1;
                None
            }
            Some((last, held_back)) => {
                let leave = Leave {
                    held_back: *held_back,
                };
                (*last, *held_back) = (now, 0);
                Some(leave)
            }
            None => {
                *state = Some((now, 0));
                Some(Leave { held_back: 0 })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_line_goes_then_one_per_interval_with_a_count() {
        let limit = LogLimit::default();
        let t0 = Instant::now();
        assert_eq!(limit.allow_at(t0), Some(Leave { held_back: 0 }));
        for i in 1..=5 {
            assert_eq!(limit.allow_at(t0 + Duration::from_secs(i)), None);
        }
        let next = limit
            .allow_at(t0 + INTERVAL)
            .expect("a line after the interval");
        assert_eq!(
            next.since_last(),
            " (and 5 more like it since the last such line)"
        );
        assert_eq!(limit.allow_at(t0 + INTERVAL + Duration::from_secs(1)), None);
        let quiet = limit.allow_at(t0 + INTERVAL * 3).expect("a line");
        assert_eq!(quiet.held_back, 1);
        assert_eq!(Leave { held_back: 0 }.since_last(), "");
    }
}
