//! The settings of consensus mode, and the voters they name.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use quicmesh_mesh::duration;
use quicmesh_wire::NodeName;
use serde::{Deserialize, Serialize};

use crate::NodeId;
use crate::machine::TTL_RANGE_MS;

/// The settings of consensus mode (`[consensus]` in a node's TOML).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsensusConfig {
    /// The nodes that hold the log and vote when the group is founded, by
    /// name; every other node is a client of theirs. The same list, in any
    /// order, on every node. Once the group runs, its voters are what its
    /// committed membership says (changed with `Consensus::add_voter` and
    /// `Consensus::remove_voter`); a node started later lists the voters
    /// of that time, through which it finds the group. Required.
    #[serde(default)]
    pub voters: Vec<NodeName>,
    /// Run a Raft member although `voters` does not name this node: it is
    /// to be added to a running group (`Consensus::add_voter`, `quicmesh
    /// consensus add-voter`). Its store starts empty and waits, voting for
    /// nobody, until that change admits it. Default false.
    #[serde(default)]
    pub join: bool,
    /// Where this node keeps its log, vote and snapshot (one file,
    /// `raft.redb`, inside it). Default `./quicmesh-data/<node name>`.
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    /// How long a node's session lives without a keep-alive; what it holds
    /// is released when it runs out. Default 3 s.
    #[serde(default = "defaults::session_ttl", with = "duration")]
    pub session_ttl: Duration,
    /// Interval of the Raft leader's heartbeats. Default 100 ms.
    #[serde(default = "defaults::heartbeat", with = "duration")]
    pub heartbeat: Duration,
    /// Shortest wait for a heartbeat before a follower stands for
    /// election; each follower waits a random time between this and twice
    /// this. Default 500 ms.
    #[serde(default = "defaults::election_timeout", with = "duration")]
    pub election_timeout: Duration,
    /// Longest wait of a `lock`, `register`, `campaign` or read when the
    /// caller gives none. Default 5 s.
    #[serde(default = "defaults::request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Entries applied between two snapshots (after which the log before
    /// the snapshot is purged). Default 5000.
    #[serde(default = "defaults::snapshot_every")]
    pub snapshot_every: u64,
    /// Entries kept in the log below the latest snapshot, so a follower a
    /// little behind catches up from the log instead of a whole snapshot.
    /// Default 1000.
    #[serde(default = "defaults::logs_kept")]
    pub logs_kept_after_snapshot: u64,
}

impl Default for ConsensusConfig {
    fn default() -> Self {
        Self {
            voters: Vec::new(),
            join: false,
            data_dir: None,
            session_ttl: defaults::session_ttl(),
            heartbeat: defaults::heartbeat(),
            election_timeout: defaults::election_timeout(),
            request_timeout: defaults::request_timeout(),
            snapshot_every: defaults::snapshot_every(),
            logs_kept_after_snapshot: defaults::logs_kept(),
        }
    }
}

mod defaults {
    use std::time::Duration;
    pub(super) fn session_ttl() -> Duration {
        Duration::from_secs(3)
    }
    pub(super) fn heartbeat() -> Duration {
        Duration::from_millis(100)
    }
    pub(super) fn election_timeout() -> Duration {
        Duration::from_millis(500)
    }
    pub(super) fn request_timeout() -> Duration {
        Duration::from_secs(5)
    }
    pub(super) fn snapshot_every() -> u64 {
        5000
    }
    pub(super) fn logs_kept() -> u64 {
        1000
    }
}

/// A consensus setting that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// `voters` is empty.
    #[error("consensus.voters names no node")]
    NoVoters,
    /// A voter is named twice.
    #[error("consensus.voters names {0} twice")]
    DuplicateVoter(NodeName),
    /// Two voters' names map to the same Raft node id (astronomically
    /// unlikely; rename one).
    #[error("voters {a} and {b} map to the same raft node id")]
    IdClash {
        /// One voter.
        a: NodeName,
        /// The other.
        b: NodeName,
    },
    /// The heartbeat must be well inside the election timeout.
    #[error(
        "consensus.heartbeat {heartbeat:?} must be under a third of election_timeout {election_timeout:?}"
    )]
    Heartbeat {
        /// The heartbeat interval.
        heartbeat: Duration,
        /// The election timeout.
        election_timeout: Duration,
    },
    /// The TTL is out of range, or too short to survive a leader change.
    #[error(
        "consensus.session_ttl {ttl:?} must be between {min:?} and {max:?} and at least twice election_timeout"
    )]
    SessionTtl {
        /// The TTL.
        ttl: Duration,
        /// The least accepted.
        min: Duration,
        /// The most accepted.
        max: Duration,
    },
    /// `snapshot_every` is 0.
    #[error("consensus.snapshot_every must be at least 1")]
    SnapshotEvery,
}

impl ConsensusConfig {
    /// Checks the settings, naming the first bad one.
    pub fn validate(&self) -> Result<(), ConfigError> {
        Voters::new(&self.voters)?;
        if self.heartbeat.is_zero() || self.heartbeat * 3 > self.election_timeout {
            return Err(ConfigError::Heartbeat {
                heartbeat: self.heartbeat,
                election_timeout: self.election_timeout,
            });
        }
        let (min, max) = (
            Duration::from_millis(TTL_RANGE_MS.0),
            Duration::from_millis(TTL_RANGE_MS.1),
        );
        let ttl = self.session_ttl;
        if ttl < min || ttl > max || ttl < self.election_timeout * 2 {
            return Err(ConfigError::SessionTtl { ttl, min, max });
        }
        if self.snapshot_every == 0 {
            return Err(ConfigError::SnapshotEvery);
        }
        Ok(())
    }

    /// The data directory: `data_dir`, or `./quicmesh-data/<node>`.
    pub fn data_dir_for(&self, node: &NodeName) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from("quicmesh-data").join(node.as_str()))
    }
}

/// The voters, with the Raft node id of each.
///
/// A voter's id is a hash of its name (64-bit FNV-1a), so it stays the
/// same whatever the order of the list and across restarts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Voters {
    by_id: BTreeMap<NodeId, NodeName>,
}

impl Voters {
    /// The voters `names`, checked: at least one, no repeats, no clashing
    /// ids.
    pub fn new(names: &[NodeName]) -> Result<Self, ConfigError> {
        if names.is_empty() {
            return Err(ConfigError::NoVoters);
        }
        let mut by_id = BTreeMap::new();
        for name in names {
            if let Some(other) = by_id.insert(id_of(name), name.clone()) {
                return Err(if other == *name {
                    ConfigError::DuplicateVoter(other)
                } else {
                    ConfigError::IdClash {
                        a: other,
                        b: name.clone(),
                    }
                });
            }
        }
        Ok(Self { by_id })
    }

    /// The id of `name` if it is a voter.
    pub fn id(&self, name: &NodeName) -> Option<NodeId> {
        let id = id_of(name);
        self.by_id.contains_key(&id).then_some(id)
    }

    /// The voter with id `id`.
    pub fn name(&self, id: NodeId) -> Option<&NodeName> {
        self.by_id.get(&id)
    }

    /// Every voter, by id.
    pub fn iter(&self) -> impl Iterator<Item = (NodeId, &NodeName)> {
        self.by_id.iter().map(|(id, n)| (*id, n))
    }

    /// The voter whose name sorts first: the one that bootstraps the group.
    pub fn first(&self) -> Option<&NodeName> {
        self.by_id.values().min()
    }
}

/// The Raft node id of the node `name` (64-bit FNV-1a of the name),
/// whether it is a voter now, was one, or will be.
pub fn node_id(name: &NodeName) -> NodeId {
    id_of(name)
}

fn id_of(name: &NodeName) -> NodeId {
    const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    name.as_str()
        .bytes()
        .fold(OFFSET, |h, b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(v: &[&str]) -> Vec<NodeName> {
        v.iter().map(|s| s.parse().expect("name")).collect()
    }

    #[test]
    fn ids_do_not_depend_on_the_order_of_the_list() {
        let a = Voters::new(&names(&["a@h", "b@h", "c@h"])).expect("voters");
        let b = Voters::new(&names(&["c@h", "a@h", "b@h"])).expect("voters");
        assert_eq!(a, b);
        assert_eq!(a.first().map(NodeName::as_str), Some("a@h"));
    }

    #[test]
    fn bad_settings_are_named() {
        let mut c = ConsensusConfig::default();
        assert_eq!(c.validate(), Err(ConfigError::NoVoters));
        c.voters = names(&["a@h", "a@h"]);
        assert!(matches!(c.validate(), Err(ConfigError::DuplicateVoter(_))));
        c.voters = names(&["a@h"]);
        assert_eq!(c.validate(), Ok(()));
        c.heartbeat = c.election_timeout;
        assert!(matches!(c.validate(), Err(ConfigError::Heartbeat { .. })));
        c.heartbeat = Duration::from_millis(100);
        c.session_ttl = Duration::from_millis(600);
        assert!(matches!(c.validate(), Err(ConfigError::SessionTtl { .. })));
    }

    #[test]
    fn a_toml_section_fills_the_defaults() {
        let c: ConsensusConfig =
            toml::from_str("voters = [\"a@h\", \"b@h\"]\nsession_ttl = \"2s\"\n").expect("parses");
        assert_eq!(c.session_ttl, Duration::from_secs(2));
        assert_eq!(c.heartbeat, Duration::from_millis(100));
        assert_eq!(c.voters.len(), 2);
    }
}
