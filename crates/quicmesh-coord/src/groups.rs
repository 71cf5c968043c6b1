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
/// At most this many joins per node, of all its (group, service) pairs
/// together: what a peer's sync carries past it is not taken, a join past
/// it is refused. (So a node has at most this many pairs, and the members
/// a group lists are bounded by it times the nodes.)
const MAX_NODE_JOINS: u32 = 65_536;
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

/// One node's joins, with their total.
#[derive(Debug, Default)]
struct NodeJoins {
    pairs: Joins,
    total: u32,
}

impl NodeJoins {
    /// Takes `all` up to the limits ([`MAX_JOINS`] of one pair,
    /// [`MAX_NODE_JOINS`] in all, in the order given).
    fn capped(all: impl IntoIterator<Item = ((String, String), u32)>) -> Self {
        let mut joins = Self::default();
        for (pair, count) in all {
            let room = MAX_NODE_JOINS - joins.total;
            let had = joins.pairs.get(&pair).copied().unwrap_or(0);
            let count = count.min(MAX_JOINS - had.min(MAX_JOINS)).min(room);
            if count == 0 {
                continue;
            }
            *joins.pairs.entry(pair).or_insert(0) += count;
            joins.total += count;
        }
        joins
    }
}

pub(crate) struct State {
    by_node: Mutex<HashMap<NodeName, NodeJoins>>,
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
    /// nothing to leave, or a join is past the node's limits
    /// ([`MAX_NODE_JOINS`] in all, [`MAX_JOINS`] of one pair).
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
                if joins.total >= MAX_NODE_JOINS {
                    return false;
                }
                let n = joins.pairs.entry(key).or_insert(0);
                if *n >= MAX_JOINS {
                    return false;
                }
                *n += 1;
                joins.total += 1;
            } else {
                match joins.pairs.get_mut(&key) {
                    None => return false,
                    Some(1) => {
                        joins.pairs.remove(&key);
                    }
                    Some(n) => *n -= 1,
                }
                joins.total -= 1;
                if joins.total == 0 {
                    by_node.remove(node);
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
    fn replace(&self, node: &NodeName, joins: NodeJoins) {
        let joins_copy = joins.pairs.clone();
        let old = {
            let mut by_node = locked(&self.by_node);
            if joins.pairs.is_empty() {
                by_node.remove(node)
            } else {
                by_node.insert(node.clone(), joins)
            }
        }
        .map(|old| old.pairs)
        .unwrap_or_default();
        let joins = joins_copy;
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
    /// 255 bytes, or past this node's limits (65,536 joins in all, 1024
    /// of one group and service pair).
    pub async fn join(&self, group: &str, service: &str) -> bool {
        self.change(group, service, true).await
    }

    /// Takes this node's `service` out of `group` once; `false` if it was
    /// not in it.
    pub async fn leave(&self, group: &str, service: &str) -> bool {
        self.change(group, service, false).await
    }

    async fn change(&self, group: &str, service: &str, joined: bool) -> bool {
        if !valid(group) || !valid(service) {
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
                    .pairs
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
            .flat_map(|joins| joins.pairs.keys().map(|(g, _)| g.clone()))
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
                .pairs
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
    coord.groups.replace(node, NodeJoins::default());
}

/// Whether a group or service name is one a node may use.
fn valid(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME
}

pub(crate) fn serve(coord: &Arc<Coord>) {
    crate::serve(
        coord,
        service::GROUPS_CHANGE,
        |coord, ctx: &CallContext, c: GroupChange| {
            if valid(&c.group) && valid(&c.service) {
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
            let joins = NodeJoins::capped(
                all.into_iter()
                    .filter(|j| valid(&j.group) && valid(&j.service))
                    .map(|j| ((j.group, j.service), j.count)),
            );
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
        for i in MAX_JOINS..MAX_NODE_JOINS {
            assert!(state.apply(&node, &format!("g{i}"), "s", true));
        }
        assert!(
            !state.apply(&node, "one-too-many", "s", true),
            "joins in all are capped"
        );
        assert!(state.apply(&node, "g", "s", false), "leaving still works");
        assert!(state.apply(&node, "one-more", "s", true), "and makes room");
        let other: NodeName = "b@h".parse().unwrap();
        assert!(
            state.apply(&other, "g", "s", true),
            "the limits are per node"
        );
        let total = locked(&state.by_node).get(&node).map(|j| j.total);
        assert_eq!(total, Some(MAX_NODE_JOINS));
    }

    #[test]
    fn a_sync_is_taken_up_to_the_limits_in_its_order() {
        let pair = |g: &str| (g.to_owned(), "s".to_owned());
        let mut all = vec![(pair("big"), 5000), (pair("big"), 5000)];
        all.extend((0..MAX_NODE_JOINS).map(|i| (pair(&format!("g{i}")), 1)));
        all.push((pair("huge"), u32::MAX));
        let joins = NodeJoins::capped(all);
        assert_eq!(
            joins.pairs[&pair("big")],
            MAX_JOINS,
            "one pair's cap holds twice told"
        );
        assert_eq!(joins.total, MAX_NODE_JOINS);
        assert_eq!(joins.pairs.len() as u32, 1 + MAX_NODE_JOINS - MAX_JOINS);
        assert!(!joins.pairs.contains_key(&pair("huge")));
    }
}
