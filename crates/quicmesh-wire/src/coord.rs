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
//! | `quicmesh.lock.confirm` | [`LockConfirm`] | `bool`: recorded (the receiver has the grant and took the token in) |
//! | `quicmesh.lock.release` | [`LockRelease`] | `()` |
//! | `quicmesh.lock.sync` | the locks the sender holds, [`LockHeld`]s | the receiver's own [`LockHeld`]s that kept a resource against them |
//! | `quicmesh.registry.put` | [`Registration`] | [`PutAnswer`] |
//! | `quicmesh.registry.delete` | the name, a string | `()` |
//! | `quicmesh.registry.sync` | the sender's [`Registration`]s | `()` |
//! | `quicmesh.registry.yield` | the sender's [`Registration`] lost in a conflict | `()` |
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
    /// The locks the sender holds, when two nodes meet.
    pub const LOCK_SYNC: &str = "quicmesh.lock.sync";
    /// Writes a registration.
    pub const REGISTRY_PUT: &str = "quicmesh.registry.put";
    /// Removes the sender's registration of a name.
    pub const REGISTRY_DELETE: &str = "quicmesh.registry.delete";
    /// Every name the sender owns, when two nodes meet.
    pub const REGISTRY_SYNC: &str = "quicmesh.registry.sync";
    /// The sender gives up a name it lost to another owner's registration
    /// (which the receiver holds as a waiting claim) in a conflict.
    pub const REGISTRY_YIELD: &str = "quicmesh.registry.yield";
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
    /// Granted, with the granting node's clock ([`Hlc::packed`]): the
    /// requester's token is minted past it.
    Granted(u64),
    /// Someone else holds it here.
    Held,
    /// The requester's node holds as many locks here as a node may.
    TooMany,
}

/// Tells every node the token a lock was granted with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockConfirm {
    /// The resource.
    pub resource: String,
    /// The holder.
    pub requester: LockRequester,
    /// The fencing token: the holder's clock ([`Hlc::packed`]) in the high
    /// 64 bits, a hash of its node name in the low 64.
    pub token: u128,
}

/// A lock its holder has, as it tells a node it meets: that node keeps the
/// grant with the larger token and tells a holder whose grant lost.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockHeld {
    /// The resource.
    pub resource: String,
    /// The holder (the sender).
    pub requester: LockRequester,
    /// Its fencing token, as in [`LockConfirm`].
    pub token: u128,
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
    /// Orders readings with equal `millis`; at most [`Hlc::MAX_COUNTER`].
    pub counter: u32,
}

impl Hlc {
    /// The largest counter a clock reading carries: past it, the clock
    /// moves on to the next millisecond.
    pub const MAX_COUNTER: u32 = 0xFFFF;

    /// The reading as one number that orders as the readings do:
    /// milliseconds in the high 48 bits, the counter (at most
    /// [`Hlc::MAX_COUNTER`]) in the low 16.
    pub fn packed(self) -> u64 {
        (self.millis << 16) | u64::from(self.counter.min(Self::MAX_COUNTER))
    }

    /// The reading [`Hlc::packed`] gave.
    pub fn unpacked(packed: u64) -> Self {
        Self {
            millis: packed >> 16,
            counter: (packed & 0xFFFF) as u32,
        }
    }
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
    /// Set when the name was registered after its registering node had
    /// dropped an earlier registration of it because that owner went
    /// down: the latest such registration's clock. This registration wins
    /// against every registration of the name at or before that reading.
    pub supersedes: Option<Hlc>,
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
    /// The registration's clock is too far from this node's (more than the
    /// allowed drift): the clocks of the two nodes disagree.
    BadClock,
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
    /// The leader's term (its lock's fencing token, as in [`LockConfirm`]).
    pub term: u128,
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
        assert_eq!(postcard::to_allocvec(&LockAnswer::TooMany).unwrap(), [2]);
        let registration = Registration {
            name: "x".into(),
            owner: n("a@h"),
            service: "s".into(),
            registered_at: Hlc {
                millis: 1,
                counter: 2,
            },
            supersedes: None,
        };
        assert_eq!(
            postcard::to_allocvec(&registration).unwrap(),
            [1, b'x', 3, b'a', b'@', b'h', 1, b's', 1, 2, 0]
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
        let held = vec![LockHeld {
            resource: "res".into(),
            requester: release.requester,
            token: u128::MAX,
        }];
        let body = postcard::to_allocvec(&held).unwrap();
        assert_eq!(frame::decode::<Vec<LockHeld>>(&body).unwrap(), held);
        let at = Hlc {
            millis: 1_700_000_000_000,
            counter: 7,
        };
        assert_eq!(Hlc::unpacked(at.packed()), at);
        let later = Hlc {
            millis: at.millis,
            counter: 8,
        };
        assert!(later.packed() > at.packed());
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
