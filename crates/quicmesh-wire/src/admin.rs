//! The admin service's messages (`quicmesh.admin`): what a node is asked
//! about itself and the cluster, and its reports.
//!
//! The reports are also the `--json` documents of the `quicmesh` admin
//! commands. Like every message here they change only with the protocol's
//! major version ([`crate::ALPN`]), and then only by added fields, so the
//! JSON shapes stay as they are within a major version.
//! Times are milliseconds since the Unix epoch, round trips microseconds,
//! and tokens and terms decimal strings (128-bit numbers do not fit a
//! JSON reader's doubles).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::NodeName;

/// The RPC service every node answers admin questions on.
pub const SERVICE: &str = "quicmesh.admin";

/// The most rows one answer carries unless the asker asks for fewer: an
/// answer stays far below the largest RPC message.
pub const MAX_ROWS: usize = 100_000;

/// A question to a node. Append-only (a node meeting a question it does
/// not know fails to decode it, and the asker gets that error).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Question {
    /// Its status and peers.
    Status,
    /// The first `limit` names of its registry.
    Names {
        /// The most rows wanted.
        limit: usize,
    },
    /// Where its registry says `name` is.
    Whereis {
        /// The registered name.
        name: String,
    },
    /// The first `limit` elections it knows, with their leaders.
    Leaders {
        /// The most rows wanted.
        limit: usize,
    },
    /// The first `limit` locks of its lock table.
    Locks {
        /// The most rows wanted.
        limit: usize,
    },
    /// Consensus mode: the Raft group's committed membership, read
    /// through its leader.
    ConsensusMembers,
    /// Consensus mode: make `node` a voter, waiting up to `wait_ms`.
    AddVoter {
        /// The node to add.
        node: NodeName,
        /// The longest wait, in milliseconds.
        wait_ms: u64,
    },
    /// Consensus mode: remove `node` from the voters, waiting up to
    /// `wait_ms`.
    RemoveVoter {
        /// The node to remove.
        node: NodeName,
        /// The longest wait, in milliseconds.
        wait_ms: u64,
    },
}

/// A node's answer, of the kind asked. Append-only.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Answer {
    /// To [`Question::Status`].
    Status(Box<NodeReport>),
    /// To [`Question::Names`].
    Names(Rows<NameReport>),
    /// To [`Question::Whereis`].
    Whereis(Option<NameReport>),
    /// To [`Question::Leaders`].
    Leaders(Rows<LeaderReport>),
    /// To [`Question::Locks`].
    Locks(Rows<LockReport>),
    /// To [`Question::ConsensusMembers`], [`Question::AddVoter`] and
    /// [`Question::RemoveVoter`]: the membership (after the change).
    ConsensusMembers(ConsensusMembersReport),
}

/// A Raft group's membership (`quicmesh consensus members`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusMembersReport {
    /// The node asked.
    pub asked: NodeName,
    /// The voters, sorted (while a change is committed, those of both
    /// configurations).
    pub voters: Vec<NodeName>,
    /// The learners (nodes being added), sorted.
    pub learners: Vec<NodeName>,
    /// The log index of the entry that made this membership.
    pub index: Option<u64>,
}

/// Up to a limit of rows, and how many there are in all.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rows<T> {
    /// The first rows, sorted.
    pub rows: Vec<T>,
    /// How many rows the node has; more than `rows.len()` when the limit
    /// cut the list short.
    pub total: usize,
}

impl<T> Rows<T> {
    /// The first `limit` of `all` (at most [`MAX_ROWS`]), and their number.
    pub fn first(mut all: Vec<T>, limit: usize) -> Self {
        let total = all.len();
        all.truncate(limit.min(MAX_ROWS));
        Self { rows: all, total }
    }
}

/// A node's status (`quicmesh status`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeReport {
    /// The node.
    pub node: NodeName,
    /// The quicmesh version it runs.
    pub version: String,
    /// Its incarnation (a new one at every start).
    pub incarnation: u64,
    /// Where it listens.
    pub listen: String,
    /// The fingerprint of the CA it trusts (equal on every node of a
    /// cluster).
    pub ca_fingerprint: String,
    /// Whether it is hidden.
    pub hidden: bool,
    /// Open QUIC connections (including ones handshaking or closing).
    pub connections: usize,
    /// Every node it knows, sorted by name.
    pub peers: Vec<PeerReport>,
    /// Names in its registry.
    pub names: usize,
    /// Locks in its lock table.
    pub locks: usize,
    /// Elections it knows of.
    pub elections: usize,
    /// Its counters since it started, by name: the mesh's (`auth_failures`,
    /// `handshake_failures`, `protocol_violations`, `revoked`, `duplicates`,
    /// `peers_refused`, `names_in_use`, `handshakes_retried`,
    /// `handshakes_refused`, `handshakes_refused_per_source`) and
    /// coordination's (`claims_refused`, `clocks_refused`,
    /// `announcements_refused`, `names_refused`, `locks_refused`,
    /// `locks_lost`).
    pub counters: BTreeMap<String, u64>,
    /// Its Raft group as it sees it, in consensus mode; `None` in global
    /// mode.
    pub consensus: Option<ConsensusReport>,
}

/// A node's view of its Raft group (consensus mode).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsensusReport {
    /// `leader`, `follower`, `candidate`, `learner`, `stopped`,
    /// `joining` (a new store not admitted yet: it votes for nobody), or
    /// `client` (a node that runs no Raft member).
    pub role: String,
    /// The leader as the node knows it.
    pub leader: Option<NodeName>,
    /// A voter's Raft term.
    pub term: Option<u64>,
    /// The index of a voter's last log entry.
    pub last_log_index: Option<u64>,
    /// The index of the last entry a voter applied.
    pub last_applied: Option<u64>,
    /// The voters of the group: the last committed membership the node
    /// applied (a client: the last it read, or else the configured list).
    pub voters: Vec<NodeName>,
}

impl NodeReport {
    /// The node as one of its peers would list it: up, at its listening
    /// address.
    pub fn as_peer(&self) -> PeerReport {
        PeerReport {
            node: self.node.clone(),
            state: "up".to_owned(),
            rtt_us: None,
            up_since_ms: None,
            incarnation: Some(self.incarnation),
            hidden: self.hidden,
            seed: false,
            addrs: vec![self.listen.clone()],
            last_down: None,
            last_dial_error: None,
        }
    }
}

/// One peer as a node sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerReport {
    /// The peer.
    pub node: NodeName,
    /// `up`, `connecting` or `down`.
    pub state: String,
    /// Smoothed round trip in microseconds, while up.
    pub rtt_us: Option<u64>,
    /// When its connection came up, while up.
    pub up_since_ms: Option<u64>,
    /// Its incarnation, once known.
    pub incarnation: Option<u64>,
    /// Whether it is hidden.
    pub hidden: bool,
    /// Whether it is one of the node's seeds (kept connected).
    pub seed: bool,
    /// Where it listens.
    pub addrs: Vec<String>,
    /// Why and when it last went down.
    pub last_down: Option<DownReport>,
    /// Why the last dial to it failed, if it did.
    pub last_dial_error: Option<String>,
}

/// Why and when a peer went down.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DownReport {
    /// The reason, as `NodeDown` events print it.
    pub reason: String,
    /// When.
    pub at_ms: u64,
}

/// A registered name (`quicmesh names`, `quicmesh whereis`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NameReport {
    /// The name.
    pub name: String,
    /// The node it is registered on.
    pub node: NodeName,
    /// The RPC service it stands for there.
    pub service: String,
}

/// Who leads an election, as one node knows it (`quicmesh leaders`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderReport {
    /// The election.
    pub election: String,
    /// Its leader; `None` when it has none now.
    pub leader: Option<NodeName>,
    /// The leader's term, or the last leader's ("0" before the first).
    pub term: String,
}

/// A lock in one node's lock table (`quicmesh locks`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LockReport {
    /// The resource (`quicmesh.election/NAME` for an election's lock).
    pub resource: String,
    /// The node holding it.
    pub holder: NodeName,
    /// The holder's incarnation.
    pub incarnation: u64,
    /// Its fencing token; `None` while the holder is still collecting
    /// grants.
    pub token: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn questions_and_answers_round_trip() {
        let q = Question::Whereis {
            name: "svc".to_owned(),
        };
        let bytes = postcard::to_allocvec(&q).expect("encode");
        assert_eq!(
            bytes,
            [2, 3, b's', b'v', b'c'],
            "variant index, then the name"
        );
        assert_eq!(postcard::from_bytes::<Question>(&bytes).expect("decode"), q);
        let a = Answer::Names(Rows::first(
            vec![NameReport {
                name: "svc".to_owned(),
                node: "b@h".parse().expect("name"),
                service: "svc".to_owned(),
            }],
            0,
        ));
        let bytes = postcard::to_allocvec(&a).expect("encode");
        assert_eq!(postcard::from_bytes::<Answer>(&bytes).expect("decode"), a);
        match a {
            Answer::Names(rows) => assert_eq!((rows.rows.len(), rows.total), (0, 1)),
            other => panic!("{other:?}"),
        }
        assert!(
            postcard::from_bytes::<Question>(&[9]).is_err(),
            "unknown variant refused"
        );
    }
}
