//! RPC measured for a metrics endpoint: calls by service and outcome with
//! their latency, and calls the callee refused for its limits.
//!
//! Calls are counted where they are made (calls, casts and each node of a
//! multicall; streaming calls are not), so a service name comes from the
//! caller's own code, never from a peer. A program that builds service
//! names at run time could still make the label set grow: past
//! [`MAX_SERVICES`] names, further ones are counted under
//! [`OTHER_SERVICE`]. A call costs a hash of its service name, a few plain
//! loads (a mutex the first time a service is called), two clock readings
//! and three relaxed atomic additions.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::Duration;

use quicmesh_mesh::{Histogram, HistogramSnapshot};

use crate::RpcError;

/// Services counted by name; calls to any further one count under
/// [`OTHER_SERVICE`].
pub const MAX_SERVICES: usize = 128;

/// The service label of calls past [`MAX_SERVICES`] names.
pub const OTHER_SERVICE: &str = "_other";

/// Every outcome label, in the order [`ServiceCalls::outcomes`] lists them.
pub const OUTCOMES: &[&str] = &[
    "ok",
    "timeout",
    "node_down",
    "not_connected",
    "no_such_service",
    "remote",
    "panicked",
    "decode",
    "too_large",
    "overloaded",
    "protocol",
];

impl RpcError {
    /// A short, fixed name for the kind of failure (a metric label): one
    /// of [`OUTCOMES`] other than `ok`.
    pub fn kind(&self) -> &'static str {
        OUTCOMES[outcome_index(self)]
    }
}

fn outcome_index(e: &RpcError) -> usize {
    match e {
        RpcError::Timeout { .. } => 1,
        RpcError::NodeDown { .. } => 2,
        RpcError::NotConnected { .. } => 3,
        RpcError::NoSuchService { .. } => 4,
        RpcError::Remote { .. } => 5,
        RpcError::Panicked { .. } => 6,
        RpcError::Decode { .. } => 7,
        RpcError::TooLarge { .. } => 8,
        RpcError::Overloaded { .. } => 9,
        RpcError::Protocol { .. } => 10,
    }
}

/// One service's calls.
#[derive(Debug)]
struct Service {
    outcomes: [AtomicU64; OUTCOMES.len()],
    latency: Histogram,
}

impl Default for Service {
    fn default() -> Self {
        Self {
            outcomes: std::array::from_fn(|_| AtomicU64::new(0)),
            latency: Histogram::default(),
        }
    }
}

/// Slots of the service table: twice [`MAX_SERVICES`], so probing stays
/// short.
const SLOTS: usize = 2 * MAX_SERVICES;

/// The live counts of one node (held by its `Rpc`).
///
/// Services sit in an open-addressed table of write-once slots: a call
/// finds its service with plain loads (no lock, no reference count, so
/// threads calling at once do not contend on anything but the counters
/// themselves), and the first call to a new service takes a mutex to fill
/// a slot.
#[derive(Debug)]
pub(crate) struct Stats {
    slots: Box<[OnceLock<(String, Service)>]>,
    /// Taken to fill a slot.
    filling: Mutex<()>,
    /// Services named so far (at most [`MAX_SERVICES`]).
    named: AtomicUsize,
    other: Service,
    /// Calls refused here because their caller had `max_inbound_per_peer`
    /// in progress.
    pub(crate) refused_per_peer: AtomicU64,
    /// Calls refused here because buffering their body would pass
    /// `max_buffered` or `max_buffered_per_peer`.
    pub(crate) refused_buffered: AtomicU64,
}

impl Default for Stats {
    fn default() -> Self {
        Self {
            slots: (0..SLOTS).map(|_| OnceLock::new()).collect(),
            filling: Mutex::new(()),
            named: AtomicUsize::new(0),
            other: Service::default(),
            refused_per_peer: AtomicU64::new(0),
            refused_buffered: AtomicU64::new(0),
        }
    }
}

impl Stats {
    /// The slots `name` may be in, in probing order.
    fn probe(&self, name: &str) -> impl Iterator<Item = &OnceLock<(String, Service)>> {
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(name, &mut h);
        let start = std::hash::Hasher::finish(&h) as usize % SLOTS;
        (0..SLOTS).map(move |i| &self.slots[(start + i) % SLOTS])
    }

    fn service(&self, name: &str) -> &Service {
        for slot in self.probe(name) {
            match slot.get() {
                Some((n, s)) if n == name => return s,
                Some(_) => {}
                None if self.named.load(Ordering::Relaxed) >= MAX_SERVICES => break,
                None => return self.add(name),
            }
        }
        &self.other
    }

    /// Fills a slot for `name` (unless another call just did), or gives
    /// [`OTHER_SERVICE`]'s counts past [`MAX_SERVICES`] names.
    fn add(&self, name: &str) -> &Service {
        let _filling = self.filling.lock().unwrap_or_else(|e| e.into_inner());
        for slot in self.probe(name) {
            match slot.get() {
                Some((n, s)) if n == name => return s,
                Some(_) => {}
                None if self.named.load(Ordering::Relaxed) >= MAX_SERVICES => break,
                None => {
                    self.named.fetch_add(1, Ordering::Relaxed);
                    return &slot.get_or_init(|| (name.to_owned(), Service::default())).1;
                }
            }
        }
        &self.other
    }

    /// Counts a call to `service` that took `elapsed`.
    pub(crate) fn call<T>(&self, service: &str, result: &Result<T, RpcError>, elapsed: Duration) {
        let s = self.service(service);
        let i = result.as_ref().map_or_else(outcome_index, |_| 0);
        s.outcomes[i].fetch_add(1, Ordering::Relaxed);
        s.latency.record(elapsed);
    }

    pub(crate) fn snapshot(&self) -> RpcMetrics {
        let mut calls: Vec<ServiceCalls> = self
            .slots
            .iter()
            .filter_map(OnceLock::get)
            .map(|(name, s)| ServiceCalls::of(name, s))
            .collect();
        let other = ServiceCalls::of(OTHER_SERVICE, &self.other);
        if other.latency.count > 0 {
            calls.push(other);
        }
        calls.sort_by(|a, b| a.service.cmp(&b.service));
        RpcMetrics {
            calls,
            refused_per_peer: self.refused_per_peer.load(Ordering::Relaxed),
            refused_buffered: self.refused_buffered.load(Ordering::Relaxed),
        }
    }
}

/// Counts one refusal.
pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// The calls this node made to one service, at one moment.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ServiceCalls {
    /// The service name (or [`OTHER_SERVICE`]).
    pub service: String,
    /// Calls by outcome, in the order of [`OUTCOMES`].
    pub outcomes: Vec<(&'static str, u64)>,
    /// How long the calls took, from the call to its result.
    pub latency: HistogramSnapshot,
}

impl ServiceCalls {
    fn of(name: &str, s: &Service) -> Self {
        Self {
            service: name.to_owned(),
            outcomes: OUTCOMES
                .iter()
                .zip(&s.outcomes)
                .map(|(o, c)| (*o, c.load(Ordering::Relaxed)))
                .collect(),
            latency: s.latency.snapshot(),
        }
    }
}

/// What RPC measured, at one moment (`Rpc::metrics`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct RpcMetrics {
    /// The calls this node made, per service, sorted by service.
    pub calls: Vec<ServiceCalls>,
    /// Calls refused here: their caller had `max_inbound_per_peer` in
    /// progress.
    pub refused_per_peer: u64,
    /// Calls refused here: their body would pass `max_buffered` or
    /// `max_buffered_per_peer`.
    pub refused_buffered: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn services_past_the_cap_count_as_other() {
        let stats = Stats::default();
        for i in 0..MAX_SERVICES + 5 {
            stats.call::<()>(&format!("s{i}"), &Ok(()), Duration::from_micros(10));
        }
        let peer = "a@h".parse().expect("a node name");
        let failed: Result<(), _> = Err(RpcError::NotConnected { peer });
        stats.call("s0", &failed, Duration::from_micros(10));
        let m = stats.snapshot();
        assert_eq!(m.calls.len(), MAX_SERVICES + 1);
        let other = m.calls.iter().find(|c| c.service == OTHER_SERVICE);
        assert_eq!(other.map(|c| c.outcomes[0].1), Some(5));
        let s0 = m.calls.iter().find(|c| c.service == "s0");
        let s0 = s0.expect("s0 counted");
        assert_eq!(s0.outcomes[0], ("ok", 1));
        assert_eq!(s0.outcomes[3], ("not_connected", 1));
        assert_eq!(s0.latency.count, 2);
    }
}
