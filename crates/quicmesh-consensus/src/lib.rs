//! Consensus mode of quicmesh: one Raft group (openraft) over the mesh,
//! running etcd's lease + lock + election model, with fencing tokens and
//! terms that are Raft log indices.
//!
//! Layer: above `quicmesh-rpc` and `quicmesh-mesh`, below the facade; it
//! knows nothing of the global-mode coordination crate.
//!
//! # Parts
//!
//! - [`machine`]: the replicated state machine as data (sessions, locks,
//!   elections, names); sans-IO, unit-tested alone.
//! - `storage`: the log, the vote and the snapshot in one redb file; the
//!   state machine's applied state.
//! - `network`: openraft's RPCs as reserved RPC services
//!   (`quicmesh.raft.append`, `.vote`, `.snapshot`), peers named by their
//!   certificates.
//! - [`Consensus`]: the handle, with the client API (`lock`, `register`,
//!   `whereis`, `campaign`, `leader`) and the client service
//!   (`quicmesh.raft.client`) that forwards a node's requests to the
//!   leader.
//!
//! # Storage: redb
//!
//! The log, vote, committed and purged markers and the latest snapshot
//! live in one redb database (`<data_dir>/raft.redb`). redb is pure Rust,
//! one file, with ACID write transactions that are fsync'd on commit by
//! default (`Durability::Immediate`): the vote and appended entries are
//! committed that way before openraft is told they are durable. fjall is
//! an LSM tree tuned for write-heavy, larger-than-memory data, with a
//! journal whose fsync is a separate, opt-in step per write batch, and a
//! directory of files; a Raft log of lock operations is small, append-only
//! and wants each append durable at once, which is redb's default
//! behaviour and fewer ways to get durability wrong. Only the committed
//! marker is not written on its own: it is kept in memory and written with
//! the next append, in its transaction, since losing it is harmless
//! (openraft learns the commit index again from the leader) and a write of
//! its own on every commit would stall the Raft core.
//!
//! The state machine is held in memory; it is rebuilt at start from the
//! latest snapshot (persisted in the same file whenever one is built or
//! installed) plus the log entries after it, which are never purged
//! before a snapshot covers them.
//! A snapshot is the machine, postcard-encoded, after a format version
//! ([`machine::SNAPSHOT_VERSION`]); one written before versions existed
//! (the machine before lock queues) is read as a machine with no waiters.
//!
//! # Transport: RPC services
//!
//! Raft's messages ride the RPC layer's streams (reserved services) rather
//! than a stream kind of their own: RPC already gives per-call timeouts,
//! size limits, bounded inbound calls per peer and the verified caller
//! name, which are what a Raft transport needs. Append-entries and votes
//! are small and share the caller's RPC lane; snapshots are sent in
//! chunks (openraft's chunked transfer) so no message passes the RPC
//! size limit.
//!
//! The messages are openraft's own request types and this crate's
//! `Request`/`Answer` enums, encoded by RPC with postcard, and they live
//! here rather than in `quicmesh-wire`: that crate would otherwise depend
//! on openraft. As with every postcard enum, variants are only ever
//! appended.
//!
//! # Membership and bootstrap
//!
//! Every Raft member's node id is a hash of its node name
//! ([`node_id`]), and its membership entry records the name, which is how
//! the others reach it; a Raft message is accepted only from a member of
//! the group (a configured voter, a member of the receiver's membership,
//! or the node that admitted it) that is the node it claims to be, as the
//! caller's certificate names it. A node that runs no Raft member is a
//! client, and sends each request to the leader.
//!
//! [`ConsensusConfig::voters`] are the voters the group is founded with.
//! A store created empty is *pending*: its member grants no vote and
//! stands for no election, because an empty store may belong to a voter
//! whose data directory was lost, with the votes it gave and the entries
//! it acknowledged (voting again would allow two leaders in one term, or
//! a leader without committed entries). The voter whose name sorts first
//! founds the group once every configured voter answers with an empty
//! store: it admits them all and initializes the group with them. If one
//! answers with a log, the group exists and the founder's own store was
//! lost: it founds nothing and waits like any pending member.
//!
//! At run time the voters change one at a time through the leader
//! ([`Consensus::add_voter`], [`Consensus::remove_voter`], read with
//! [`Consensus::membership`]): a node to add runs a Raft member
//! ([`ConsensusConfig::join`]); the leader admits its store, adds it as a
//! learner, waits until it holds the log up to that entry, then makes it
//! a voter. A voter whose data directory was lost votes again only once
//! removed and added back, so the group never counts the lost store as
//! the voter it replaced. Changes are taken from visible nodes of the
//! cluster (an admin command, a hidden node, asks through one).
//!
//! # Sessions and expiry
//!
//! Each node holds one session, a lease of [`ConsensusConfig::session_ttl`]
//! renewed by a committed keep-alive every third of it. Locks,
//! leaderships and names belong to a session. The Raft leader watches
//! the sessions by its own clock and proposes `Expire` for one it has not
//! seen renewed within its TTL (counted from when it became leader at the
//! earliest); the entry expires the session only if no renewal was
//! committed meanwhile, and releases what the session held.
//!
//! # Tokens
//!
//! A lock's fencing token and an election's term are the log index of the
//! entry that granted it: strictly increasing across every grant in the
//! group, across leader changes and restarts.

use std::io::Cursor;

mod config;
mod consensus;
mod error;
pub mod machine;
mod network;
mod storage;

pub use config::{ConfigError, ConsensusConfig, Voters, node_id};
pub use consensus::{
    Consensus, ConsensusStatus, Leader, LockGuard, Membership, NameOwner, WeakConsensus,
};
pub use error::{ConsensusError, StartError};

/// A Raft node id: see [`Voters`].
pub type NodeId = u64;

/// A Raft member as openraft's membership records it: the voter's name.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Member {
    /// The voter's node name.
    pub name: String,
}

openraft::declare_raft_types!(
    /// The openraft types of quicmesh's group.
    pub TypeConfig:
        D = machine::Command,
        R = machine::Reply,
        NodeId = NodeId,
        Node = Member,
);

/// openraft's handle, with quicmesh's types.
pub(crate) type Raft = openraft::Raft<TypeConfig>;

/// Locks a mutex, whether or not a panicking thread poisoned it.
pub(crate) fn locked<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}
