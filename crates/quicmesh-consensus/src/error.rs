//! What can go wrong in consensus mode, by what the caller can do next.

use std::time::Duration;

use quicmesh_wire::NodeName;

/// Why a consensus operation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConsensusError {
    /// No leader with a quorum committed the operation within the wait:
    /// this node may be on the minority side of a partition, or too many
    /// voters are down. A write may still be committed later (as with any
    /// timeout, its outcome is unknown); retry, or give up.
    #[error("no quorum: nothing committed within {waited:?}")]
    NoQuorum {
        /// How long it waited.
        waited: Duration,
    },
    /// The lock, leadership or name stayed with another node for the whole
    /// wait; or, when `owner` is this node, with another of its own tasks
    /// (a node's tasks take a key in turn, as they share its session).
    #[error("still held by {owner} after {waited:?}")]
    Timeout {
        /// The holder at the last look.
        owner: NodeName,
        /// How long it waited.
        waited: Duration,
    },
    /// The name is registered by another node.
    #[error("the name is registered by {owner}")]
    Taken {
        /// The owner.
        owner: NodeName,
    },
    /// This node's session ran out (it was cut off or paused for longer
    /// than its TTL) or was closed; what it held is released. The next
    /// operation opens a new session.
    #[error("the session expired")]
    SessionExpired,
    /// The lock or leadership was not held with that token (it was
    /// released, or the session expired), or the name is not this node's.
    #[error("not held")]
    NotHeld,
    /// A stale local read, or a voter's own operation, on a node that is
    /// not a voter.
    #[error("{node} is not a voter")]
    NotVoter {
        /// This node.
        node: NodeName,
    },
    /// A key was empty or longer than 255 bytes.
    #[error("invalid key: 1 to 255 bytes")]
    Invalid,
    /// The service a name is registered for was empty or longer than 255
    /// bytes.
    #[error("invalid service: 1 to 255 bytes")]
    InvalidService,
    /// A bound of the state machine was reached (sessions per node,
    /// grants per session).
    #[error("a limit of the state machine was reached")]
    Limit,
    /// A peer refused the request (it is not a voter, or not the node it
    /// says it is).
    #[error("{peer} refused: {detail}")]
    Refused {
        /// The refusing node.
        peer: NodeName,
        /// Its reason.
        detail: String,
    },
    /// This node's Raft member has stopped (shutdown, or a storage
    /// failure it cannot go on after).
    #[error("consensus stopped: {0}")]
    Stopped(String),
    /// Another change of the voters is under way (a new voter catching up
    /// with the log, or a joint configuration not yet committed): one
    /// change at a time. Wait for it to end, then ask again.
    #[error(
        "another change of the voters is in progress: wait until `quicmesh consensus members` \
         shows it done, then retry"
    )]
    MembershipChangeInProgress,
    /// The node to add is a voter already. A voter whose data directory
    /// was lost is removed first, then added again.
    #[error(
        "{node} is a voter already (if its data directory was lost: remove-voter, then add-voter)"
    )]
    AlreadyAVoter {
        /// The node.
        node: NodeName,
    },
    /// The node to remove is no voter of the group.
    #[error(
        "{node} is not a voter of the group: nothing to remove (see `quicmesh consensus members`)"
    )]
    NotAMember {
        /// The node.
        node: NodeName,
    },
    /// Removing the node would leave the group without a voter.
    #[error("removing {node} would leave the group without a voter: add another voter first")]
    WouldEmptyGroup {
        /// The last voter.
        node: NodeName,
    },
    /// The node to add could not be admitted: it is not connected, or
    /// runs no Raft member. Nothing was changed.
    #[error(
        "{node} cannot join: {detail} (start it with --consensus-join, or join = true under \
         [consensus], connected to the cluster)"
    )]
    CannotJoin {
        /// The node.
        node: NodeName,
        /// What failed.
        detail: String,
    },
    /// The node to add did not catch up with the log in time: it stays a
    /// learner (it receives the log but does not vote). Ask again to make
    /// it a voter once it can keep up.
    #[error(
        "{node} did not catch up with the log within {waited:?}; it stays a learner: check that \
         it is reachable and run add-voter again"
    )]
    NotCaughtUp {
        /// The node.
        node: NodeName,
        /// How long it waited.
        waited: Duration,
    },
}

/// Why consensus could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The settings cannot work.
    #[error(transparent)]
    Config(#[from] crate::ConfigError),
    /// The data directory or its store could not be opened.
    #[error("cannot open the consensus store in {dir}: {detail}")]
    Store {
        /// The data directory.
        dir: std::path::PathBuf,
        /// What failed.
        detail: String,
    },
    /// openraft refused to start.
    #[error("raft did not start: {0}")]
    Raft(String),
    /// A reserved service name was taken.
    #[error(transparent)]
    Register(#[from] quicmesh_rpc::RegisterError),
}
