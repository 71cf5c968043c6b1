//! Handshakes in progress per source IP address, as data: a map of counts
//! and a permit that gives its slot back when dropped. No I/O; the accept
//! loop asks for a permit before it spends a handshake slot.
//!
//! The map holds only addresses with a handshake in progress: an entry
//! goes when its count drops to zero, so it never has more entries than
//! handshakes run at once.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use super::guard;

/// Handshakes in progress, counted per source IP address, at most
/// `limit` per address.
#[derive(Debug)]
pub(super) struct PerSource {
    limit: usize,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

/// One handshake in progress from `ip`; dropping it gives the slot back.
#[derive(Debug)]
pub(super) struct SourcePermit {
    ip: IpAddr,
    counts: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl PerSource {
    /// At most `limit` handshakes in progress per address.
    pub(super) fn new(limit: usize) -> Self {
        Self {
            limit,
            counts: Arc::default(),
        }
    }

    /// A slot for one more handshake from `ip`, unless `limit` are in
    /// progress from it already.
    pub(super) fn try_acquire(&self, ip: IpAddr) -> Option<SourcePermit> {
        let mut counts = guard(&self.counts);
        let n = counts.get(&ip).copied().unwrap_or(0);
        if n >= self.limit {
            return None; // and no entry was made for it
        }
        counts.insert(ip, n + 1);
        Some(SourcePermit {
            ip,
            counts: self.counts.clone(),
        })
    }

    /// Handshakes in progress from `ip`.
    #[cfg(test)]
    fn in_progress(&self, ip: IpAddr) -> usize {
        guard(&self.counts).get(&ip).copied().unwrap_or(0)
    }

    /// Addresses with a handshake in progress.
    #[cfg(test)]
    fn sources(&self) -> usize {
        guard(&self.counts).len()
    }
}

impl Drop for SourcePermit {
    fn drop(&mut self) {
        let mut counts = guard(&self.counts);
        if let Some(n) = counts.get_mut(&self.ip) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                counts.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_address_gets_at_most_the_limit_others_are_not_affected() {
        let per = PerSource::new(3);
        let (a, b) = (ip("127.0.0.1"), ip("::1"));
        let held: Vec<_> = (0..3).map(|_| per.try_acquire(a).unwrap()).collect();
        assert!(per.try_acquire(a).is_none(), "a fourth from a");
        let none = PerSource::new(0);
        assert!(none.try_acquire(b).is_none());
        assert_eq!(none.sources(), 0, "a refused address leaves no entry");
        assert_eq!(per.in_progress(a), 3, "a refusal holds no slot");
        let other = per
            .try_acquire(b)
            .expect("another address is not limited by a");
        assert_eq!(per.sources(), 2);
        drop(other);
        assert_eq!(per.sources(), 1, "b's entry went with its last permit");
        drop(held);
        assert_eq!(per.in_progress(a), 0);
    }

    #[test]
    fn a_finished_handshake_frees_its_slot_and_the_map_empties() {
        let per = PerSource::new(2);
        let a = ip("127.0.0.1");
        let first = per.try_acquire(a).unwrap();
        let second = per.try_acquire(a).unwrap();
        assert!(per.try_acquire(a).is_none());
        drop(first);
        let third = per.try_acquire(a).expect("a slot came back");
        assert_eq!(per.in_progress(a), 2);
        drop((second, third));
        assert_eq!(per.sources(), 0, "no entry outlives its handshakes");
        assert!(per.try_acquire(a).is_some());
    }

    #[test]
    fn many_addresses_leave_nothing_behind() {
        let per = PerSource::new(1);
        let permits: Vec<_> = (0..=255u8)
            .map(|i| per.try_acquire(IpAddr::from([127, 0, 0, i])).unwrap())
            .collect();
        assert_eq!(per.sources(), 256);
        drop(permits);
        assert_eq!(per.sources(), 0);
    }
}
