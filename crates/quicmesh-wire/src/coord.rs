//! Coordination messages: locks, the global registry, process groups and
//! elections.
//!
//! They travel as request and response bodies of RPC calls to the node's
//! own services, whose names ([`service`]) start with `quicmesh.`; a node
//! takes a claim only from the node it names, as its certificate says.
//!
//! | service | request | response |
//! |---|---|---|
//! | `quicmesh.lock.acquire` | [`LockAcquire`] | [`LockAnswer`] |
//! | `quicmesh.lock.confirm` | [`LockConfirm`] | `()` |
//! | `quicmesh.lock.release` | [`LockRelease`] | `()` |
//! | `quicmesh.registry.put` | [`Registration`] | [`PutAnswer`] |
//! | `quicmesh.registry.delete` | the name, a string | `()` |
//! | `quicmesh.registry.sync` | the sender's [`Registration`]s | `()` |
//! | `quicmesh.groups.change` | [`GroupChange`] | `()` |
//! | `quicmesh.groups.sync` | the sender's [`GroupJoins`] | `()` |
//! | `quicmesh.election.announce` | [`Announce`] | `()` |

use serde::{Deserialize, Serialize};

use crate::NodeName;

/// The names of the coordination services.
pub mod service {
    /// Asks for a lock.
    pub const LOCK_ACQUIRE: &str = "quicmesh.lock.acquire";
    /// Tells the token a lock was granted with.
    pub const LOCK_CONFIRM: &str = "quicmesh.lock.confirm";
    /// Gives a lock back.
    pub const LOCK_RELEASE: &str = "quicmesh.lock.release";
    /// Writes a registration.
    pub const REGISTRY_PUT: &str = "quicmesh.registry.put";
    /// Removes the sender's registration of a name.
    pub const REGISTRY_DELETE: &str = "quicmesh.registry.delete";
    /// Every name the sender owns, when two nodes meet.
    pub const REGISTRY_SYNC: &str = "quicmesh.registry.sync";
    /// A join or a leave.
    pub const GROUPS_CHANGE: &str = "quicmesh.groups.change";
    /// Every membership of the sender, when two nodes meet.
    pub const GROUPS_SYNC: &str = "quicmesh.groups.sync";
    /// A node starts or stops leading.
    pub const ELECTION_ANNOUNCE: &str = "quicmesh.election.announce";
}

/// Who asks for a lock: a node, its incarnation, and a number unique on it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct LockRequester {
    /// The asking node.
    pub node: NodeName,
    /// Its incarnation.
    pub incarnation: u64,
    /// The request's number on that node.
    pub id: u64,
}

/// Asks for `resource` on one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockAcquire {
    /// The resource.
    pub resource: String,
    /// Who asks.
    pub requester: LockRequester,
}

/// One node's answer to [`LockAcquire`]. Append-only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum LockAnswer {
    /// Granted, with this node's fence for it.
    Granted(u64),
    /// Someone else holds it here.
    Held,
}

/// Tells every node the token a lock was granted with (the largest fence
/// granted), so fences only grow.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockConfirm {
    /// The resource.
    pub resource: String,
    /// The holder.
    pub requester: LockRequester,
    /// The fencing token.
    pub token: u64,
}

/// Gives `resource` back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockRelease {
    /// The resource.
    pub resource: String,
    /// The holder.
    pub requester: LockRequester,
}

/// A hybrid logical clock reading: wall-clock milliseconds, and a counter
/// that orders readings within one millisecond and across nodes whose
/// clocks disagree. Every registry message carries one, and every node's
/// clock moves past every reading it sees.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Hlc {
    /// Milliseconds since the Unix epoch.
    pub millis: u64,
    /// Orders readings with equal `millis`.
    pub counter: u32,
}

/// A name in the global registry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration {
    /// The name.
    pub name: String,
    /// The node that registered it (calls to the name go there).
    pub owner: NodeName,
    /// The RPC service the name stands for on that node.
    pub service: String,
    /// When it was registered, by the owner's clock.
    pub registered_at: Hlc,
}

/// A node's answer to a registration written to it. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum PutAnswer {
    /// Written.
    Stored,
    /// This node knows another owner of the name.
    Taken(NodeName),
    /// The owner has as many names as an owner may have here.
    Full,
}

/// The sender's service joined (or left) a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupChange {
    /// The group.
    pub group: String,
    /// The service on the sender.
    pub service: String,
    /// Joined (`true`) or left.
    pub joined: bool,
}

/// How many times one of the sender's services joined a group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupJoins {
    /// The group.
    pub group: String,
    /// The service on the sender.
    pub service: String,
    /// Joins not yet left.
    pub count: u32,
}

/// The sender starts or stops leading an election.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Announce {
    /// The election.
    pub election: String,
    /// The leader's term (its lock's fencing token).
    pub term: u64,
    /// Leading (`true`) or resigned.
    pub leading: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame;

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    /// postcard is positional: these bytes are the format. A change here
    /// breaks every node of the older version.
    #[test]
    fn messages_have_their_documented_bytes() {
        let requester = LockRequester {
            node: n("a@h"),
            incarnation: 2,
            id: 3,
        };
        let acquire = LockAcquire {
            resource: "r".into(),
            requester,
        };
        assert_eq!(
            postcard::to_allocvec(&acquire).unwrap(),
            [1, b'r', 3, b'a', b'@', b'h', 2, 3]
        );
        assert_eq!(
            postcard::to_allocvec(&LockAnswer::Granted(5)).unwrap(),
            [0, 5]
        );
        assert_eq!(postcard::to_allocvec(&LockAnswer::Held).unwrap(), [1]);
        let registration = Registration {
            name: "x".into(),
            owner: n("a@h"),
            service: "s".into(),
            registered_at: Hlc {
                millis: 1,
                counter: 2,
            },
        };
        assert_eq!(
            postcard::to_allocvec(&registration).unwrap(),
            [1, b'x', 3, b'a', b'@', b'h', 1, b's', 1, 2]
        );
        assert_eq!(
            postcard::to_allocvec(&PutAnswer::Taken(n("b@h"))).unwrap(),
            [1, 3, b'b', b'@', b'h']
        );
        assert_eq!(
            postcard::to_allocvec(&PutAnswer::Full).unwrap(),
            [2],
            "appended"
        );
        let joins = GroupJoins {
            group: "g".into(),
            service: "s".into(),
            count: 2,
        };
        // The same bytes as the `(group, service, count)` tuple it replaced.
        assert_eq!(
            postcard::to_allocvec(&joins).unwrap(),
            postcard::to_allocvec(&("g", "s", 2u32)).unwrap()
        );
        let announce = Announce {
            election: "e".into(),
            term: 7,
            leading: true,
        };
        assert_eq!(postcard::to_allocvec(&announce).unwrap(), [1, b'e', 7, 1]);
    }

    #[test]
    fn every_message_round_trips_and_garbage_is_an_error() {
        let requester = LockRequester {
            node: n("a@h"),
            incarnation: u64::MAX,
            id: 0,
        };
        let confirm = LockConfirm {
            resource: "res".into(),
            requester: requester.clone(),
            token: 9,
        };
        let bytes = frame::encode(&confirm, 1024).unwrap();
        let (back, _) = frame::decode_from::<LockConfirm>(&bytes, 1024)
            .unwrap()
            .unwrap();
        assert_eq!(back, confirm);
        let release = LockRelease {
            resource: "res".into(),
            requester,
        };
        let body = postcard::to_allocvec(&release).unwrap();
        assert_eq!(frame::decode::<LockRelease>(&body).unwrap(), release);
        let change = GroupChange {
            group: "g".into(),
            service: "s".into(),
            joined: false,
        };
        let body = postcard::to_allocvec(&change).unwrap();
        assert_eq!(frame::decode::<GroupChange>(&body).unwrap(), change);
        assert!(
            frame::decode::<LockAnswer>(&[7]).is_err(),
            "unknown variant"
        );
        assert!(
            frame::decode::<Registration>(&[200, 1]).is_err(),
            "truncated"
        );
    }
}
