//! A histogram of durations that records without a lock.
//!
//! The layers above keep their latency histograms in one of these (RPC
//! calls, lock waits), and the mesh keeps the heartbeat RTT in one: a
//! record is two relaxed atomic additions and a search of a dozen bounds,
//! cheap enough for the call path, and a scrape reads a
//! [`HistogramSnapshot`] at any time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds in seconds for round trips and call latencies: 50 µs to
/// 10 s, about three per decade (loopback calls take tens of
/// microseconds, a call across regions a hundred milliseconds, a call
/// that waits for a timeout seconds).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0,
];

/// Counts of durations by bucket, their number and their sum.
#[derive(Debug)]
pub struct Histogram {
    bounds: &'static [f64],
    /// One count per bound, plus one for values above the last (`+Inf`).
    counts: Box<[AtomicU64]>,
    /// Sum of every value, in nanoseconds (overflows after 584 years of
    /// recorded time).
    sum_nanos: AtomicU64,
}

impl Default for Histogram {
    /// A histogram with [`LATENCY_BUCKETS`].
    fn default() -> Self {
        Self::new(LATENCY_BUCKETS)
    }
}

impl Histogram {
    /// A histogram with these upper bounds, in seconds, ascending.
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_nanos: AtomicU64::new(0),
        }
    }

    /// Records one duration.
    pub fn record(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = self.bounds.partition_point(|&b| b < secs);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        let nanos = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        self.sum_nanos.fetch_add(nanos, Ordering::Relaxed);
    }

    /// The counts now. Concurrent records may land between reading two
    /// buckets; each bucket stays monotonic, which is what Prometheus needs.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut count = 0;
        let mut buckets = Vec::with_capacity(self.counts.len());
        for (i, c) in self.counts.iter().enumerate() {
            let n = c.load(Ordering::Relaxed);
            count += n;
            let bound = self.bounds.get(i).copied().unwrap_or(f64::INFINITY);
            buckets.push((bound, n));
        }
        HistogramSnapshot {
            buckets,
            count,
            sum: Duration::from_nanos(self.sum_nanos.load(Ordering::Relaxed)).as_secs_f64(),
        }
    }
}

/// A [`Histogram`]'s values at one moment, shaped as Prometheus encodes
/// them.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct HistogramSnapshot {
    /// Upper bound in seconds and the number of values above the bound
    /// before it and at or below this one (not cumulative, as
    /// `prometheus-client`'s encoders take them); the last bound is
    /// `+Inf`.
    pub buckets: Vec<(f64, u64)>,
    /// Number of values recorded.
    pub count: u64,
    /// Sum of the values, in seconds.
    pub sum: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_cumulative_buckets() {
        let h = Histogram::new(&[0.001, 0.01]);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(1));
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(1));
        let s = h.snapshot();
        assert_eq!(s.buckets, vec![(0.001, 2), (0.01, 1), (f64::INFINITY, 1)]);
        assert_eq!(s.count, 4);
        assert!((s.sum - 1.0065).abs() < 1e-9, "{}", s.sum);
    }
}
