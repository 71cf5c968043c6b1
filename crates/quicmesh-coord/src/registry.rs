//! The global name registry (`:global` register_name, whereis_name,
//! unregister_name, registered_names).
//!
//! Every node keeps the whole table: name → owner node, service, and the
//! hybrid-logical-clock time of the registration. Registering takes the
//! cluster lock of the name on every connected node, checks the name is
//! free everywhere, then writes it everywhere, so of concurrent attempts
//! exactly one succeeds. A node that goes down takes its names with it on
//! every node.
//!
//! When two nodes meet (at start, or when a partition heals), each sends
//! the other the names it owns. A node speaks only for itself, so a name
//! held by a live node changes owner only when that owner gives it up:
//! another node's claim to it waits beside it. The two owners of a name
//! each decide the conflict by the same rules, in order:
//!
//! 1. a registration made after its node dropped an earlier one of the
//!    name (its owner went down) wins against that one and every earlier
//!    one ([`Registration::supersedes`]): a node declared down does not
//!    win its names back by an older clock;
//! 2. a claim earlier than a registration its claimant acknowledged (it
//!    stored it when it was registered) is refused: nobody can acknowledge
//!    a name and then claim to have had it first;
//! 3. otherwise the resolver ([`Registry::set_resolver`]; default: the
//!    earliest registration, ties by owner name).
//!
//! The loser gives the name up everywhere (`quicmesh.registry.yield`), the
//! nodes waiting with the winner's claim take it, and both owners see
//! [`RegistryEvent::Conflict`]. Clock readings from peers more than
//! [`crate::MAX_CLOCK_DRIFT`] ahead of this node's clock are refused, and
//! so is a live registration whose clock is that far behind.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::clock::MAX_DRIFT;
use crate::counters::count;

use quicmesh_rpc::{CallContext, RpcError};
use quicmesh_wire::NodeName;
use quicmesh_wire::coord::{Hlc, PutAnswer, Registration, service};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::lock::{LockError, LockOptions};
use crate::{Coord, locked};

/// Longest registered name, in bytes; and longest service a name stands
/// for (as long as an RPC service name may be).
const MAX_NAME: usize = 255;
/// At most this many names per owner: what a peer's sync carries past it
/// is not taken, a registration past it is refused.
const MAX_PER_OWNER: usize = 65_536;

/// At most this many dropped registrations remembered (the evidence of
/// rule 1 in the module docs), and as many given up in conflicts: past
/// it, the oldest are forgotten first.
const MAX_DROPPED: usize = 65_536;
/// At most this many peers' acknowledgements remembered per name (rule 2).
const MAX_ACKED: usize = 64;

/// Which of two conflicting registrations of one name to keep.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    /// The first one given.
    First,
    /// The second one given.
    Second,
}

/// Decides a conflict; must give the same answer on every node (it is run
/// on every node that sees the conflict).
type Resolver = Arc<dyn Fn(&Registration, &Registration) -> Keep + Send + Sync>;

/// The default rule: the earliest registration (by its clock), ties by the
/// owner's name.
fn earliest(a: &Registration, b: &Registration) -> Keep {
    if (a.registered_at, &a.owner) <= (b.registered_at, &b.owner) {
        Keep::First
    } else {
        Keep::Second
    }
}

/// Something that happened in the registry, as one node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum RegistryEvent {
    /// A name was registered (or learnt from a node that came up).
    Registered(Registration),
    /// A name went: unregistered, or its owner went down.
    Unregistered {
        /// The registration that went.
        registration: Registration,
        /// `true` if its owner went down (or shut down).
        owner_down: bool,
    },
    /// Two nodes had registered the same name (on two sides of a
    /// partition); `kept` stays, `dropped` is gone. If `dropped.owner` is
    /// this node, the name is no longer this node's.
    Conflict {
        /// The registration kept everywhere.
        kept: Registration,
        /// The registration dropped everywhere.
        dropped: Registration,
    },
}

/// Why a name was not registered, or a call to it failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RegistryError {
    /// Another node (or this one) has it.
    #[error("{name:?} is already registered by {owner}")]
    AlreadyRegistered {
        /// The name.
        name: String,
        /// Its owner.
        owner: NodeName,
    },
    /// Nobody has registered it.
    #[error("no node has registered {0:?}")]
    NotRegistered(String),
    /// The name is empty or longer than 255 bytes, or the service is
    /// longer than 255 bytes (or, in consensus mode, empty).
    #[error("bad name {0:?}: 1 to 255 bytes")]
    BadName(String),
    /// This node has as many names as a node may have: unregister some.
    #[error("this node has {limit} registered names, the most a node may have")]
    TooMany {
        /// Names per node.
        limit: usize,
    },
    /// A node refused the registration because this node's clock is too
    /// far from its own: synchronise the clocks (NTP).
    #[error(
        "{peer} refused the registration: its clock and this node's differ by more than the allowed drift; synchronise the clocks"
    )]
    ClockDrift {
        /// The node whose clock disagrees.
        peer: NodeName,
    },
    /// The name's cluster lock was not taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The call to the name's service failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
    /// No longer returned: consensus mode once kept a name's owner but
    /// not its service and refused a service other than the name. It keeps
    /// both now; the variant stays so that code naming it still builds.
    #[error(
        "consensus mode: {name:?} can stand only for the service of the same name, not {service:?}"
    )]
    ServiceNotName {
        /// The name.
        name: String,
        /// The service asked for.
        service: String,
    },
}

/// The registered names, the claims waiting beside them (with how many of
/// both each owner has), and the registrations dropped with their owners.
#[derive(Debug, Default)]
struct Names {
    by_name: HashMap<String, Registration>,
    /// Claims to names another live node holds, waiting for it to give the
    /// name up or go down.
    waiting: HashMap<String, Vec<Registration>>,
    per_owner: HashMap<NodeName, usize>,
    /// Per name: the latest registration of it dropped because its owner
    /// went down.
    dropped: Recent<Hlc>,
    /// Registrations given up in a conflict before the winner's claim
    /// came here: when it comes, it is the conflict's event.
    yielded: Recent<Registration>,
    /// Per name: the owner and clock of the last registration its owner
    /// gave up in a conflict here, so a claim of it still on its way (the
    /// sync and the yield travel apart) is not taken after the yield.
    given_up: Recent<(NodeName, Hlc)>,
}

/// Entries by name, at most [`MAX_DROPPED`]: a new one past that makes
/// the oldest go, so a peer that fills it once cannot keep later ones out.
#[derive(Debug)]
struct Recent<V> {
    by_name: HashMap<String, V>,
    /// Names in the order first inserted (some may have been removed).
    order: std::collections::VecDeque<String>,
}

impl<V> Default for Recent<V> {
    fn default() -> Self {
        Self {
            by_name: HashMap::new(),
            order: std::collections::VecDeque::new(),
        }
    }
}

impl<V> Recent<V> {
    fn get(&self, name: &str) -> Option<&V> {
        self.by_name.get(name)
    }

    fn get_mut(&mut self, name: &str) -> Option<&mut V> {
        self.by_name.get_mut(name)
    }

    fn remove(&mut self, name: &str) -> Option<V> {
        self.by_name.remove(name)
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_name.len()
    }

    fn insert(&mut self, name: &str, value: V) {
        if let Some(v) = self.by_name.get_mut(name) {
            *v = value;
            return;
        }
        while self.by_name.len() >= MAX_DROPPED {
            match self.order.pop_front() {
                Some(oldest) => {
                    self.by_name.remove(&oldest);
                }
                None => break,
            }
        }
        if self.order.len() >= 2 * MAX_DROPPED {
            // Names removed since: keep the order of those still here.
            let by_name = &self.by_name;
            self.order.retain(|n| by_name.contains_key(n));
        }
        self.order.push_back(name.to_owned());
        self.by_name.insert(name.to_owned(), value);
    }
}

impl Names {
    fn get(&self, name: &str) -> Option<&Registration> {
        self.by_name.get(name)
    }

    fn values(&self) -> impl Iterator<Item = &Registration> {
        self.by_name.values()
    }

    fn keys(&self) -> impl Iterator<Item = &String> {
        self.by_name.keys()
    }

    /// How many names and claims `owner` has here.
    fn owned_by(&self, owner: &NodeName) -> usize {
        self.per_owner.get(owner).copied().unwrap_or(0)
    }

    fn full(&self, owner: &NodeName) -> bool {
        self.owned_by(owner) >= MAX_PER_OWNER
    }

    fn count(&mut self, owner: &NodeName) {
        *self.per_owner.entry(owner.clone()).or_insert(0) += 1;
    }

    fn uncount(&mut self, owner: &NodeName) {
        if let Some(n) = self.per_owner.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_owner.remove(owner);
            }
        }
    }

    fn insert(&mut self, registration: Registration) {
        self.count(&registration.owner);
        let name = registration.name.clone();
        if let Some(old) = self.by_name.insert(name, registration) {
            self.uncount(&old.owner);
        }
    }

    fn remove(&mut self, name: &str) -> Option<Registration> {
        let old = self.by_name.remove(name)?;
        self.uncount(&old.owner);
        Some(old)
    }

    /// Keeps `claim` waiting beside the name's holder (replacing the
    /// claimant's earlier claim to it).
    fn wait(&mut self, claim: Registration) {
        let list = self.waiting.entry(claim.name.clone()).or_default();
        if let Some(old) = list.iter_mut().find(|c| c.owner == claim.owner) {
            *old = claim;
        } else {
            let owner = claim.owner.clone();
            list.push(claim);
            self.count(&owner);
        }
    }

    /// Drops `owner`'s waiting claim to `name`; `true` if it had one.
    fn unwait(&mut self, name: &str, owner: &NodeName) -> bool {
        let Some(list) = self.waiting.get_mut(name) else {
            return false;
        };
        let before = list.len();
        list.retain(|c| c.owner != *owner);
        let gone = before != list.len();
        if list.is_empty() {
            self.waiting.remove(name);
        }
        if gone {
            self.uncount(owner);
        }
        gone
    }

    /// Takes every claim waiting for `name`.
    fn take_waiting(&mut self, name: &str) -> Vec<Registration> {
        let claims = self.waiting.remove(name).unwrap_or_default();
        for c in &claims {
            self.uncount(&c.owner);
        }
        claims
    }

    /// Remembers that a registration of `name` from `at` was dropped with
    /// its owner.
    fn dropped_with_owner(&mut self, name: &str, at: Hlc) {
        match self.dropped.get_mut(name) {
            Some(t) => *t = (*t).max(at),
            None => self.dropped.insert(name, at),
        }
    }
}

/// What the owner of a name does with another node's claim to it.
#[derive(Debug, PartialEq, Eq)]
enum Decision {
    /// Keeps the name: the claim lost.
    Keep,
    /// Gives the name up to the claim.
    Yield,
    /// Refuses the claim: its claimant acknowledged this registration, and
    /// claims to have had the name earlier (rule 2 of the module docs).
    Refuse,
}

/// A peer's name as the acknowledgements keep it.
fn peer_hash(peer: &NodeName) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    peer.hash(&mut h);
    h.finish()
}

/// Rule 1 of the module docs: which of two registrations (if either) was
/// made after the other was dropped with its owner.
fn supersedes(a: &Registration, b: &Registration) -> Option<Keep> {
    if a.supersedes.is_some_and(|s| s >= b.registered_at) {
        Some(Keep::First)
    } else if b.supersedes.is_some_and(|s| s >= a.registered_at) {
        Some(Keep::Second)
    } else {
        None
    }
}

/// Which of two registrations of one name stays, by rules 1 and 3 (the
/// same answer on every node, whatever order they come in).
fn winner(a: Registration, b: Registration, resolver: &Resolver) -> (Registration, Registration) {
    // Give the rules the two in one order on every node.
    let (a, b) = if (&a.owner, a.registered_at) <= (&b.owner, b.registered_at) {
        (a, b)
    } else {
        (b, a)
    };
    let keep = supersedes(&a, &b).unwrap_or_else(|| resolver(&a, &b));
    match keep {
        Keep::First => (a, b),
        Keep::Second => (b, a),
    }
}

/// The owner of `mine` meets `claim`; `acked`: its claimant stored `mine`
/// when it was registered.
fn decide(mine: &Registration, claim: &Registration, acked: bool, resolver: &Resolver) -> Decision {
    if acked && supersedes(mine, claim).is_none() && claim.registered_at < mine.registered_at {
        return Decision::Refuse;
    }
    let (kept, _) = winner(mine.clone(), claim.clone(), resolver);
    if kept == *mine {
        Decision::Keep
    } else {
        Decision::Yield
    }
}

pub(crate) struct State {
    names: Mutex<Names>,
    /// Per name of this node's: the registration's clock, and the peers
    /// (hashed, at most [`MAX_ACKED`]) that stored it when it was made.
    acked: Mutex<HashMap<String, (Hlc, Vec<u64>)>>,
    resolver: Mutex<Resolver>,
    events: broadcast::Sender<RegistryEvent>,
}

/// What taking in a claim came to.
enum Taken {
    /// Stored, or waiting: nothing more to do.
    Done,
    /// Refused as forged (rule 2).
    Refused,
    /// The claimant's share is full.
    Full,
    /// This node gave its registration up to the claim: tell every node.
    Yielded(Registration),
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            names: Mutex::new(Names::default()),
            acked: Mutex::new(HashMap::new()),
            resolver: Mutex::new(Arc::new(earliest)),
            events: broadcast::channel(1024).0,
        }
    }

    /// Names registered now, as this node knows them.
    pub(crate) fn len(&self) -> usize {
        locked(&self.names).by_name.len()
    }

    fn emit(&self, event: RegistryEvent) {
        let _ = self.events.send(event);
    }

    fn emit_all(&self, events: Vec<RegistryEvent>) {
        for e in events {
            self.emit(e);
        }
    }

    /// Records that `peers` stored this node's registration `r` when it was
    /// made (one entry per name of this node's, so bounded by its share).
    fn acknowledged<'a>(&self, r: &Registration, peers: impl Iterator<Item = &'a NodeName>) {
        let hashes: Vec<u64> = peers.take(MAX_ACKED).map(peer_hash).collect();
        locked(&self.acked).insert(r.name.clone(), (r.registered_at, hashes));
    }

    /// Whether `peer` stored this node's registration `mine` when it was
    /// made.
    fn acknowledged_by(&self, mine: &Registration, peer: &NodeName) -> bool {
        locked(&self.acked)
            .get(&mine.name)
            .is_some_and(|(at, peers)| {
                *at == mine.registered_at && peers.contains(&peer_hash(peer))
            })
    }

    /// Stores this node's own new registration; `false` if its share is
    /// full.
    fn store_own(&self, registration: Registration) -> bool {
        let mut names = locked(&self.names);
        if names.get(&registration.name).is_none() && names.full(&registration.owner) {
            return false;
        }
        names.dropped.remove(&registration.name);
        names.insert(registration.clone());
        drop(names);
        self.emit(RegistryEvent::Registered(registration));
        true
    }

    /// Takes in `claim`, which its owner sent when the two nodes met (see
    /// the module docs).
    fn claim(&self, me: &NodeName, claim: Registration) -> Taken {
        let resolver = locked(&self.resolver).clone();
        let mut names = locked(&self.names);
        if names.given_up.get(&claim.name) == Some(&(claim.owner.clone(), claim.registered_at)) {
            return Taken::Done;
        }
        let (taken, event) = match names.get(&claim.name) {
            None if names.full(&claim.owner) => (Taken::Full, None),
            None => {
                names.insert(claim.clone());
                let event = match names.yielded.remove(&claim.name) {
                    Some(dropped) => RegistryEvent::Conflict {
                        kept: claim,
                        dropped,
                    },
                    None => RegistryEvent::Registered(claim),
                };
                (Taken::Done, Some(event))
            }
            Some(stored) if stored.owner == claim.owner => {
                if *stored == claim {
                    return Taken::Done;
                }
                names.insert(claim.clone());
                (Taken::Done, Some(RegistryEvent::Registered(claim)))
            }
            Some(mine) if mine.owner == *me => {
                let mine = mine.clone();
                let acked = self.acknowledged_by(&mine, &claim.owner);
                match decide(&mine, &claim, acked, &resolver) {
                    Decision::Refuse => {
                        warn!(name = %claim.name, claimant = %claim.owner, "refused a claim to a name this node holds: the claimant acknowledged this node's registration and claims an earlier one");
                        (Taken::Refused, None)
                    }
                    Decision::Keep => {
                        if names.full(&claim.owner) {
                            (Taken::Full, None)
                        } else {
                            info!(name = %claim.name, dropped = %claim.owner, "kept a registered name in a conflict");
                            names.wait(claim.clone());
                            let event = RegistryEvent::Conflict {
                                kept: mine,
                                dropped: claim,
                            };
                            (Taken::Done, Some(event))
                        }
                    }
                    Decision::Yield => {
                        warn!(name = %claim.name, winner = %claim.owner, "lost a registered name in a conflict");
                        locked(&self.acked).remove(&claim.name);
                        names.insert(claim.clone());
                        let event = RegistryEvent::Conflict {
                            kept: claim,
                            dropped: mine.clone(),
                        };
                        (Taken::Yielded(mine), Some(event))
                    }
                }
            }
            Some(_) if names.full(&claim.owner) => (Taken::Full, None),
            Some(_) => {
                names.wait(claim);
                (Taken::Done, None)
            }
        };
        drop(names);
        if let Some(event) = event {
            self.emit(event);
        }
        taken
    }

    /// The holder of `name` left it (`why`): the best claim waiting takes
    /// it. Called with the names locked; the events to send.
    fn hand_on(
        &self,
        names: &mut Names,
        left: Registration,
        owner_down: bool,
    ) -> Vec<RegistryEvent> {
        let mut claims = names.take_waiting(&left.name).into_iter();
        let Some(first) = claims.next() else {
            return vec![RegistryEvent::Unregistered {
                registration: left,
                owner_down,
            }];
        };
        let resolver = locked(&self.resolver).clone();
        let mut best = first;
        let mut rest = Vec::new();
        for c in claims {
            let (kept, other) = winner(best, c, &resolver);
            best = kept;
            rest.push(other);
        }
        names.insert(best.clone());
        for c in rest {
            names.wait(c);
        }
        vec![RegistryEvent::Conflict {
            kept: best,
            dropped: left,
        }]
    }

    /// `owner` unregistered `name`: it is free, and claims waiting for it
    /// are dropped with it.
    fn unregistered(&self, name: &str, owner: &NodeName) {
        let mut names = locked(&self.names);
        names.unwait(name, owner);
        if names.get(name).is_none_or(|r| r.owner != *owner) {
            return;
        }
        let left = names.remove(name);
        names.take_waiting(name);
        drop(names);
        if let Some(registration) = left {
            self.emit(RegistryEvent::Unregistered {
                registration,
                owner_down: false,
            });
        }
    }

    /// `lost`'s owner gave it up in a conflict: the best claim waiting
    /// takes the name, if its owner held it here; else the holder here
    /// keeps it. Either way, the conflict is an event here (unless this
    /// node, the winner, saw it already).
    fn yielded(&self, me: &NodeName, lost: Registration) {
        let mut names = locked(&self.names);
        names
            .given_up
            .insert(&lost.name, (lost.owner.clone(), lost.registered_at));
        let had_claim = names.unwait(&lost.name, &lost.owner);
        let events = match names.get(&lost.name) {
            Some(r) if r.owner == lost.owner => {
                let Some(left) = names.remove(&lost.name) else {
                    return;
                };
                if names.waiting.contains_key(&left.name) {
                    self.hand_on(&mut names, left, false)
                } else {
                    // The winner's claim has not come yet: its coming is
                    // the conflict's event.
                    names.yielded.insert(&left.name, left.clone());
                    vec![RegistryEvent::Unregistered {
                        registration: left,
                        owner_down: false,
                    }]
                }
            }
            Some(kept) if !(kept.owner == *me && had_claim) => vec![RegistryEvent::Conflict {
                kept: kept.clone(),
                dropped: lost,
            }],
            _ => vec![],
        };
        drop(names);
        self.emit_all(events);
    }

    /// `node` went down: its names and claims go (remembered as dropped, so
    /// a later registration wins against them), and claims waiting for its
    /// names take them.
    fn owner_down(&self, node: &NodeName) {
        let mut names = locked(&self.names);
        let gone: Vec<String> = names
            .values()
            .filter(|r| r.owner == *node)
            .map(|r| r.name.clone())
            .collect();
        let claimed: Vec<String> = names
            .waiting
            .iter()
            .filter(|(_, list)| list.iter().any(|c| c.owner == *node))
            .map(|(name, _)| name.clone())
            .collect();
        for name in claimed {
            names.unwait(&name, node);
        }
        let mut events = Vec::new();
        for name in gone {
            if let Some(left) = names.remove(&name) {
                names.dropped_with_owner(&name, left.registered_at);
                events.extend(self.hand_on(&mut names, left, true));
            }
        }
        drop(names);
        self.emit_all(events);
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// The global registry of a node (`quicmesh::Node::registry`).
#[derive(Clone)]
pub struct Registry {
    pub(crate) coord: Arc<Coord>,
    /// Keeps the node running while the registry is in use.
    pub(crate) _node: Option<Arc<dyn std::any::Any + Send + Sync>>,
}

impl fmt::Debug for Registry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registry")
            .field("node", self.coord.me())
            .finish()
    }
}

impl Registry {
    fn state(&self) -> &State {
        &self.coord.registry
    }

    /// Registers `name` for `service` on this node, on every connected
    /// node: succeeds on exactly one node among concurrent attempts.
    pub async fn register(&self, name: &str, service: &str) -> Result<Registration, RegistryError> {
        if name.is_empty() || name.len() > MAX_NAME {
            return Err(RegistryError::BadName(name.to_owned()));
        }
        if service.len() > MAX_NAME {
            return Err(RegistryError::BadName(service.to_owned()));
        }
        let taken = |owner: NodeName| RegistryError::AlreadyRegistered {
            name: name.to_owned(),
            owner,
        };
        let me = self.coord.me().clone();
        if locked(&self.state().names).full(&me) {
            return Err(RegistryError::TooMany {
                limit: MAX_PER_OWNER,
            });
        }
        let guard = crate::lock::acquire(
            &self.coord,
            &format!("quicmesh.registry/{name}"),
            &LockOptions::default(),
        )
        .await?;
        if let Some(r) = self.whereis(name) {
            return Err(taken(r.owner));
        }
        let supersedes = locked(&self.state().names).dropped.get(name).copied();
        let registration = Registration {
            name: name.to_owned(),
            owner: me.clone(),
            service: service.to_owned(),
            registered_at: self.coord.clock.now(),
            supersedes,
        };
        let peers: Vec<NodeName> = guard
            .nodes()
            .iter()
            .filter(|n| **n != me)
            .cloned()
            .collect();
        let answers: Vec<(&NodeName, Result<PutAnswer, RpcError>)> = self
            .coord
            .ask_each(&peers, service::REGISTRY_PUT, &registration)
            .await;
        let mut refusal = None;
        let mut stored = Vec::new();
        for (peer, answer) in &answers {
            match answer {
                Ok(PutAnswer::Stored) => stored.push(*peer),
                Ok(PutAnswer::Taken(owner)) => refusal = Some(taken(owner.clone())),
                Ok(PutAnswer::Full) => {
                    refusal = refusal.or(Some(RegistryError::TooMany {
                        limit: MAX_PER_OWNER,
                    }));
                }
                Ok(PutAnswer::BadClock) => {
                    refusal = refusal.or_else(|| {
                        Some(RegistryError::ClockDrift {
                            peer: (*peer).clone(),
                        })
                    });
                }
                Ok(other) => {
                    warn!(peer = %peer, name, "a node answered a registration with {other:?}, unknown here");
                }
                Err(e) => {
                    warn!(peer = %peer, name, "could not tell a node of a registration: {e}");
                }
            }
        }
        if refusal.is_none() && !self.state().store_own(registration.clone()) {
            refusal = Some(RegistryError::TooMany {
                limit: MAX_PER_OWNER,
            });
        }
        if refusal.is_none() {
            self.state()
                .acknowledged(&registration, stored.iter().copied());
        }
        if let Some(refusal) = refusal {
            // Refused somewhere: undo.
            self.delete_everywhere(&registration, &peers).await;
            return Err(refusal);
        }
        // Nodes that came up meanwhile were not written to; they take it in
        // as a node that meets this one does.
        let late: Vec<NodeName> = self
            .coord
            .peers()
            .into_iter()
            .filter(|p| !guard.nodes().contains(p))
            .collect();
        for peer in late {
            self.coord.send_in_background(
                &peer,
                service::REGISTRY_SYNC,
                vec![registration.clone()],
                "tell a node that came up of a registration",
            );
        }
        guard.release().await;
        Ok(registration)
    }

    /// Removes `name` if this node owns it, on every node; `false` if it
    /// does not.
    pub async fn unregister(&self, name: &str) -> bool {
        let Some(registration) = self.whereis(name) else {
            return false;
        };
        if registration.owner != *self.coord.me() {
            return false;
        }
        // Its acknowledgements are of no more use (so they stay within the
        // names this node holds).
        locked(&self.state().acked).remove(name);
        self.state().unregistered(name, &registration.owner);
        self.delete_everywhere(&registration, &self.coord.peers())
            .await;
        true
    }

    async fn delete_everywhere(&self, registration: &Registration, peers: &[NodeName]) {
        let what = format!("unregister {:?} there", registration.name);
        self.coord
            .tell(peers, service::REGISTRY_DELETE, &registration.name, &what)
            .await;
    }

    /// Who has `name`, as this node knows (no network).
    pub fn whereis(&self, name: &str) -> Option<Registration> {
        locked(&self.state().names).get(name).cloned()
    }

    /// Every registered name, sorted.
    pub fn registered_names(&self) -> Vec<String> {
        let mut names: Vec<String> = locked(&self.state().names).keys().cloned().collect();
        names.sort();
        names
    }

    /// Events from now on: registrations, removals, conflicts.
    pub fn events(&self) -> broadcast::Receiver<RegistryEvent> {
        self.state().events.subscribe()
    }

    /// Replaces the conflict rule (default: the earliest registration,
    /// ties by owner name). Every node must use the same rule.
    pub fn set_resolver(
        &self,
        resolver: impl Fn(&Registration, &Registration) -> Keep + Send + Sync + 'static,
    ) {
        *locked(&self.state().resolver) = Arc::new(resolver);
    }

    /// Calls the service registered as `name`, wherever it is, with the
    /// default timeout (`rpc.timeout`).
    pub async fn call<Req, Resp>(&self, name: &str, request: &Req) -> Result<Resp, RegistryError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        self.call_timeout(name, request, self.coord.message_timeout())
            .await
    }

    /// As [`Registry::call`], waiting at most `timeout`.
    pub async fn call_timeout<Req, Resp>(
        &self,
        name: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RegistryError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        let r = self
            .whereis(name)
            .ok_or_else(|| RegistryError::NotRegistered(name.to_owned()))?;
        Ok(self
            .coord
            .rpc
            .call(&r.owner, &r.service, request, timeout)
            .await?)
    }
}

/// Sends `peer` the names this node owns.
pub(crate) fn node_up(coord: &Arc<Coord>, peer: &NodeName) {
    let (coord, peer) = (coord.clone(), peer.clone());
    let tasks = coord.mesh().tasks().clone();
    tasks.spawn(async move { sync_to(&coord, &peer).await });
}

/// Tells `peer` the names this node owns.
async fn sync_to(coord: &Arc<Coord>, peer: &NodeName) {
    let me = coord.me().clone();
    let mine: Vec<Registration> = locked(&coord.registry.names)
        .values()
        .filter(|r| r.owner == me)
        .cloned()
        .collect();
    let peers = [peer.clone()];
    let what = "send it this node's registered names";
    coord
        .tell(&peers, service::REGISTRY_SYNC, &mine, what)
        .await;
    // A name unregistered while the peer was being told: the removal may
    // have reached the peer first, so it is sent again, now that the
    // peer has taken the names in (or could not be reached in time).
    let gone: Vec<String> = {
        let names = locked(&coord.registry.names);
        mine.into_iter()
            .filter(|r| names.get(&r.name).is_none_or(|now| now.owner != me))
            .map(|r| r.name)
            .collect()
    };
    for name in gone {
        let what = "unregister a name there";
        coord
            .tell(&peers, service::REGISTRY_DELETE, &name, what)
            .await;
    }
}

/// The nodes owning names (or claims) here.
pub(crate) fn owners(coord: &Coord) -> Vec<NodeName> {
    locked(&coord.registry.names)
        .per_owner
        .keys()
        .cloned()
        .collect()
}

/// Drops the names and claims of a node that went down.
pub(crate) fn node_down(coord: &Coord, node: &NodeName) {
    coord.registry.owner_down(node);
}

/// Whether a registration's name is one a node may register, for a
/// service that can exist (so a peer's names cost at most so much each).
fn valid(r: &Registration) -> bool {
    !r.name.is_empty() && r.name.len() <= MAX_NAME && r.service.len() <= MAX_NAME
}

pub(crate) fn serve(coord: &Arc<Coord>) {
    crate::serve(
        coord,
        service::REGISTRY_PUT,
        |coord, ctx: &CallContext, r: Registration| {
            if r.owner != ctx.from || !valid(&r) {
                // Only an owner registers, for itself.
                return PutAnswer::Taken(ctx.from.clone());
            }
            // A registration is written as it is made: its clock must be
            // near this node's, behind by at most the drift and the time
            // the message may take.
            let behind = MAX_DRIFT + coord.message_timeout();
            let now = coord.clock.now();
            let oldest = now.millis.saturating_sub(behind.as_millis() as u64);
            let too_old = r.registered_at.millis < oldest;
            if too_old {
                count(&coord.counters.clocks_refused);
            }
            if too_old || coord.take_in(r.registered_at).is_err() {
                warn!(peer = %ctx.from, name = r.name, "refused a registration whose clock is too far from this node's; check the clocks");
                return PutAnswer::BadClock;
            }
            let state = &coord.registry;
            if let Some(stored) = locked(&state.names).get(&r.name)
                && stored.owner != r.owner
            {
                return PutAnswer::Taken(stored.owner.clone());
            }
            match state.claim(coord.me(), r) {
                Taken::Full => {
                    count(&coord.counters.names_refused);
                    PutAnswer::Full
                }
                // A name free here, or already the owner's: never refused.
                Taken::Done | Taken::Refused | Taken::Yielded(_) => PutAnswer::Stored,
            }
        },
    );
    crate::serve(
        coord,
        service::REGISTRY_DELETE,
        |coord, ctx: &CallContext, name: String| {
            coord.registry.unregistered(&name, &ctx.from);
        },
    );
    crate::serve(
        coord,
        service::REGISTRY_YIELD,
        |coord, ctx: &CallContext, lost: Registration| {
            if lost.owner == ctx.from && valid(&lost) {
                coord.registry.yielded(coord.me(), lost);
            }
        },
    );
    crate::serve(
        coord,
        service::REGISTRY_SYNC,
        |coord, ctx: &CallContext, names: Vec<Registration>| {
            let mut yielded = Vec::new();
            for r in names.into_iter().take(MAX_PER_OWNER) {
                if r.owner != ctx.from || !valid(&r) {
                    continue;
                }
                if let Err(ahead) = coord.take_in(r.registered_at) {
                    warn!(peer = %ctx.from, name = r.name, "ignored a registration whose clock is {:?} ahead of this node's, more than allowed; check the clocks", ahead.by);
                    continue;
                }
                match coord.registry.claim(coord.me(), r) {
                    Taken::Yielded(lost) => yielded.push(lost),
                    Taken::Full => count(&coord.counters.names_refused),
                    Taken::Refused => count(&coord.counters.claims_refused),
                    Taken::Done => {}
                }
            }
            for lost in yielded {
                let what = "tell it of a name this node lost in a conflict";
                for peer in coord.peers() {
                    coord.send_in_background(&peer, service::REGISTRY_YIELD, lost.clone(), what);
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(millis: u64) -> Hlc {
        Hlc { millis, counter: 0 }
    }

    fn registration(name: &str, owner: &str, millis: u64) -> Registration {
        Registration {
            name: name.to_owned(),
            owner: owner.parse().unwrap(),
            service: "s".to_owned(),
            registered_at: at(millis),
            supersedes: None,
        }
    }

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    fn owner_of(state: &State, name: &str) -> Option<NodeName> {
        locked(&state.names).get(name).map(|r| r.owner.clone())
    }

    #[test]
    fn an_owner_has_at_most_its_share_of_names_and_claims() {
        let state = State::new();
        let me = n("me@h");
        for i in 0..MAX_PER_OWNER {
            assert!(matches!(
                state.claim(&me, registration(&format!("n{i}"), "a@h", 1)),
                Taken::Done
            ));
        }
        assert!(matches!(
            state.claim(&me, registration("one-more", "a@h", 1)),
            Taken::Full
        ));
        assert!(
            matches!(state.claim(&me, registration("n0", "a@h", 2)), Taken::Done),
            "what it has may be renewed"
        );
        state.claim(&me, registration("x", "b@h", 1));
        assert!(
            matches!(state.claim(&me, registration("x", "a@h", 1)), Taken::Full),
            "a claim waiting counts too"
        );
        state.unregistered("n1", &n("a@h"));
        assert!(matches!(
            state.claim(&me, registration("x", "a@h", 1)),
            Taken::Done
        ));
        let names = locked(&state.names);
        assert_eq!(names.owned_by(&n("a@h")), MAX_PER_OWNER);
        assert_eq!(names.owned_by(&n("b@h")), 1);
    }

    #[test]
    fn a_claim_to_a_live_nodes_name_waits_until_that_node_yields_or_goes() {
        let state = State::new();
        let me = n("me@h");
        state.claim(&me, registration("x", "b@h", 5));
        state.claim(&me, registration("x", "a@h", 1));
        assert_eq!(owner_of(&state, "x"), Some(n("b@h")), "b holds it, live");
        state.yielded(&me, registration("x", "b@h", 5));
        assert_eq!(owner_of(&state, "x"), Some(n("a@h")), "b yielded to a");
        state.claim(&me, registration("x", "b@h", 5));
        assert!(
            locked(&state.names)
                .waiting
                .get("x")
                .is_none_or(|w| w.iter().all(|c| c.owner != n("b@h"))),
            "b's claim that came after its yield is not taken"
        );
        state.claim(&me, registration("x", "c@h", 0));
        state.unregistered("x", &n("a@h"));
        assert_eq!(
            owner_of(&state, "x"),
            None,
            "an unregistered name is free: claims against it are dropped"
        );
        assert!(locked(&state.names).per_owner.is_empty());
        state.claim(&me, registration("y", "b@h", 5));
        state.claim(&me, registration("y", "a@h", 1));
        state.owner_down(&n("b@h"));
        assert_eq!(owner_of(&state, "y"), Some(n("a@h")), "b went down");
        state.owner_down(&n("a@h"));
        assert!(locked(&state.names).per_owner.is_empty());
    }

    #[test]
    fn the_owner_decides_by_supersession_acknowledgement_then_the_resolver() {
        let resolver: Resolver = Arc::new(earliest);
        let mine = registration("x", "me@h", 10);
        // Rule 3: the earliest wins.
        let earlier = registration("x", "a@h", 5);
        assert_eq!(decide(&mine, &earlier, false, &resolver), Decision::Yield);
        let later = registration("x", "a@h", 15);
        assert_eq!(decide(&mine, &later, false, &resolver), Decision::Keep);
        // Rule 2: a acknowledged mine (stored it when it was made), then
        // claims an earlier one.
        assert_eq!(decide(&mine, &earlier, true, &resolver), Decision::Refuse);
        assert_eq!(
            decide(&mine, &later, true, &resolver),
            Decision::Keep,
            "a later claim is no forgery, and loses anyway"
        );
        // Rule 1: mine was made after a's (from 5) was dropped with a.
        let superseding = Registration {
            supersedes: Some(at(5)),
            ..mine.clone()
        };
        assert_eq!(
            decide(&superseding, &earlier, true, &resolver),
            Decision::Keep
        );
        // ... and the other way round: a's supersedes mine.
        let theirs = Registration {
            supersedes: Some(at(10)),
            ..registration("x", "a@h", 20)
        };
        assert_eq!(decide(&mine, &theirs, false, &resolver), Decision::Yield);
        // Both owners decide alike, whichever meets the other.
        let (kept, _) = winner(mine.clone(), theirs.clone(), &resolver);
        let (kept_too, _) = winner(theirs.clone(), mine, &resolver);
        assert_eq!(kept, theirs);
        assert_eq!(kept_too, theirs);
    }

    #[test]
    fn a_node_down_loses_its_names_and_a_later_registration_supersedes_them() {
        let state = State::new();
        let me = n("me@h");
        state.claim(&me, registration("x", "a@h", 5));
        state.owner_down(&n("a@h"));
        assert_eq!(owner_of(&state, "x"), None);
        assert_eq!(locked(&state.names).dropped.get("x"), Some(&at(5)));
        assert!(state.store_own(Registration {
            supersedes: Some(at(5)),
            ..registration("x", "me@h", 20)
        }));
        assert!(
            locked(&state.names).dropped.get("x").is_none(),
            "the evidence travels in the registration now"
        );
        // a comes back with its old registration: this node keeps x.
        state.claim(&me, registration("x", "a@h", 5));
        assert_eq!(owner_of(&state, "x"), Some(me));
    }

    #[test]
    fn acknowledgements_are_of_one_registration_of_one_name() {
        let state = State::new();
        let (a, b) = (n("a@h"), n("b@h"));
        let x = registration("x", "me@h", 10);
        state.acknowledged(&x, [&a].into_iter());
        assert!(state.acknowledged_by(&x, &a));
        assert!(!state.acknowledged_by(&x, &b), "b did not store it");
        let y = registration("y", "me@h", 21);
        state.acknowledged(&y, [&b].into_iter());
        assert!(
            !state.acknowledged_by(&x, &b),
            "storing y says nothing of x"
        );
        let x_again = registration("x", "me@h", 30);
        assert!(
            !state.acknowledged_by(&x_again, &a),
            "another registration of x"
        );
    }

    #[test]
    fn dropped_registrations_past_the_cap_make_the_oldest_go() {
        let mut recent = Recent::default();
        for i in 0..MAX_DROPPED {
            recent.insert(&format!("flood{i}"), at(1));
        }
        recent.insert("later", at(2));
        assert_eq!(recent.len(), MAX_DROPPED);
        assert!(recent.get("flood0").is_none(), "the oldest went");
        assert_eq!(recent.get("later"), Some(&at(2)));
        for i in 0..3 * MAX_DROPPED {
            recent.insert("churn", at(3));
            recent.remove("churn");
            recent.insert(&format!("n{}", i % 8), at(4));
        }
        assert!(
            recent.order.len() <= 2 * MAX_DROPPED + 1,
            "the order is compacted"
        );
    }

    #[test]
    fn counts_follow_a_name_that_changes_owner() {
        let mut names = Names::default();
        names.insert(registration("x", "a@h", 1));
        names.insert(registration("x", "b@h", 1));
        assert_eq!(names.owned_by(&n("a@h")), 0);
        assert_eq!(names.owned_by(&n("b@h")), 1);
        assert!(names.remove("x").is_some());
        assert!(names.per_owner.is_empty());
    }
}
