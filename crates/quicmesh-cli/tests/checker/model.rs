//! The recorded history and what is checked of it: linearizability of
//! every key against a sequential model (with the Wing–Gong–Lowe checker
//! of `todc-utils`), the fenced counter, grants on the minority side and
//! tokens across a whole-cluster restart.
//!
//! # The model of one key
//!
//! A lock, an election or a name is a slot held by at most one session:
//! `take` (lock, campaign, register), `give` (release, resign,
//! unregister), `read` (leader, whereis). Tokens (lock tokens, terms) of
//! successive grants of a key strictly increase. Sessions end without a
//! client operation (the leader expires them), so each one gets an
//! `expire` that never returns: invoked when the session was last seen
//! succeeding (it cannot have ended earlier), it may be linearized at any
//! later point or not at all. An operation whose outcome is unknown (timed out,
//! or its process died) is also left without a return: it may have taken
//! effect at any point after its invocation, or never. If its node
//! answered (no quorum), the node gives back what it may have been
//! granted before its next take at the key: a `give` with an unknown
//! outcome that returns by then. If it did not answer, its session is
//! unknown, so it gets an `expire` of "a session of that node" (as does a
//! grant whose reply named no session: it changed while the command ran).

#![allow(unreachable_pub)] // A module of one test target.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use todc_utils::{Action, History, Specification, WGLChecker};

/// Microseconds since the run began.
pub type Micros = u64;

/// What an operation did to its key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Kind {
    Take,
    Give,
    Read,
}

/// What came back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Taken (with the token or term; none for names).
    Granted(Option<u128>),
    /// Another node holds it.
    Held(u8),
    /// Given up.
    Released,
    /// Read: the holder and its token, if any.
    Value(Option<(u8, Option<u128>)>),
    /// Definitely had no effect (not held, session already gone).
    NoEffect,
    /// No answer, or one that leaves the effect open (no quorum).
    Unknown,
}

/// One operation of the history.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Op {
    /// The host (1-based) of the node it ran on.
    pub host: u8,
    pub key: String,
    pub kind: Kind,
    pub invoked: Micros,
    pub completed: Micros,
    pub outcome: Outcome,
    /// The node's session as its reply named it.
    pub session: Option<u64>,
    /// Which process of the host ran it (incremented at each restart).
    pub incarnation: u32,
}

/// A fault, as it was injected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Fault {
    pub what: String,
    pub from: Micros,
    pub to: Micros,
    /// Hosts that were on a side without a majority for the whole fault.
    pub minority: Vec<u8>,
}

/// Everything a run recorded: enough to check it again.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Run {
    pub mode: String,
    pub seed: u64,
    pub hosts: u8,
    pub ops: Vec<Op>,
    pub faults: Vec<Fault>,
    /// When the whole cluster was restarted.
    pub restarts: Vec<Micros>,
    /// Each lock's fenced counter, by the lock's key.
    pub fenced: BTreeMap<String, Fenced>,
}

/// The service the lock guards: a counter that refuses a token smaller
/// than the largest it has seen, and notes two holders' steps interleaved.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Fenced {
    pub value: u64,
    pub max_token: u128,
    /// The latest grant (by token) between its read and its write.
    open: Option<u128>,
    /// Steps refused for a stale token: a holder fenced off.
    pub refused: u64,
    /// Accepted writes.
    pub writes: u64,
    /// Accepted steps that interleave two holders.
    pub overlaps: Vec<String>,
    /// Writes whose value was not one more than the value before.
    pub lost_updates: Vec<String>,
}

impl Fenced {
    /// Step 1 of the holder with `token`: the value, or `None` if refused.
    /// A larger token than the open one's supersedes it (that holder's
    /// write will be refused); the same token read twice is two holders
    /// sharing a grant.
    pub fn read(&mut self, token: u128) -> Option<u64> {
        if token < self.max_token {
            self.refused += 1;
            return None;
        }
        if self.open == Some(token) {
            self.overlaps
                .push(format!("token {token} read twice: two holders"));
        }
        self.max_token = token;
        self.open = Some(token);
        Some(self.value)
    }

    /// Step 2: writes `value`; `false` if refused.
    pub fn write(&mut self, token: u128, value: u64) -> bool {
        if token < self.max_token {
            self.refused += 1;
            return false;
        }
        if self.open != Some(token) {
            self.overlaps.push(format!(
                "write by token {token} while {:?} was open",
                self.open
            ));
        }
        if value != self.value + 1 {
            self.lost_updates
                .push(format!("token {token} wrote {value} over {}", self.value));
        }
        self.max_token = token;
        self.value = value;
        self.open = None;
        self.writes += 1;
        true
    }
}

/// An entry of a key's history as the checker sees it.
#[derive(Debug, Clone)]
pub enum Step {
    Op {
        node: u8,
        session: Option<u64>,
        kind: Kind,
        outcome: Outcome,
    },
    /// A session of `node` ended (`None`: one whose id is unknown).
    Expire { node: u8, session: Option<u64> },
}

/// Who holds a slot: node, session (unknown for an operation whose
/// outcome was unknown), token (unknown likewise, or a name's none).
type Holder = (u8, Option<u64>, Option<u128>);

/// One key's state in the model.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct Slot {
    holder: Option<Holder>,
    /// The largest token granted so far.
    last: u128,
    /// Sessions known to have ended.
    ended: BTreeSet<u64>,
}

/// The sequential specification of a slot.
pub struct SlotSpec;

fn same_session(held: Option<u64>, asked: Option<u64>) -> bool {
    held.is_none() || asked.is_none() || held == asked
}

fn same_token(held: Option<u128>, asked: Option<u128>) -> bool {
    held.is_none() || asked.is_none() || held == asked
}

impl Specification for SlotSpec {
    type State = Slot;
    type Operation = Step;

    fn init() -> Slot {
        Slot::default()
    }

    fn apply(step: &Step, s: &Slot) -> (bool, Slot) {
        let mut next = s.clone();
        let ok = match step {
            Step::Expire { node, session } => {
                match session {
                    Some(id) => {
                        next.ended.insert(*id);
                        if matches!(s.holder, Some((_, Some(h), _)) if h == *id) {
                            next.holder = None;
                        }
                    }
                    None => {
                        if matches!(s.holder, Some((n, None, _)) if n == *node) {
                            next.holder = None;
                        }
                    }
                }
                true
            }
            Step::Op {
                node,
                session,
                kind,
                outcome,
            } => {
                let alive = session.is_none_or(|id| !s.ended.contains(&id));
                match (kind, outcome) {
                    (_, Outcome::NoEffect) => true,
                    (Kind::Take, Outcome::Granted(token)) => {
                        let fresh = s.holder.is_none() && token.is_none_or(|t| t > s.last);
                        let again = matches!(s.holder, Some((n, h, t))
                            if n == *node && same_session(h, *session) && same_token(t, *token));
                        next.holder = Some((*node, *session, *token));
                        if let Some(t) = token {
                            next.last = s.last.max(*t);
                        }
                        alive && (fresh || again)
                    }
                    (Kind::Take, Outcome::Held(owner)) => {
                        matches!(s.holder, Some((n, _, _)) if n == *owner)
                    }
                    (Kind::Take, Outcome::Unknown) => {
                        if s.holder.is_none() && alive {
                            next.holder = Some((*node, *session, None));
                        }
                        true
                    }
                    (Kind::Give, Outcome::Released) => {
                        let mine = matches!(s.holder, Some((n, h, _))
                            if n == *node && same_session(h, *session));
                        next.holder = None;
                        mine
                    }
                    (Kind::Give, Outcome::Unknown) => {
                        if matches!(s.holder, Some((n, _, _)) if n == *node) {
                            next.holder = None;
                        }
                        true
                    }
                    (Kind::Read, Outcome::Value(seen)) => match (s.holder, seen) {
                        (None, None) => true,
                        (Some((n, h, t)), Some((m, u))) if n == *m && same_token(t, *u) => {
                            if t.is_none()
                                && let Some(u) = u
                            {
                                // The unknown grant's token, now seen.
                                next.holder = Some((n, h, Some(*u)));
                                next.last = s.last.max(*u);
                                return (*u > s.last, next);
                            }
                            true
                        }
                        _ => false,
                    },
                    (Kind::Read, _) => true,
                    _ => false,
                }
            }
        };
        if ok { (true, next) } else { (false, s.clone()) }
    }
}

/// The history of one key as the checker takes it: an `expire` for each
/// session and each unknown outcome, the unknown and the `expire`s
/// returning after everything else.
pub fn key_history(run: &Run, key: &str) -> Vec<(usize, Action<Step>)> {
    let ops: Vec<&Op> = run.ops.iter().filter(|o| o.key == key).collect();
    // Every event as (time, order, process, action): calls at their
    // invocation, returns at their completion or at the end.
    let mut events: Vec<(Micros, u8, usize, Action<Step>)> = Vec::new();
    let end = Micros::MAX;
    let mut process = 0;
    let mut first_seen: BTreeMap<u64, (Micros, u8)> = BTreeMap::new();
    // Only sessions that took this key can hold it.
    for op in ops.iter().filter(|o| o.kind == Kind::Take) {
        if let Some(id) = op.session {
            let seen = first_seen.entry(id).or_insert((op.invoked, op.host));
            seen.0 = seen.0.min(op.invoked);
        }
    }
    for op in &ops {
        // A read without an answer says nothing.
        if op.kind == Kind::Read && !matches!(op.outcome, Outcome::Value(_)) {
            continue;
        }
        let step = Step::Op {
            node: op.host,
            session: op.session,
            kind: op.kind,
            outcome: op.outcome.clone(),
        };
        let returned = if op.outcome == Outcome::Unknown {
            end
        } else {
            op.completed
        };
        events.push((op.invoked, 1, process, Action::Call(step.clone())));
        events.push((returned, 0, process, Action::Response(step)));
        process += 1;
        // A take its node answered with an unknown outcome is followed by
        // the node giving back whatever grant it made, holding the node's
        // turn at the key: done before the node's next take that got the
        // turn (granted, or held by another) completes.
        if op.outcome == Outcome::Unknown && op.kind == Kind::Take && op.session.is_some() {
            let step = Step::Op {
                node: op.host,
                session: op.session,
                kind: Kind::Give,
                outcome: Outcome::Unknown,
            };
            let done = ops
                .iter()
                .filter(|o| o.host == op.host && o.kind == Kind::Take)
                .filter(|o| o.completed > op.completed)
                .filter(|o| match o.outcome {
                    Outcome::Granted(_) => true,
                    Outcome::Held(owner) => owner != op.host,
                    _ => false,
                })
                .map(|o| o.completed)
                .min()
                .unwrap_or(end);
            events.push((op.invoked, 1, process, Action::Call(step.clone())));
            events.push((done, 0, process, Action::Response(step)));
            process += 1;
        }
        // A grant (made, or maybe made) in a session never named must end
        // too.
        let granted = matches!(op.outcome, Outcome::Unknown | Outcome::Granted(_));
        if granted && op.kind == Kind::Take && op.session.is_none() {
            let step = Step::Expire {
                node: op.host,
                session: None,
            };
            events.push((op.invoked, 1, process, Action::Call(step.clone())));
            events.push((end, 0, process, Action::Response(step)));
            process += 1;
        }
    }
    // A session that succeeded (was granted, or gave a grant up) was
    // alive then: its end comes after that operation's invocation. The
    // latest such lower bound keeps the search from trying the end early.
    for op in &run.ops {
        let alive = matches!(op.outcome, Outcome::Granted(_) | Outcome::Released);
        if let (true, Some(id)) = (alive, op.session)
            && let Some(seen) = first_seen.get_mut(&id)
        {
            seen.0 = seen.0.max(op.invoked);
        }
    }
    for (id, (at, node)) in first_seen {
        let step = Step::Expire {
            node,
            session: Some(id),
        };
        events.push((at, 1, process, Action::Call(step.clone())));
        events.push((end, 0, process, Action::Response(step)));
        process += 1;
    }
    // Returns before calls at the same instant: a call that starts as
    // another returns did not overlap it.
    events.sort_by_key(|(at, order, _, _)| (*at, *order));
    events
        .into_iter()
        .map(|(_, _, process, action)| (process, action))
        .collect()
}

/// What the checks found; empty lists when all holds.
#[derive(Debug, Default)]
pub struct Findings {
    pub not_linearizable: Vec<String>,
    pub undecided: Vec<String>,
    pub overlaps: Vec<String>,
    pub lost_updates: Vec<String>,
    pub minority_grants: Vec<String>,
    pub tokens_out_of_order: Vec<String>,
    pub tokens_across_restart: Vec<String>,
    pub lost_registrations: Vec<String>,
}

impl Findings {
    /// Each property with how often it was broken, and its first cases.
    pub fn summary(&self) -> String {
        let properties = [
            ("not linearizable", &self.not_linearizable),
            ("undecided", &self.undecided),
            ("overlapping lock holders", &self.overlaps),
            ("lost counter updates", &self.lost_updates),
            ("grants on the minority side", &self.minority_grants),
            ("tokens out of order", &self.tokens_out_of_order),
            (
                "tokens out of order across a restart",
                &self.tokens_across_restart,
            ),
            ("acknowledged registrations lost", &self.lost_registrations),
        ];
        let mut out = String::new();
        for (name, found) in properties {
            out.push_str(&format!("{name}: {}\n", found.len()));
            for case in found.iter().take(3) {
                out.push_str(&format!("  {case}\n"));
            }
        }
        out
    }

    pub fn is_clean(&self) -> bool {
        self.not_linearizable.is_empty()
            && self.undecided.is_empty()
            && self.overlaps.is_empty()
            && self.lost_updates.is_empty()
            && self.minority_grants.is_empty()
            && self.tokens_out_of_order.is_empty()
            && self.tokens_across_restart.is_empty()
            && self.lost_registrations.is_empty()
    }
}

/// Every check of a run; a key whose linearizability is not decided
/// within `budget` (the searches run at once; each is exponential at
/// worst, and a history that is not linearizable is the worst) is named
/// undecided.
pub fn check(run: &Run, budget: std::time::Duration) -> Findings {
    let keys: BTreeSet<&str> = run.ops.iter().map(|o| o.key.as_str()).collect();
    let mut findings = Findings::default();
    for (key, fenced) in &run.fenced {
        let named = |found: &Vec<String>| {
            found
                .iter()
                .map(|f| format!("{key}: {f}"))
                .collect::<Vec<_>>()
        };
        findings.overlaps.extend(named(&fenced.overlaps));
        findings.lost_updates.extend(named(&fenced.lost_updates));
    }
    findings.minority_grants = minority_grants(run);
    (findings.tokens_out_of_order, findings.tokens_across_restart) = tokens_in_order(run);
    findings.lost_registrations = lost_registrations(run);
    // One search per key, all at once, each left to finish on its own if
    // the time runs out.
    let searches: Vec<_> = keys
        .into_iter()
        .map(|key| {
            let (tx, rx) = std::sync::mpsc::channel();
            let (run, owned) = (run.clone(), key.to_owned());
            std::thread::spawn(move || {
                let ok = linearizable(&run, &owned);
                let _ = tx.send((!ok).then(|| explain(&run, &owned)));
            });
            (key, rx)
        })
        .collect();
    let deadline = std::time::Instant::now() + budget;
    for (key, rx) in searches {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        match rx.recv_timeout(left) {
            Ok(None) => {}
            Ok(Some(why)) => findings.not_linearizable.push(why),
            Err(_) => findings
                .undecided
                .push(format!("{key}: not shown linearizable within {budget:?}")),
        }
    }
    findings
}

fn linearizable(run: &Run, key: &str) -> bool {
    let history = key_history(run, key);
    history.is_empty() || WGLChecker::<SlotSpec>::is_linearizable(History::from_actions(history))
}

/// `key`'s operations by invocation, and the history as it stood when
/// the n-th was invoked: those still running then had no outcome yet.
fn prefix(run: &Run, key: &str, n: usize) -> Run {
    let mut ops: Vec<Op> = run.ops.iter().filter(|o| o.key == key).cloned().collect();
    ops.sort_by_key(|o| o.invoked);
    let cut = ops.get(n).map_or(Micros::MAX, |o| o.invoked);
    ops.truncate(n);
    for op in ops.iter_mut().filter(|o| o.completed >= cut) {
        op.outcome = Outcome::Unknown;
    }
    Run {
        ops,
        ..Run::default()
    }
}

/// The length of the shortest prefix of `key`'s history that is not
/// linearizable (bisected: a prefix of a linearizable one is).
fn shortest_failing(run: &Run, key: &str) -> usize {
    let all = run.ops.iter().filter(|o| o.key == key).count();
    let (mut good, mut bad) = (0, all);
    while bad - good > 1 {
        let mid = (good + bad) / 2;
        if linearizable(&prefix(run, key, mid), key) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    bad
}

/// Names the shortest prefix of `key`'s operations that is not
/// linearizable, with its last operations.
fn explain(run: &Run, key: &str) -> String {
    let n = shortest_failing(run, key);
    let ops = prefix(run, key, n).ops;
    let tail: Vec<String> = ops[n.saturating_sub(12)..]
        .iter()
        .map(|o| {
            format!(
                "h{} s{:?} {:?} [{}..{}] {:?}",
                o.host, o.session, o.kind, o.invoked, o.completed, o.outcome
            )
        })
        .collect();
    let all = run.ops.iter().filter(|o| o.key == key).count();
    format!(
        "{key}: {all} operations; the first {n} are not linearizable, ending with:\n  {}",
        tail.join("\n  ")
    )
}

/// The operations of the shortest failing prefix of `key` without any
/// one of which it is linearizable: where to look first.
pub fn culprits(run: &Run, key: &str) -> Vec<Op> {
    if linearizable(run, key) {
        return Vec::new();
    }
    let n = shortest_failing(run, key);
    let ops = prefix(run, key, n).ops;
    (0..ops.len())
        .filter(|&i| {
            let mut without = ops.clone();
            without.remove(i);
            let r = Run {
                ops: without,
                ..Run::default()
            };
            linearizable(&r, key)
        })
        .map(|i| ops[i].clone())
        .collect()
}

/// Successes of operations that ran wholly inside a fault on a host of
/// the side without a majority.
fn minority_grants(run: &Run) -> Vec<String> {
    let mut found = Vec::new();
    for fault in &run.faults {
        for op in &run.ops {
            let inside = op.invoked >= fault.from && op.completed <= fault.to;
            let succeeded = matches!(
                op.outcome,
                Outcome::Granted(_) | Outcome::Released | Outcome::Value(_)
            );
            if inside && succeeded && fault.minority.contains(&op.host) {
                found.push(format!(
                    "{:?} {} on h{} during {} answered {:?}",
                    op.kind, op.key, op.host, fault.what, op.outcome
                ));
            }
        }
    }
    found
}

/// A grant invoked after another grant (of any key) completed must have
/// a larger token: tokens are log indices, increasing forever. Found
/// pairs, those without and those with a whole-cluster restart between
/// them.
fn tokens_in_order(run: &Run) -> (Vec<String>, Vec<String>) {
    let grants = |by: fn(&Op) -> Micros| {
        let mut g: Vec<(&Op, u128)> = run
            .ops
            .iter()
            .filter_map(|o| match o.outcome {
                Outcome::Granted(Some(t)) => Some((o, t)),
                _ => None,
            })
            .collect();
        g.sort_by_key(|(o, _)| by(o));
        g
    };
    let by_completion = grants(|o| o.completed);
    let (mut found, mut across) = (Vec::new(), Vec::new());
    // The largest token of the grants completed so far, and its grant.
    let mut done = by_completion.iter().peekable();
    let mut largest: Option<(&Op, u128)> = None;
    for (op, token) in grants(|o| o.invoked) {
        while let Some((earlier, t)) = done.next_if(|(e, _)| e.completed < op.invoked) {
            if largest.is_none_or(|(_, l)| *t > l) {
                largest = Some((earlier, *t));
            }
        }
        let Some((earlier, before)) = largest.filter(|(_, l)| token <= *l) else {
            continue;
        };
        let what = format!(
            "{} on h{} got token {token} after {} on h{} got {before}",
            op.key, op.host, earlier.key, earlier.host
        );
        let restarted = run
            .restarts
            .iter()
            .any(|r| earlier.completed < *r && *r < op.invoked);
        if restarted { &mut across } else { &mut found }.push(what);
    }
    (found, across)
}

/// Names whose last acknowledged write was a registration by a session
/// that was still its node's at the end, but that the final reads of the
/// run did not find there.
fn lost_registrations(run: &Run) -> Vec<String> {
    let Some(last_fault) = run.faults.iter().map(|f| f.to).max() else {
        return Vec::new();
    };
    let mut final_session: BTreeMap<u8, Option<u64>> = BTreeMap::new();
    for op in &run.ops {
        final_session.insert(op.host, op.session);
    }
    let names: BTreeSet<&str> = run
        .ops
        .iter()
        .filter(|o| o.key.starts_with("name"))
        .map(|o| o.key.as_str())
        .collect();
    let mut found = Vec::new();
    for name in names {
        let ops: Vec<&Op> = run.ops.iter().filter(|o| o.key == name).collect();
        let Some(write) = ops
            .iter()
            .rev()
            .find(|o| o.kind != Kind::Read && o.outcome != Outcome::NoEffect)
        else {
            continue;
        };
        let registered = write.outcome == Outcome::Granted(None)
            && write.session.is_some()
            && final_session.get(&write.host) == Some(&write.session);
        if !registered {
            continue;
        }
        let final_reads = ops.iter().filter(|o| {
            o.kind == Kind::Read && o.invoked > write.completed && o.invoked > last_fault
        });
        for read in final_reads {
            if let Outcome::Value(seen) = &read.outcome
                && seen.map(|(n, _)| n) != Some(write.host)
            {
                found.push(format!(
                    "{name}: registered by h{} (session {:?}), read on h{} as {seen:?}",
                    write.host, write.session, read.host
                ));
            }
        }
    }
    found
}
