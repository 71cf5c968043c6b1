//! Leader elections, shaped like etcd's: candidates campaign, one leads at
//! a time, its term (the fencing token of the election's cluster lock)
//! grows with every new leader.
//!
//! Leading is holding the election's cluster lock on every connected node.
//! The new leader tells every node; a node takes a leader's announcement
//! only from the node its lock table shows holding the election's lock
//! with that term. A node that goes down takes its leadership with it
//! (every node releases its lock), and the campaigners left take the lock
//! within a few of their retries. After a partition heals, the two
//! leaders' locks meet: the larger term keeps the election everywhere, and
//! the other leader's [`Leadership::lost`] fires.

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quicmesh_rpc::CallContext;
use quicmesh_wire::NodeName;
use quicmesh_wire::coord::{Announce, service};
use serde::{Deserialize, Serialize};
use tokio::sync::broadcast;
use tracing::info;

use crate::lock::{LockError, LockGuard, LockOptions};
use crate::token::Token;
use crate::{Coord, locked};

/// The resource of an election's cluster lock.
fn resource(election: &str) -> String {
    format!("quicmesh.election/{election}")
}

/// How long a campaigner waits between attempts at a held lock, at most.
const CAMPAIGN_RETRY: Duration = Duration::from_millis(250);

/// Who leads an election, as one node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaderChange {
    /// The leader; `None` after it resigned or its node went down.
    pub leader: Option<NodeName>,
    /// The term of the leader, or of the last leader when there is none
    /// ([`Token::NONE`] before the first).
    pub term: Token,
}

pub(crate) struct State {
    /// Per election: who leads, as this node knows, and its changes.
    views: Mutex<HashMap<String, View>>,
    /// Per election: the term this node leads in, if it does.
    mine: Mutex<HashMap<String, Token>>,
    /// Changes of leader seen here, in every election (for the metrics).
    changes: Arc<AtomicU64>,
}

struct View {
    current: LeaderChange,
    changes: broadcast::Sender<LeaderChange>,
    counted: Arc<AtomicU64>,
}

impl View {
    fn new(counted: &Arc<AtomicU64>) -> Self {
        Self {
            current: LeaderChange {
                leader: None,
                term: Token::NONE,
            },
            changes: broadcast::channel(256).0,
            counted: counted.clone(),
        }
    }

    fn set(&mut self, change: LeaderChange) {
        if change != self.current {
            self.counted.fetch_add(1, Ordering::Relaxed);
            self.current = change.clone();
            let _ = self.changes.send(change);
        }
    }
}

impl State {
    pub(crate) fn new() -> Self {
        Self {
            views: Mutex::new(HashMap::new()),
            mine: Mutex::new(HashMap::new()),
            changes: Arc::default(),
        }
    }

    /// Changes of leader seen here since the node started.
    pub(crate) fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn with_view<T>(&self, election: &str, f: impl FnOnce(&mut View) -> T) -> T {
        let mut views = locked(&self.views);
        f(views
            .entry(election.to_owned())
            .or_insert_with(|| View::new(&self.changes)))
    }

    /// Takes in what `from` says of its leadership (checked against the
    /// lock table by the caller): newer terms win, and so does the term this
    /// node knows when it knows no leader; a leader's end counts only for
    /// its own term.
    fn announced(&self, from: &NodeName, a: &Announce) {
        let term = Token::from_u128(a.term);
        self.with_view(&a.election, |view| {
            let current = &view.current;
            // The same term again with no leader known: the leader this
            // node had declared down came back holding its lock.
            let back = term == current.term && current.leader.is_none();
            if a.leading && (term > current.term || back) {
                view.set(LeaderChange {
                    leader: Some(from.clone()),
                    term,
                });
            } else if !a.leading && term == current.term && current.leader.as_ref() == Some(from) {
                view.set(LeaderChange { leader: None, term });
            }
        });
    }
}

impl fmt::Debug for State {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("State").finish_non_exhaustive()
    }
}

/// An election (`quicmesh::Node::election`).
#[derive(Clone)]
pub struct Election {
    pub(crate) coord: Arc<Coord>,
    pub(crate) name: String,
}

impl fmt::Debug for Election {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Election")
            .field("node", self.coord.me())
            .field("name", &self.name)
            .finish()
    }
}

impl Election {
    /// Waits until this node leads (for as long as it takes), then tells
    /// every node. Dropping the future gives up.
    pub async fn campaign(&self) -> Result<Leadership, LockError> {
        let resource = resource(&self.name);
        loop {
            let options = LockOptions::default()
                .timeout(CAMPAIGN_RETRY * 4)
                .retries(8);
            match crate::lock::acquire(&self.coord, &resource, &options).await {
                Ok(guard) => {
                    let term = guard.token();
                    locked(&self.coord.elections.mine).insert(self.name.clone(), term);
                    info!(election = %self.name, %term, "leading");
                    self.announce(term, true).await;
                    return Ok(Leadership {
                        election: self.clone(),
                        guard: Some(guard),
                        term,
                    });
                }
                Err(LockError::Timeout { .. }) => {
                    tokio::time::sleep(CAMPAIGN_RETRY.mul_f64(fastrand::f64())).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Who leads, as this node knows.
    pub fn leader(&self) -> LeaderChange {
        self.coord
            .elections
            .with_view(&self.name, |v| v.current.clone())
    }

    /// Whether this node leads now.
    pub fn am_leader(&self) -> bool {
        locked(&self.coord.elections.mine).contains_key(&self.name)
    }

    /// Leader changes from now on, in the order this node learns them
    /// (terms only grow); [`Election::leader`] is the current one.
    pub fn observe(&self) -> broadcast::Receiver<LeaderChange> {
        self.coord
            .elections
            .with_view(&self.name, |v| v.changes.subscribe())
    }

    async fn announce(&self, term: Token, leading: bool) {
        let announce = Announce {
            election: self.name.clone(),
            term: term.get(),
            leading,
        };
        self.coord.elections.announced(self.coord.me(), &announce);
        let what = format!("announce the leadership of {} (term {term})", self.name);
        self.coord
            .tell(
                &self.coord.peers(),
                service::ELECTION_ANNOUNCE,
                &announce,
                &what,
            )
            .await;
    }
}

/// Leading an election: ends with [`Leadership::resign`] or when dropped
/// (then without waiting for the other nodes to hear it).
#[derive(Debug)]
#[must_use = "leadership ends when this is dropped"]
pub struct Leadership {
    election: Election,
    guard: Option<LockGuard>,
    term: Token,
}

impl Leadership {
    /// The term: the election lock's fencing token, larger for every new
    /// leader. Give it to whatever the leader writes to.
    pub fn term(&self) -> Token {
        self.term
    }

    /// Whether this node learnt that another node led with a larger term
    /// while the two were apart (a partition, or this node paused and
    /// declared down): then this node no longer leads, and every node
    /// follows the other leader.
    pub fn is_lost(&self) -> bool {
        self.guard.as_ref().is_some_and(LockGuard::is_lost)
    }

    /// Waits until the leadership is lost (see [`Leadership::is_lost`]).
    pub async fn lost(&self) {
        match &self.guard {
            Some(guard) => guard.lost().await,
            None => std::future::pending().await,
        }
    }

    /// Stops leading, tells every node, and frees the election for the
    /// next campaigner.
    pub async fn resign(mut self) {
        self.stop_leading();
        self.election.announce(self.term, false).await;
        if let Some(guard) = self.guard.take() {
            guard.release().await;
        }
    }

    fn stop_leading(&self) {
        let mut mine = locked(&self.election.coord.elections.mine);
        if mine.get(&self.election.name) == Some(&self.term) {
            mine.remove(&self.election.name);
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        if self.guard.is_none() {
            return;
        }
        self.stop_leading();
        let election = self.election.clone();
        let (term, guard) = (self.term, self.guard.take());
        // A task of the node's, so shutdown waits for it.
        if tokio::runtime::Handle::try_current().is_ok() {
            let tasks = election.coord.mesh().tasks().clone();
            tasks.spawn(async move {
                election.announce(term, false).await;
                drop(guard);
            });
        }
    }
}

/// Tells a node that comes up which elections this node leads.
pub(crate) fn node_up(coord: &Arc<Coord>, peer: &NodeName) {
    let mine: Vec<(String, Token)> = locked(&coord.elections.mine)
        .iter()
        .map(|(e, t)| (e.clone(), *t))
        .collect();
    for (election, term) in mine {
        let announce = Announce {
            election,
            term: term.get(),
            leading: true,
        };
        coord.send_in_background(
            peer,
            service::ELECTION_ANNOUNCE,
            announce,
            "tell it of a leadership",
        );
    }
}

/// Every election this node has heard of, sorted by name, with who leads
/// it as this node knows.
pub(crate) fn known(coord: &Coord) -> Vec<(String, LeaderChange)> {
    let mut known: Vec<(String, LeaderChange)> = locked(&coord.elections.views)
        .iter()
        .map(|(name, view)| (name.clone(), view.current.clone()))
        .collect();
    known.sort_by(|a, b| a.0.cmp(&b.0));
    known
}

/// A node that went down leads nothing any more.
pub(crate) fn node_down(coord: &Coord, node: &NodeName) {
    for view in locked(&coord.elections.views).values_mut() {
        if view.current.leader.as_ref() == Some(node) {
            let term = view.current.term;
            view.set(LeaderChange { leader: None, term });
        }
    }
}

/// This node's lock of an election (`resource`) lost to a larger term: it
/// no longer leads there.
pub(crate) fn lost(coord: &Coord, resource: &str, term: Token) {
    let Some(name) = resource.strip_prefix("quicmesh.election/") else {
        return;
    };
    let mut mine = locked(&coord.elections.mine);
    if mine.get(name) == Some(&term) {
        mine.remove(name);
        tracing::warn!(election = name, %term, "no longer leading: another node led with a larger term while the two were apart");
    }
}

pub(crate) fn serve(coord: &Arc<Coord>) {
    crate::serve(
        coord,
        service::ELECTION_ANNOUNCE,
        |coord, ctx: &CallContext, a: Announce| {
            if a.election.len() > 1024 {
                return;
            }
            // Only the holder of the election's lock leads it.
            let term = Token::from_u128(a.term);
            if a.leading && !crate::lock::holds(coord, &resource(&a.election), &ctx.from, term) {
                crate::counters::count(&coord.counters.announcements_refused);
                tracing::warn!(peer = %ctx.from, election = a.election, %term, "refused an announcement of leadership from a node that does not hold the election's lock with that term");
                return;
            }
            coord.elections.announced(&ctx.from, &a);
        },
    );
}
