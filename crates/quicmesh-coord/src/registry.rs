//! The global name registry (`:global` register_name, whereis_name,
//! unregister_name, registered_names).
//!
//! Every node keeps the whole table: name → owner node, service, and the
//! hybrid-logical-clock time of the registration. Registering takes the
//! cluster lock of the name on every connected node, checks the name is
//! free everywhere, then writes it everywhere, so of concurrent attempts
//! exactly one succeeds. A node that goes down takes its names with it on
//! every node. When two nodes meet (at start, or when a partition heals),
//! each sends the other the names it owns; a name owned by two nodes is
//! resolved on every node by the same deterministic rule, and the loser's
//! node sees [`RegistryEvent::Conflict`] naming it.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quicmesh_rpc::{CallContext, RpcError};
use quicmesh_wire::NodeName;
use quicmesh_wire::coord::{Hlc, PutAnswer, Registration, service};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tracing::{info, warn};

use crate::lock::{LockError, LockOptions, join_all};
use crate::{Coord, locked};

/// Longest registered name, in bytes.
const MAX_NAME: usize = 255;
/// At most this many names per owner: what a peer's sync carries past it
/// is not taken, a registration past it is refused.
const MAX_PER_OWNER: usize = 65_536;

/// A clock reading after both `last` and the wall clock reading
/// `wall_millis`.
fn tick(last: Hlc, wall_millis: u64) -> Hlc {
    if wall_millis > last.millis {
        Hlc {
            millis: wall_millis,
            counter: 0,
        }
    } else {
        Hlc {
            millis: last.millis,
            counter: last.counter.saturating_add(1),
        }
    }
}

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
    /// The name is empty or longer than 255 bytes.
    #[error("bad name {0:?}: 1 to 255 bytes")]
    BadName(String),
    /// This node has as many names as a node may have: unregister some.
    #[error("this node has {limit} registered names, the most a node may have")]
    TooMany {
        /// Names per node.
        limit: usize,
    },
    /// The name's cluster lock was not taken.
    #[error(transparent)]
    Lock(#[from] LockError),
    /// The call to the name's service failed.
    #[error(transparent)]
    Rpc(#[from] RpcError),
}

/// The registered names, with how many each owner has.
#[derive(Debug, Default)]
struct Names {
    by_name: HashMap<String, Registration>,
    per_owner: HashMap<NodeName, usize>,
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

    /// How many names `owner` has here.
    fn owned_by(&self, owner: &NodeName) -> usize {
        self.per_owner.get(owner).copied().unwrap_or(0)
    }

    fn insert(&mut self, registration: Registration) {
        *self
            .per_owner
            .entry(registration.owner.clone())
            .or_insert(0) += 1;
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

    fn uncount(&mut self, owner: &NodeName) {
        if let Some(n) = self.per_owner.get_mut(owner) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                self.per_owner.remove(owner);
            }
        }
    }
}

pub(crate) struct State {
    names: Mutex<Names>,
    clock: Mutex<Hlc>,
    resolver: Mutex<Resolver>,
    events: broadcast::Sender<RegistryEvent>,
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            names: Mutex::new(Names::default()),
            clock: Mutex::new(Hlc {
                millis: 0,
                counter: 0,
            }),
            resolver: Mutex::new(Arc::new(earliest)),
            events: broadcast::channel(1024).0,
        }
    }

    fn now(&self) -> Hlc {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let mut clock = locked(&self.clock);
        *clock = tick(*clock, wall);
        *clock
    }

    /// Moves the clock past a reading seen in a message.
    fn observe(&self, seen: Hlc) {
        let mut clock = locked(&self.clock);
        if seen > *clock {
            *clock = seen;
        }
    }

    fn emit(&self, event: RegistryEvent) {
        let _ = self.events.send(event);
    }

    /// Takes in `incoming` (from its owner): stored if the name is free or
    /// already the owner's; else resolved against what is stored. `false`
    /// if it is a new name of an owner that has [`MAX_PER_OWNER`] already.
    fn merge(&self, me: &NodeName, incoming: Registration) -> bool {
        self.observe(incoming.registered_at);
        let resolver = locked(&self.resolver).clone();
        let mut names = locked(&self.names);
        let event = match names.get(&incoming.name) {
            None if names.owned_by(&incoming.owner) >= MAX_PER_OWNER => return false,
            None => {
                names.insert(incoming.clone());
                RegistryEvent::Registered(incoming)
            }
            Some(stored) if stored.owner == incoming.owner => {
                if *stored == incoming {
                    return true;
                }
                names.insert(incoming.clone());
                RegistryEvent::Registered(incoming)
            }
            Some(stored) => {
                // Give the resolver the two in one order on every node.
                let (a, b) = if (&stored.owner, stored.registered_at)
                    <= (&incoming.owner, incoming.registered_at)
                {
                    (stored.clone(), incoming)
                } else {
                    (incoming, stored.clone())
                };
                let (kept, dropped) = match resolver(&a, &b) {
                    Keep::First => (a, b),
                    Keep::Second => (b, a),
                };
                names.insert(kept.clone());
                if dropped.owner == *me {
                    warn!(name = %dropped.name, winner = %kept.owner, "lost a registered name in a conflict");
                } else {
                    info!(name = %kept.name, kept = %kept.owner, dropped = %dropped.owner, "resolved a registry conflict");
                }
                RegistryEvent::Conflict { kept, dropped }
            }
        };
        drop(names);
        self.emit(event);
        true
    }

    fn remove_if(&self, name: &str, owner: &NodeName, owner_down: bool) {
        let removed = {
            let mut names = locked(&self.names);
            match names.get(name) {
                Some(r) if r.owner == *owner => names.remove(name),
                _ => None,
            }
        };
        if let Some(registration) = removed {
            self.emit(RegistryEvent::Unregistered {
                registration,
                owner_down,
            });
        }
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
        let taken = |owner: NodeName| RegistryError::AlreadyRegistered {
            name: name.to_owned(),
            owner,
        };
        let me = self.coord.me().clone();
        if locked(&self.state().names).owned_by(&me) >= MAX_PER_OWNER {
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
        let registration = Registration {
            name: name.to_owned(),
            owner: me.clone(),
            service: service.to_owned(),
            registered_at: self.state().now(),
        };
        let peers: Vec<NodeName> = guard
            .nodes()
            .iter()
            .filter(|n| **n != me)
            .cloned()
            .collect();
        let timeout = self.coord.message_timeout();
        let answers = join_all(peers.iter().map(|peer| {
            let coord = &self.coord;
            let registration = &registration;
            async move {
                let r: Result<PutAnswer, RpcError> = coord
                    .call(peer, service::REGISTRY_PUT, registration, timeout)
                    .await;
                (peer, r)
            }
        }))
        .await;
        let owner = answers.iter().find_map(|(_, a)| match a {
            Ok(PutAnswer::Taken(owner)) => Some(owner.clone()),
            _ => None,
        });
        let full = answers
            .iter()
            .any(|(_, a)| matches!(a, Ok(PutAnswer::Full)));
        for (peer, answer) in &answers {
            if let Err(e) = answer {
                warn!(peer = %peer, name, "could not tell a node of a registration: {e}");
            }
        }
        if let Some(owner) = owner {
            // Someone has it where this node did not know: undo.
            self.delete_everywhere(&registration, &peers).await;
            return Err(taken(owner));
        }
        if full || !self.state().merge(&me, registration.clone()) {
            self.delete_everywhere(&registration, &peers).await;
            return Err(RegistryError::TooMany {
                limit: MAX_PER_OWNER,
            });
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
        self.state().remove_if(name, &registration.owner, false);
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
    let me = coord.me().clone();
    let mine: Vec<Registration> = locked(&coord.registry.names)
        .values()
        .filter(|r| r.owner == me)
        .cloned()
        .collect();
    coord.send_in_background(
        peer,
        service::REGISTRY_SYNC,
        mine,
        "send it this node's registered names",
    );
}

/// The nodes owning names here.
pub(crate) fn owners(coord: &Coord) -> Vec<NodeName> {
    locked(&coord.registry.names)
        .values()
        .map(|r| r.owner.clone())
        .collect()
}

/// Drops the names of a node that went down.
pub(crate) fn node_down(coord: &Coord, node: &NodeName) {
    let gone: Vec<String> = locked(&coord.registry.names)
        .values()
        .filter(|r| r.owner == *node)
        .map(|r| r.name.clone())
        .collect();
    for name in gone {
        coord.registry.remove_if(&name, node, true);
    }
}

pub(crate) fn serve(coord: &Arc<Coord>) {
    crate::serve(
        coord,
        service::REGISTRY_PUT,
        |coord, ctx: &CallContext, r: Registration| {
            if r.owner != ctx.from || r.name.is_empty() || r.name.len() > MAX_NAME {
                // Only an owner registers, for itself.
                return PutAnswer::Taken(ctx.from.clone());
            }
            let state = &coord.registry;
            state.observe(r.registered_at);
            if let Some(stored) = locked(&state.names).get(&r.name)
                && stored.owner != r.owner
            {
                return PutAnswer::Taken(stored.owner.clone());
            }
            if state.merge(coord.me(), r) {
                PutAnswer::Stored
            } else {
                PutAnswer::Full
            }
        },
    );
    crate::serve(
        coord,
        service::REGISTRY_DELETE,
        |coord, ctx: &CallContext, name: String| {
            coord.registry.remove_if(&name, &ctx.from, false);
        },
    );
    crate::serve(
        coord,
        service::REGISTRY_SYNC,
        |coord, ctx: &CallContext, names: Vec<Registration>| {
            for r in names.into_iter().take(MAX_PER_OWNER) {
                if r.owner == ctx.from && !r.name.is_empty() && r.name.len() <= MAX_NAME {
                    let _ = coord.registry.merge(coord.me(), r);
                }
            }
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    fn registration(name: &str, owner: &str) -> Registration {
        Registration {
            name: name.to_owned(),
            owner: owner.parse().unwrap(),
            service: "s".to_owned(),
            registered_at: Hlc {
                millis: 1,
                counter: 0,
            },
        }
    }

    #[test]
    fn an_owner_has_at_most_its_share_of_names() {
        let state = State::new();
        let me: NodeName = "me@h".parse().unwrap();
        for i in 0..MAX_PER_OWNER {
            assert!(state.merge(&me, registration(&format!("n{i}"), "a@h")));
        }
        assert!(
            !state.merge(&me, registration("one-more", "a@h")),
            "a's share is full"
        );
        assert!(
            state.merge(&me, registration("n0", "a@h")),
            "what it has may be renewed"
        );
        assert!(
            state.merge(&me, registration("x", "b@h")),
            "b has its own share"
        );
        let owner: NodeName = "a@h".parse().unwrap();
        state.remove_if("n1", &owner, false);
        assert!(
            state.merge(&me, registration("one-more", "a@h")),
            "a freed one"
        );
        let names = locked(&state.names);
        assert_eq!(names.owned_by(&owner), MAX_PER_OWNER);
        assert_eq!(names.owned_by(&"b@h".parse().unwrap()), 1);
    }

    #[test]
    fn counts_follow_a_name_that_changes_owner_in_a_conflict() {
        let mut names = Names::default();
        names.insert(registration("x", "a@h"));
        names.insert(registration("x", "b@h"));
        assert_eq!(names.owned_by(&"a@h".parse().unwrap()), 0);
        assert_eq!(names.owned_by(&"b@h".parse().unwrap()), 1);
        assert!(names.remove("x").is_some());
        assert!(names.per_owner.is_empty());
    }

    #[test]
    fn the_clock_passes_the_wall_and_every_reading() {
        let t = Hlc {
            millis: 10,
            counter: 4,
        };
        let at = |millis, counter| Hlc { millis, counter };
        assert_eq!(tick(t, 20), at(20, 0));
        assert_eq!(tick(t, 10), at(10, 5));
        assert_eq!(
            tick(t, 3),
            at(10, 5),
            "a wall clock behind the last reading"
        );
        assert_eq!(tick(at(10, u32::MAX), 0), at(10, u32::MAX), "saturates");
    }
}
