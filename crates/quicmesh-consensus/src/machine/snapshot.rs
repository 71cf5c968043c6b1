//! The snapshot format of the [`Machine`]: a header naming the format
//! version, then the machine, postcard-encoded.
//!
//! Version 1 (no header) is the machine before lock queues: sessions with
//! what they held, and the grants. It is read as a machine with no
//! waiters. Its encoding opens with the number of sessions as a varint,
//! so it never starts with [`SNAPSHOT_MAGIC`] (four `0xFF` bytes would mean at
//! least 2^28 sessions); every later version starts with [`SNAPSHOT_MAGIC`] and a
//! version byte. An unknown version is refused by name, never guessed.
//!
//! Version 2 added the queues of waiters; version 3 adds the service each
//! name stands for. A name in a snapshot of version 1 or 2 stands for the
//! service of the same name, all a name could stand for then.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use quicmesh_wire::NodeName;
use serde::Deserialize;

use super::{Grant, Key, Machine, Session, SessionId};

/// Opens every snapshot of version 2 or later.
pub const SNAPSHOT_MAGIC: [u8; 4] = [0xFF; 4];
/// The version this code writes: 3, the machine with lock queues and the
/// service of each name.
pub const SNAPSHOT_VERSION: u8 = 3;

/// Why a snapshot could not be read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SnapshotError {
    /// The snapshot was written by a newer format than this code reads.
    #[error("snapshot format version {found} is unknown (this code reads 1 to {SNAPSHOT_VERSION})")]
    UnknownVersion {
        /// The version in its header.
        found: u8,
    },
    /// The bytes are not a machine of the version they name.
    #[error("malformed snapshot of format version {version}: {detail}")]
    Malformed {
        /// The version read.
        version: u8,
        /// What failed.
        detail: String,
    },
}

/// A session as version 1 stored it.
#[derive(Deserialize)]
struct SessionV1 {
    owner: NodeName,
    ttl_ms: u64,
    renewed: u64,
    held: BTreeSet<Key>,
}

/// The machine as version 1 stored it.
#[derive(Deserialize)]
struct MachineV1 {
    sessions: BTreeMap<SessionId, SessionV1>,
    grants: BTreeMap<Key, Grant>,
}

/// The machine as version 2 stored it: no services.
#[derive(Deserialize)]
struct MachineV2 {
    sessions: BTreeMap<SessionId, Session>,
    grants: BTreeMap<Key, Grant>,
    queues: BTreeMap<Key, VecDeque<SessionId>>,
}

impl Machine {
    /// The machine encoded as a snapshot of the current format.
    pub fn to_snapshot(&self) -> Result<Vec<u8>, postcard::Error> {
        let mut bytes = SNAPSHOT_MAGIC.to_vec();
        bytes.push(SNAPSHOT_VERSION);
        quicmesh_wire::frame::append(self, &mut bytes)?;
        Ok(bytes)
    }

    /// Reads a snapshot of any known format; one of version 1 has no
    /// waiters, and in one of version 1 or 2 each name stands for the
    /// service of the same name.
    pub fn from_snapshot(bytes: &[u8]) -> Result<Self, SnapshotError> {
        match bytes.strip_prefix(&SNAPSHOT_MAGIC) {
            None => decode::<MachineV1>(1, bytes).map(|m| MachineV2::from(m).into()),
            Some([2, rest @ ..]) => decode::<MachineV2>(2, rest).map(Self::from),
            Some([SNAPSHOT_VERSION, rest @ ..]) => decode(SNAPSHOT_VERSION, rest),
            Some([found, ..]) => Err(SnapshotError::UnknownVersion { found: *found }),
            Some([]) => Err(SnapshotError::Malformed {
                version: 0,
                detail: "no version after the header".into(),
            }),
        }
    }
}

/// Decodes the whole of `bytes` as a `T` of `version`.
fn decode<'a, T: Deserialize<'a>>(version: u8, bytes: &'a [u8]) -> Result<T, SnapshotError> {
    let malformed = |detail: String| SnapshotError::Malformed { version, detail };
    let (value, rest) = postcard::take_from_bytes(bytes).map_err(|e| malformed(e.to_string()))?;
    if !rest.is_empty() {
        return Err(malformed(format!("{} bytes after the machine", rest.len())));
    }
    Ok(value)
}

impl From<MachineV1> for MachineV2 {
    fn from(old: MachineV1) -> Self {
        let sessions = old
            .sessions
            .into_iter()
            .map(|(id, s)| {
                let session = Session {
                    owner: s.owner,
                    ttl_ms: s.ttl_ms,
                    renewed: s.renewed,
                    held: s.held,
                    waiting: BTreeSet::new(),
                };
                (id, session)
            })
            .collect();
        Self {
            sessions,
            grants: old.grants,
            queues: BTreeMap::new(),
        }
    }
}

impl From<MachineV2> for Machine {
    fn from(old: MachineV2) -> Self {
        let services = old
            .grants
            .keys()
            .filter_map(|key| match key {
                Key::Name(name) => Some((name.clone(), name.clone())),
                Key::Lock(_) | Key::Leader(_) => None,
            })
            .collect();
        Self {
            sessions: old.sessions,
            grants: old.grants,
            queues: old.queues,
            services,
        }
    }
}

#[cfg(test)]
mod tests;
