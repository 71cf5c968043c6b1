//! The replicated state machine, as data: sessions (leases), locks,
//! elections and names, in etcd's model.
//!
//! Every replica applies the same committed entries in the same order and
//! reaches the same state; nothing here reads a clock or does I/O. The
//! only input besides the command is the Raft log index of the entry that
//! carries it, and that index is what a grant is stamped with: a lock's
//! fencing token and an election's term are the index of the granting
//! entry, so every later grant (of anything, on any node, after any
//! number of restarts) has a larger one.
//!
//! Time enters only through [`Command::Expire`]: the Raft leader, by its
//! own clock, proposes the expiry of a session it has not seen renewed
//! for its TTL, naming the renewal it last saw; the machine expires the
//! session only if no renewal was applied since (a keep-alive that won the
//! race keeps the session). Expiring or closing a session releases
//! everything it held, in that same entry.
//!
//! A lock or leadership that is held keeps a bounded FIFO queue of the
//! sessions waiting for it ([`Op::Enqueue`]). Whatever removes a grant (a
//! release, a resignation, the holder's session ending) grants the key to
//! the first waiter in that same entry, stamped with that entry's index:
//! a contended hand-over is one commit, and the waiter learns of its grant
//! from the applied state. A key with waiters is always held. A session
//! that ends leaves every queue it was in.
//!
//! A registered name stands for a service on its owner's node, kept with
//! it ([`Op::RegisterService`]; [`Op::Register`] is the service of the
//! same name) and gone with it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use quicmesh_wire::NodeName;
use serde::{Deserialize, Serialize};

/// A session's id: the log index of the entry that opened it.
pub type SessionId = u64;

/// Longest lock, election or name, in bytes.
pub const MAX_KEY: usize = 255;
/// Most sessions open at once in the whole group.
pub const MAX_SESSIONS: usize = 4096;
/// Most sessions one node may hold open at once.
pub const MAX_SESSIONS_PER_NODE: usize = 16;
/// Most locks, leaderships and names one session may hold, plus the keys
/// it waits for, at once.
pub const MAX_HELD_PER_SESSION: usize = 1024;
/// Most sessions waiting in line for one lock or leadership.
pub const MAX_WAITERS_PER_KEY: usize = 256;
/// Shortest and longest session TTL accepted, in milliseconds.
pub const TTL_RANGE_MS: (u64, u64) = (100, 3_600_000);

/// What a client asks of the group, on its own behalf.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Op {
    /// Opens a session that lives while it is renewed within `ttl_ms`.
    OpenSession {
        /// The lease, in milliseconds.
        ttl_ms: u64,
    },
    /// Renews a session's lease.
    KeepAlive {
        /// The session.
        session: SessionId,
    },
    /// Closes a session, releasing all it holds.
    CloseSession {
        /// The session.
        session: SessionId,
    },
    /// Takes the lock `resource` for `session` if it is free; if it is
    /// held, only says by whom ([`Op::Enqueue`] waits in line).
    Acquire {
        /// The holding session.
        session: SessionId,
        /// The lock.
        resource: String,
    },
    /// Releases the lock `resource` if `session` holds it with `token`.
    Release {
        /// The holding session.
        session: SessionId,
        /// The lock.
        resource: String,
        /// The token of the grant being released.
        token: u64,
    },
    /// Becomes the leader of `election` for `session` if it has none; if
    /// it has one, only says who ([`Op::Enqueue`] waits in line).
    Campaign {
        /// The campaigning session.
        session: SessionId,
        /// The election.
        election: String,
    },
    /// Steps down from `election` if `session` leads it in `term`.
    Resign {
        /// The leading session.
        session: SessionId,
        /// The election.
        election: String,
        /// The term being given up.
        term: u64,
    },
    /// Registers `name` for `session` if it is free, standing for the
    /// service of the same name (as [`Op::RegisterService`] with `service`
    /// equal to `name`).
    Register {
        /// The owning session.
        session: SessionId,
        /// The name.
        name: String,
    },
    /// Unregisters `name` if `session` owns it.
    Unregister {
        /// The owning session.
        session: SessionId,
        /// The name.
        name: String,
    },
    /// Takes the lock or leadership `key` for `session` if it is free, or
    /// else puts the session at the end of the key's queue of waiters
    /// ([`Reply::Queued`]); asking again while queued keeps its place. A
    /// name cannot be waited for ([`Reply::Invalid`]).
    Enqueue {
        /// The asking session.
        session: SessionId,
        /// The lock or election.
        key: Key,
    },
    /// `session` no longer waits for `key`: it leaves the queue
    /// ([`Reply::Dequeued`]). If the key was granted to it meanwhile, the
    /// grant stays and is returned ([`Reply::Granted`]), so that the
    /// asker, who did not know of it, uses it or releases it by its token;
    /// the machine never drops a grant its holder has not seen named.
    Dequeue {
        /// The waiting session.
        session: SessionId,
        /// The lock or election.
        key: Key,
    },
    /// Gives up `key` if `session` holds it with `token` (granting it to
    /// the first waiter), then puts the session back at the end of the
    /// queue, as [`Op::Enqueue`] would, in one entry: for a node whose
    /// next task waits for the key. The reply is the enqueue's (a grant
    /// again, with this entry's index, if no one else waited), or
    /// [`Reply::NotHeld`] if nothing was given up.
    Requeue {
        /// The holding session.
        session: SessionId,
        /// The lock or election.
        key: Key,
        /// The token or term of the grant being given up.
        token: u64,
    },
    /// Registers `name` for `session` if it is free, standing for
    /// `service` on the session's node. The owner registering it again
    /// keeps it and points it at `service` now. A `service` empty or
    /// longer than [`MAX_KEY`] bytes is refused ([`Reply::InvalidService`]).
    RegisterService {
        /// The owning session.
        session: SessionId,
        /// The name.
        name: String,
        /// The service the name stands for.
        service: String,
    },
}

/// One entry of the log's application data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Command {
    /// A client's operation; `from` is the node that asked, as its
    /// certificate names it (the leader fills it in, never the client).
    Client {
        /// The asking node.
        from: NodeName,
        /// What it asks.
        op: Op,
    },
    /// The leader saw `session` last renewed by the entry at `renewed`
    /// and not since, for longer than its TTL.
    Expire {
        /// The session.
        session: SessionId,
        /// The index of the last renewal the leader saw.
        renewed: u64,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum Reply {
    /// A membership or blank entry: nothing for the application.
    Nothing,
    /// The session was opened.
    Opened {
        /// Its id.
        session: SessionId,
    },
    /// The lease was renewed.
    Renewed,
    /// The session was closed or expired; it held this many grants.
    Ended {
        /// Locks, leaderships and names released.
        released: usize,
    },
    /// The expiry lost to a renewal applied after the one it names.
    StillAlive,
    /// The lock or leadership is this session's, with this token or term
    /// (the index of the granting entry; asking again returns the same).
    Granted {
        /// The fencing token or term.
        token: u64,
    },
    /// Another session holds the lock or leads the election.
    Held {
        /// The holder's node.
        owner: NodeName,
        /// The holder's token or term.
        token: u64,
    },
    /// The lock, leadership or name was given up.
    Released,
    /// The session does not hold that lock or leadership with that token,
    /// or does not own that name.
    NotHeld,
    /// The name is this session's now (or was already).
    Registered,
    /// Another session owns the name.
    Taken {
        /// The owner's node.
        owner: NodeName,
    },
    /// No such session: it expired, was closed, or never existed.
    NoSession,
    /// The session belongs to another node.
    NotOwner,
    /// A key was empty or longer than [`MAX_KEY`] bytes, or a TTL out of
    /// [`TTL_RANGE_MS`].
    Invalid,
    /// A bound was reached: [`MAX_SESSIONS`], [`MAX_SESSIONS_PER_NODE`]
    /// or [`MAX_HELD_PER_SESSION`].
    Limit,
    /// Another session holds the lock or leadership; this one waits in its
    /// queue and is granted it, in the entry that removes the grants ahead
    /// of it, with a token larger than `token`.
    Queued {
        /// The holder's node.
        owner: NodeName,
        /// The holder's token or term.
        token: u64,
    },
    /// The session left the key's queue without being granted it.
    Dequeued,
    /// The key's queue has [`MAX_WAITERS_PER_KEY`] waiters already: the
    /// session is not queued; it may ask again once the holder changes.
    QueueFull {
        /// The holder's node.
        owner: NodeName,
        /// The holder's token or term.
        token: u64,
    },
    /// The service of an [`Op::RegisterService`] was empty or longer than
    /// [`MAX_KEY`] bytes: nothing was registered.
    InvalidService,
}

/// A lease.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// The node that opened it.
    pub owner: NodeName,
    /// The lease, in milliseconds.
    pub ttl_ms: u64,
    /// The index of the entry that last opened or renewed it.
    pub renewed: u64,
    /// What it holds.
    pub held: BTreeSet<Key>,
    /// The keys in whose queues it waits.
    pub waiting: BTreeSet<Key>,
}

/// Something a session can hold.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Key {
    /// A lock.
    Lock(String),
    /// The leadership of an election.
    Leader(String),
    /// A registered name.
    Name(String),
}

/// Who holds a lock, leadership or name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    /// The holding session.
    pub session: SessionId,
    /// Its node.
    pub owner: NodeName,
    /// The index of the granting entry: the fencing token or term.
    pub token: u64,
}

/// The whole replicated state. Snapshots encode it with a format version
/// ([`Machine::to_snapshot`], [`Machine::from_snapshot`]).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Machine {
    sessions: BTreeMap<SessionId, Session>,
    grants: BTreeMap<Key, Grant>,
    /// The sessions waiting for each held key, first in line first.
    queues: BTreeMap<Key, VecDeque<SessionId>>,
    /// The service each registered name stands for: one entry for every
    /// [`Key::Name`] in `grants`.
    services: BTreeMap<String, String>,
}

impl Machine {
    /// Applies `command`, carried by the log entry at `index`.
    pub fn apply(&mut self, index: u64, command: &Command) -> Reply {
        match command {
            Command::Expire { session, renewed } => self.expire(index, *session, *renewed),
            Command::Client { from, op } => self.client(index, from, op),
        }
    }

    /// The open sessions.
    pub fn sessions(&self) -> &BTreeMap<SessionId, Session> {
        &self.sessions
    }

    /// Who holds `key`, if anyone.
    pub fn holder(&self, key: &Key) -> Option<&Grant> {
        self.grants.get(key)
    }

    /// Who registered `name`, and the service it stands for.
    pub fn name<'a>(&'a self, name: &'a str) -> Option<(&'a Grant, &'a str)> {
        let grant = self.grants.get(&Key::Name(name.to_owned()))?;
        let service = self.services.get(name).map_or(name, String::as_str);
        Some((grant, service))
    }

    /// The sessions waiting for `key`, first in line first.
    pub fn waiters(&self, key: &Key) -> impl Iterator<Item = SessionId> + '_ {
        self.queues.get(key).into_iter().flatten().copied()
    }

    fn client(&mut self, index: u64, from: &NodeName, op: &Op) -> Reply {
        let session = match op {
            Op::OpenSession { ttl_ms } => return self.open(index, from, *ttl_ms),
            Op::KeepAlive { session }
            | Op::CloseSession { session }
            | Op::Acquire { session, .. }
            | Op::Release { session, .. }
            | Op::Campaign { session, .. }
            | Op::Resign { session, .. }
            | Op::Register { session, .. }
            | Op::RegisterService { session, .. }
            | Op::Unregister { session, .. }
            | Op::Enqueue { session, .. }
            | Op::Dequeue { session, .. }
            | Op::Requeue { session, .. } => *session,
        };
        match self.sessions.get(&session) {
            None => return Reply::NoSession,
            Some(s) if s.owner != *from => return Reply::NotOwner,
            Some(_) => {}
        }
        match op {
            Op::OpenSession { .. } => Reply::Invalid,
            Op::KeepAlive { .. } => {
                if let Some(s) = self.sessions.get_mut(&session) {
                    s.renewed = index;
                }
                Reply::Renewed
            }
            Op::CloseSession { .. } => self.end(index, session),
            Op::Acquire { resource, .. } => self.take(index, session, Key::Lock(resource.clone())),
            Op::Campaign { election, .. } => {
                self.take(index, session, Key::Leader(election.clone()))
            }
            Op::Release {
                resource, token, ..
            } => self.give_up(index, session, Key::Lock(resource.clone()), Some(*token)),
            Op::Resign { election, term, .. } => {
                self.give_up(index, session, Key::Leader(election.clone()), Some(*term))
            }
            Op::Register { name, .. } => self.register(index, session, name, name),
            Op::RegisterService { name, service, .. } => {
                self.register(index, session, name, service)
            }
            Op::Unregister { name, .. } => {
                self.give_up(index, session, Key::Name(name.clone()), None)
            }
            Op::Enqueue { key, .. } => self.enqueue(index, session, key),
            Op::Dequeue { key, .. } => self.dequeue(session, key),
            Op::Requeue { key, token, .. } => {
                if matches!(key, Key::Name(_)) {
                    return Reply::Invalid;
                }
                match self.give_up(index, session, key.clone(), Some(*token)) {
                    Reply::Released => self.enqueue(index, session, key),
                    other => other,
                }
            }
        }
    }

    fn register(&mut self, index: u64, session: SessionId, name: &str, service: &str) -> Reply {
        // The name first: a bad one is `Invalid`, as before services.
        if name.is_empty() || name.len() > MAX_KEY {
            return Reply::Invalid;
        }
        if service.is_empty() || service.len() > MAX_KEY {
            return Reply::InvalidService;
        }
        match self.take(index, session, Key::Name(name.to_owned())) {
            Reply::Granted { .. } => {
                self.services.insert(name.to_owned(), service.to_owned());
                Reply::Registered
            }
            Reply::Held { owner, .. } => Reply::Taken { owner },
            other => other,
        }
    }

    /// Removes the grant of `key` (and a name's service), not touching the
    /// holder's session.
    fn remove_grant(&mut self, key: &Key) {
        self.grants.remove(key);
        if let Key::Name(name) = key {
            self.services.remove(name);
        }
    }

    fn open(&mut self, index: u64, from: &NodeName, ttl_ms: u64) -> Reply {
        if !(TTL_RANGE_MS.0..=TTL_RANGE_MS.1).contains(&ttl_ms) {
            return Reply::Invalid;
        }
        let mine = self.sessions.values().filter(|s| s.owner == *from).count();
        if self.sessions.len() >= MAX_SESSIONS || mine >= MAX_SESSIONS_PER_NODE {
            return Reply::Limit;
        }
        self.sessions.insert(
            index,
            Session {
                owner: from.clone(),
                ttl_ms,
                renewed: index,
                held: BTreeSet::new(),
                waiting: BTreeSet::new(),
            },
        );
        Reply::Opened { session: index }
    }

    fn expire(&mut self, index: u64, session: SessionId, renewed: u64) -> Reply {
        match self.sessions.get(&session) {
            None => Reply::NoSession,
            Some(s) if s.renewed != renewed => Reply::StillAlive,
            Some(_) => self.end(index, session),
        }
    }

    /// Ends `session` in the entry at `index`: it leaves every queue, and
    /// each key it held goes to that key's next waiter.
    fn end(&mut self, index: u64, session: SessionId) -> Reply {
        let Some(s) = self.sessions.remove(&session) else {
            return Reply::NoSession;
        };
        for key in &s.waiting {
            self.leave_queue(key, session);
        }
        let released = s.held.len();
        for key in s.held {
            self.remove_grant(&key);
            self.grant_next(index, &key);
        }
        Reply::Ended { released }
    }

    fn take(&mut self, index: u64, session: SessionId, key: Key) -> Reply {
        let (Key::Lock(k) | Key::Leader(k) | Key::Name(k)) = &key;
        if k.is_empty() || k.len() > MAX_KEY {
            return Reply::Invalid;
        }
        if let Some(g) = self.grants.get(&key) {
            return if g.session == session {
                Reply::Granted { token: g.token }
            } else {
                Reply::Held {
                    owner: g.owner.clone(),
                    token: g.token,
                }
            };
        }
        let Some(s) = self.sessions.get_mut(&session) else {
            return Reply::NoSession;
        };
        if s.held.len() + s.waiting.len() >= MAX_HELD_PER_SESSION {
            return Reply::Limit;
        }
        s.held.insert(key.clone());
        let grant = Grant {
            session,
            owner: s.owner.clone(),
            token: index,
        };
        self.grants.insert(key, grant);
        Reply::Granted { token: index }
    }

    fn give_up(&mut self, index: u64, session: SessionId, key: Key, token: Option<u64>) -> Reply {
        match self.grants.get(&key) {
            Some(g) if g.session == session && token.is_none_or(|t| t == g.token) => {}
            _ => return Reply::NotHeld,
        }
        self.remove_grant(&key);
        if let Some(s) = self.sessions.get_mut(&session) {
            s.held.remove(&key);
        }
        self.grant_next(index, &key);
        Reply::Released
    }

    fn enqueue(&mut self, index: u64, session: SessionId, key: &Key) -> Reply {
        if matches!(key, Key::Name(_)) {
            return Reply::Invalid;
        }
        let (owner, token) = match self.grants.get(key) {
            None => return self.take(index, session, key.clone()),
            Some(g) if g.session == session => return Reply::Granted { token: g.token },
            Some(g) => (g.owner.clone(), g.token),
        };
        let Some(s) = self.sessions.get_mut(&session) else {
            return Reply::NoSession;
        };
        if s.waiting.contains(key) {
            return Reply::Queued { owner, token };
        }
        if s.held.len() + s.waiting.len() >= MAX_HELD_PER_SESSION {
            return Reply::Limit;
        }
        let queue = self.queues.entry(key.clone()).or_default();
        if queue.len() >= MAX_WAITERS_PER_KEY {
            return Reply::QueueFull { owner, token };
        }
        queue.push_back(session);
        s.waiting.insert(key.clone());
        Reply::Queued { owner, token }
    }

    fn dequeue(&mut self, session: SessionId, key: &Key) -> Reply {
        if let Some(g) = self.grants.get(key).filter(|g| g.session == session) {
            return Reply::Granted { token: g.token };
        }
        let waited = self
            .sessions
            .get_mut(&session)
            .is_some_and(|s| s.waiting.remove(key));
        if !waited {
            return Reply::NotHeld;
        }
        self.leave_queue(key, session);
        Reply::Dequeued
    }

    /// Removes `session` from `key`'s queue (not from its `waiting`).
    fn leave_queue(&mut self, key: &Key, session: SessionId) {
        if let Some(queue) = self.queues.get_mut(key) {
            queue.retain(|s| *s != session);
            if queue.is_empty() {
                self.queues.remove(key);
            }
        }
    }

    /// Grants the free `key` to its first waiter, in the entry at `index`.
    fn grant_next(&mut self, index: u64, key: &Key) {
        let Some(queue) = self.queues.get_mut(key) else {
            return;
        };
        // Every queued session is open (an ending session leaves its
        // queues first); one that is not would be skipped.
        let mut next = None;
        while let Some(session) = queue.pop_front() {
            if self.sessions.contains_key(&session) {
                next = Some(session);
                break;
            }
        }
        if queue.is_empty() {
            self.queues.remove(key);
        }
        let Some((session, s)) = next.and_then(|id| Some((id, self.sessions.get_mut(&id)?))) else {
            return;
        };
        s.waiting.remove(key);
        s.held.insert(key.clone());
        let grant = Grant {
            session,
            owner: s.owner.clone(),
            token: index,
        };
        self.grants.insert(key.clone(), grant);
    }
}

mod snapshot;
pub use snapshot::{SNAPSHOT_MAGIC, SNAPSHOT_VERSION, SnapshotError};

#[cfg(test)]
mod tests;
