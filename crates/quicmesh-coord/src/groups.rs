//! Process groups (Erlang's `pg`): named groups of services, each member a
//! service on some node; a service may be in many groups, and a group
//! may hold the same service more than once (joins are counted, as in
//! `pg`). Every node knows every group. A node tells the others when its
//! own services join or leave, and sends a node that comes up its whole
//! membership; the members of a node that goes down leave every group.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex};

use quicmesh_rpc::CallContext;
use quicmesh_wire::NodeName;
use quicmesh_wire::coord::{GroupChange, GroupJoins, service};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;

use crate::{Coord, locked};

/// Longest group or service name, in bytes.
const MAX_NAME: usize = 255;
/// At most this many (group, service) pairs per node: what a peer's sync
/// carries past it is not taken, a join past it is refused.
const MAX_SYNC: usize = 65_536;
/// At most this many joins of one (group, service) pair per node.
const MAX_JOINS: u32 = 1024;

/// A member of a group: a service on a node.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Member {
    /// The node.
    pub node: NodeName,
    /// The RPC service on it.
    pub service: String,
}

/// A change of a group's membership, as one node saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum GroupEvent {
    /// `member` joined `group` (once more, if it was in it).
    Joined {
        /// The group.
        group: String,
        /// The member.
        member: Member,
    },
    /// `member` left `group` (once; or wholly, when its node went down).
    Left {
        /// The group.
        group: String,
        /// The member.
        member: Member,
    },
}

/// `(group, service) → how many times joined`, per node.
type Joins = BTreeMap<(String, String), u32>;

pub(crate) struct State {
    by_node: Mutex<HashMap<NodeName, Joins>>,
    events: broadcast::Sender<GroupEvent>,
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            by_node: Mutex::new(HashMap::new()),
            events: broadcast::channel(1024).0,
        }
    }

    /// Applies one join or leave of `node`'s; `false` if a leave found
    /// nothing to leave, or a join is past the node's limits ([`MAX_SYNC`]
    /// pairs, [`MAX_JOINS`] joins of one pair).
    fn apply(&self, node: &NodeName, group: &str, service: &str, joined: bool) -> bool {
        let member = Member {
            node: node.clone(),
            service: service.to_owned(),
        };
        {
            let mut by_node = locked(&self.by_node);
            let joins = by_node.entry(node.clone()).or_default();
            let key = (group.to_owned(), service.to_owned());
            if joined {
                if !joins.contains_key(&key) && joins.len() >= MAX_SYNC {
                    return false;
                }
                let n = joins.entry(key).or_insert(0);
                if *n >= MAX_JOINS {
                    return false;
                }
                *n += 1;
            } else {
                match joins.get_mut(&key) {
                    None => return false,
                    Some(1) => {
                        joins.remove(&key);
                    }
                    Some(n) => *n -= 1,
                }
            }
        }
        let group = group.to_owned();
        let _ = self.events.send(if joined {
            GroupEvent::Joined { group, member }
        } else {
            GroupEvent::Left { group, member }
        });
        true
    }

    /// Replaces everything `node` is in with `joins` (none: forgets it).
    fn replace(&self, node: &NodeName, joins: Joins) {
        let old = {
            let mut by_node = locked(&self.by_node);
            if joins.is_empty() {
                by_node.remove(node)
            } else {
                by_node.insert(node.clone(), joins.clone())
            }
        }
        .unwrap_or_default();
        let member = |service: &str| Member {
            node: node.clone(),
            service: service.to_owned(),
        };
        for ((group, service), n) in &old {
            let now = joins
                .get(&(group.clone(), service.clone()))
                .copied()
                .unwrap_or(0);
            for _ in now..*n {
                let _ = self.events.send(GroupEvent::Left {
                    group: group.clone(),
                    member: member(service),
                });
            }
        }
        for ((group, service), n) in &joins {
            let before = old
                .get(&(group.clone(), service.clone()))
                .copied()
                .unwrap_or(0);
            for _ in before..*n {
                let _ = self.events.send(GroupEvent::Joined {
                    group: group.clone(),
                    member: member(service),
                });
            }
        }
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// The process groups of a node (`quicmesh::Node::groups`).
#[derive(Clone)]
pub struct Groups {
    pub(crate) coord: Arc<Coord>,
}

impl fmt::Debug for Groups {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Groups")
            .field("node", self.coord.me())
            .finish()
    }
}

impl Groups {
    fn state(&self) -> &State {
        &self.coord.groups
    }

    /// Adds this node's `service` to `group` (once more, if it is in it)
    /// and tells the connected nodes. `false` if a name is empty or over
    /// 255 bytes, or past this node's limits (65,536 group and service
    /// pairs, 1024 joins of one pair).
    pub async fn join(&self, group: &str, service: &str) -> bool {
        self.change(group, service, true).await
    }

    /// Takes this node's `service` out of `group` once; `false` if it was
    /// not in it.
    pub async fn leave(&self, group: &str, service: &str) -> bool {
        self.change(group, service, false).await
    }

    async fn change(&self, group: &str, service: &str, joined: bool) -> bool {
        let bad = |s: &str| s.is_empty() || s.len() > MAX_NAME;
        if bad(group) || bad(service) {
            return false;
        }
        let me = self.coord.me().clone();
        if !self.state().apply(&me, group, service, joined) {
            return false;
        }
        let change = GroupChange {
            group: group.to_owned(),
            service: service.to_owned(),
            joined,
        };
        // A node that misses it gets the whole membership when it reconnects.
        let what = format!(
            "tell a node that {service} {} {group}",
            if joined { "joined" } else { "left" }
        );
        self.coord
            .tell(&self.coord.peers(), service::GROUPS_CHANGE, &change, &what)
            .await;
        true
    }

    /// Every member of `group` on every node, sorted (a member joined
    /// twice is listed twice).
    pub fn members(&self, group: &str) -> Vec<Member> {
        let by_node = locked(&self.state().by_node);
        let mut members: Vec<Member> = by_node
            .iter()
            .flat_map(|(node, joins)| {
                joins
                    .iter()
                    .filter(|((g, _), _)| g == group)
                    .flat_map(move |((_, service), n)| {
                        (0..*n).map(move |_| Member {
                            node: node.clone(),
                            service: service.clone(),
                        })
                    })
            })
            .collect();
        members.sort();
        members
    }

    /// The members of `group` on this node.
    pub fn local_members(&self, group: &str) -> Vec<Member> {
        let me = self.coord.me();
        self.members(group)
            .into_iter()
            .filter(|m| m.node == *me)
            .collect()
    }

    /// Every group with at least one member, sorted.
    pub fn which_groups(&self) -> Vec<String> {
        let by_node = locked(&self.state().by_node);
        let mut groups: Vec<String> = by_node
            .values()
            .flat_map(|joins| joins.keys().map(|(g, _)| g.clone()))
            .collect();
        groups.sort();
        groups.dedup();
        groups
    }

    /// Membership changes from now on.
    pub fn events(&self) -> broadcast::Receiver<GroupEvent> {
        self.state().events.subscribe()
    }
}

/// Sends `peer` this node's whole membership.
pub(crate) fn node_up(coord: &Arc<Coord>, peer: &NodeName) {
    let mine: Vec<GroupJoins> = locked(&coord.groups.by_node)
        .get(coord.me())
        .map(|joins| {
            joins
                .iter()
                .map(|((group, service), count)| GroupJoins {
                    group: group.clone(),
                    service: service.clone(),
                    count: *count,
                })
                .collect()
        })
        .unwrap_or_default();
    coord.send_in_background(
        peer,
        service::GROUPS_SYNC,
        mine,
        "send it this node's group memberships",
    );
}

/// The nodes with members here.
pub(crate) fn nodes(coord: &Coord) -> Vec<NodeName> {
    locked(&coord.groups.by_node).keys().cloned().collect()
}

/// The members of a node that went down leave every group.
pub(crate) fn node_down(coord: &Coord, node: &NodeName) {
    coord.groups.replace(node, Joins::new());
}

pub(crate) fn serve(coord: &Arc<Coord>) {
    crate::serve(
        coord,
        service::GROUPS_CHANGE,
        |coord, ctx: &CallContext, c: GroupChange| {
            if !c.group.is_empty() && c.group.len() <= MAX_NAME && c.service.len() <= MAX_NAME {
                coord
                    .groups
                    .apply(&ctx.from, &c.group, &c.service, c.joined);
            }
        },
    );
    crate::serve(
        coord,
        service::GROUPS_SYNC,
        |coord, ctx: &CallContext, all: Vec<GroupJoins>| {
            let joins: Joins = all
                .into_iter()
                .take(MAX_SYNC)
                .filter(|j| {
                    let (g, s) = (&j.group, &j.service);
                    !g.is_empty() && g.len() <= MAX_NAME && s.len() <= MAX_NAME && j.count > 0
                })
                .map(|j| ((j.group, j.service), j.count.min(1024)))
                .collect();
            coord.groups.replace(&ctx.from, joins);
        },
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_nodes_memberships_stop_at_their_limits() {
        let state = State::new();
        let node: NodeName = "a@h".parse().unwrap();
        for _ in 0..MAX_JOINS {
            assert!(state.apply(&node, "g", "s", true));
        }
        assert!(
            !state.apply(&node, "g", "s", true),
            "joins of one pair are capped"
        );
        for i in 1..MAX_SYNC {
            assert!(state.apply(&node, &format!("g{i}"), "s", true));
        }
        assert!(
            !state.apply(&node, "one-too-many", "s", true),
            "pairs are capped"
        );
        assert!(state.apply(&node, "g", "s", false), "leaving still works");
        let other: NodeName = "b@h".parse().unwrap();
        assert!(
            state.apply(&other, "g", "s", true),
            "the limits are per node"
        );
        let pairs = locked(&state.by_node).get(&node).map(BTreeMap::len);
        assert_eq!(pairs, Some(MAX_SYNC));
    }
}
