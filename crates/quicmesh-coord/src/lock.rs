//! Cluster locks (`:global.set_lock`/`trans`) with fencing tokens.
//!
//! Every node keeps a lock table: a resource is free or held by one
//! requester. To lock a resource on a set of nodes, the requester asks the
//! lowest-named node of the set first and then the others at once; each
//! grants it (the resource is free, or already this requester's) with its
//! clock reading, or refuses. All granted: the requester's clock moves
//! past every reading, and its reading then, with its node name, is the
//! token ([`Token`]), which it tells every node of the set. As every node
//! moves its clock past each token it hears of, a later grant anywhere
//! in the set has a larger token, and so does a grant after a restart of
//! the whole cluster (the clocks count wall-clock time). One refused: the
//! requester releases what it got, waits a random, growing while, and
//! tries again. As everyone asks the same first node first, contention is
//! settled there, and the random wait ends the rest: no deadlock (nobody
//! waits while holding) and no livelock.
//!
//! A lock is released when its guard is dropped (so when the task holding
//! it ends, or panics), and by every node when the holder's node goes down.
//! On each side of a partition a lock may be granted; when two nodes meet,
//! each tells the other the locks it holds, the grant with the larger
//! token keeps the resource on every node, and the guard whose grant lost
//! reports it ([`LockGuard::lost`]). A free resource leaves nothing behind
//! in a table: the clock, one number per node, is the fence of all.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use quicmesh_rpc::{CallContext, RpcError};
use quicmesh_wire::NodeName;
use quicmesh_wire::coord::{
    Hlc, LockAcquire, LockAnswer, LockConfirm, LockHeld, LockRelease, LockRequester, service,
};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::token::Token;
use crate::{Coord, locked};

mod table;

pub(crate) use table::{MAX_PER_NODE, Met, Table};

/// Shortest and longest wait between attempts on a contended lock.
const BACKOFF_MIN: Duration = Duration::from_millis(1);
const BACKOFF_MAX: Duration = Duration::from_millis(100);

/// Longest resource name, in bytes.
pub(crate) const MAX_RESOURCE: usize = 1024;

/// How to take a lock.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct LockOptions {
    /// The nodes to lock on (this node is always one). Default: every
    /// connected node, taken anew at each attempt.
    pub nodes: Option<Vec<NodeName>>,
    /// How many times to try again after the first attempt is refused.
    /// Default: no limit (until the timeout).
    pub retries: Option<u32>,
    /// Give up after this long. Default 30 s.
    pub timeout: Duration,
}

impl Default for LockOptions {
    fn default() -> Self {
        Self {
            nodes: None,
            retries: None,
            timeout: Duration::from_secs(30),
        }
    }
}

impl LockOptions {
    /// Locks on these nodes (and this one) only.
    pub fn nodes(mut self, nodes: Vec<NodeName>) -> Self {
        self.nodes = Some(nodes);
        self
    }

    /// Tries again at most `retries` times after the first refusal.
    pub fn retries(mut self, retries: u32) -> Self {
        self.retries = Some(retries);
        self
    }

    /// Gives up after `timeout`.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }
}

/// A lock as one node's lock table holds it ([`Coord::locks`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct HeldLock {
    /// The resource. Elections hold `quicmesh.election/NAME`.
    pub resource: String,
    /// The node holding it.
    pub holder: NodeName,
    /// The holder's incarnation when it asked.
    pub incarnation: u64,
    /// The token the holder confirmed; `None` while its attempt is still
    /// collecting grants.
    pub token: Option<Token>,
}

/// Why a lock (or a leadership, or a name's lock) was not taken, in
/// either coordination mode. The variants after `ShuttingDown` come only
/// from consensus mode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// Others held it for as long as the options allowed.
    #[error("lock {resource:?} not taken within {waited:?} ({attempts} attempts): held elsewhere")]
    Timeout {
        /// The resource.
        resource: String,
        /// How long this node tried.
        waited: Duration,
        /// How many attempts it made (consensus mode: 1, the session waits
        /// in the lock's queue).
        attempts: u32,
        /// The holder at the last look, when known (consensus mode; it may
        /// be this node, when another of its tasks holds the lock).
        holder: Option<NodeName>,
    },
    /// The resource name is empty or longer than 1024 bytes.
    #[error("bad lock resource name {0:?}: 1 to 1024 bytes")]
    BadResource(String),
    /// This node holds as many locks as a node may (65,536): release some.
    #[error("this node holds {limit} locks, the most a node may hold")]
    TooMany {
        /// Locks per node.
        limit: usize,
    },
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// Consensus mode: no Raft leader with a quorum committed the request
    /// within the timeout. This node may be on the minority side of a
    /// partition, or most voters are down; the minority side never grants.
    /// As with any timeout, a request may still be committed later (a
    /// grant that arrives after this error is given back).
    #[error("lock {resource:?}: no quorum committed the request within {waited:?}")]
    NoQuorum {
        /// The resource.
        resource: String,
        /// How long this node waited.
        waited: Duration,
    },
    /// Consensus mode: this node's session ran out (cut off or paused for
    /// longer than its TTL) or was closed while the request waited; what
    /// the session held is released. The next request opens a new one.
    #[error("lock {resource:?}: the session expired")]
    SessionExpired {
        /// The resource.
        resource: String,
    },
    /// An option that means something only in global mode (`nodes`: the
    /// Raft group, not a set of nodes, grants a consensus-mode lock).
    #[error("the lock option {option:?} means something only in global mode")]
    GlobalOnly {
        /// The option.
        option: &'static str,
    },
    /// Consensus mode: the Raft group refused the request or its member on
    /// this node failed, for a reason none of the variants above names.
    #[error("lock {resource:?}: consensus: {detail}")]
    Consensus {
        /// The resource.
        resource: String,
        /// What the group or its member said.
        detail: String,
    },
}

/// A cluster lock held: released when dropped. Hold it in the task that
/// works under the lock, and pass [`LockGuard::token`] to whatever the
/// lock protects, so it can refuse a holder whose lock was given away
/// meanwhile (its node was cut off or paused and declared down).
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    coord: Arc<Coord>,
    resource: String,
    requester: LockRequester,
    nodes: Vec<NodeName>,
    /// Taken on every connected node: nodes that came up since were told
    /// of it and must hear of its release too.
    follows: bool,
    token: Token,
    lost: watch::Receiver<bool>,
    released: bool,
}

impl LockGuard {
    /// The fencing token: larger than that of every earlier grant of this
    /// resource, and unique in the cluster (see [`Token`]).
    pub fn token(&self) -> Token {
        self.token
    }

    /// Whether this node learnt that the lock was given to another holder
    /// with a larger token (granted while this node was cut off or paused,
    /// and told when they met again). The guard still releases nothing
    /// of the other holder's when dropped.
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Waits until the lock is lost (see [`LockGuard::is_lost`]); pending
    /// for as long as it is held.
    pub async fn lost(&self) {
        let mut lost = self.lost.clone();
        // An error means the guard's entry went, which it does not while
        // the guard lives: then this waits forever, as a held lock should.
        if lost.wait_for(|lost| *lost).await.is_err() {
            std::future::pending::<()>().await;
        }
    }

    /// The resource locked.
    pub fn resource(&self) -> &str {
        &self.resource
    }

    /// The nodes it is locked on, this one included.
    pub fn nodes(&self) -> &[NodeName] {
        &self.nodes
    }

    /// Releases the lock and waits until every node of its set has
    /// released it (or could not be reached).
    pub async fn release(mut self) {
        self.released = true;
        locked(&self.coord.held).remove(&self.requester.id);
        let nodes = self.release_set();
        release_on(&self.coord, &self.resource, &self.requester, &nodes).await;
    }

    fn release_set(&self) -> Vec<NodeName> {
        release_set(&self.coord, &self.nodes, self.follows)
    }
}

/// The nodes to release a lock on: its set, and for a lock taken on every
/// node, the nodes connected now (a node that came up since may hold it
/// for this one: it was told when they met).
fn release_set(coord: &Coord, nodes: &[NodeName], follows: bool) -> Vec<NodeName> {
    let mut nodes = nodes.to_vec();
    if follows {
        nodes.extend(coord.peers());
        nodes.sort();
        nodes.dedup();
    }
    nodes
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (coord, nodes, requester) = (
            self.coord.clone(),
            self.release_set(),
            self.requester.clone(),
        );
        let resource = std::mem::take(&mut self.resource);
        // The local table at once; the other nodes as soon as possible.
        locked(&coord.held).remove(&requester.id);
        locked(&coord.locks).release(&resource, &requester);
        // A task of the node's, so shutdown waits for it (outside a
        // runtime the nodes release it when this node goes down).
        if tokio::runtime::Handle::try_current().is_ok() {
            let tasks = coord.mesh().tasks().clone();
            tasks.spawn(async move { release_on(&coord, &resource, &requester, &nodes).await });
        }
    }
}

/// Takes `resource` on the nodes `options` names (see the module docs).
pub(crate) async fn acquire(
    coord: &Arc<Coord>,
    resource: &str,
    options: &LockOptions,
) -> Result<LockGuard, LockError> {
    if resource.is_empty() || resource.len() > MAX_RESOURCE {
        return Err(LockError::BadResource(resource.to_owned()));
    }
    let requester = LockRequester {
        node: coord.me().clone(),
        incarnation: coord.mesh().incarnation(),
        id: locked(&coord.locks).next_id(),
    };
    let started = Instant::now();
    // A timeout too large to add means no timeout (about 30 years).
    let deadline = started
        .checked_add(options.timeout)
        .unwrap_or_else(|| started + Duration::from_secs(30 * 365 * 86_400));
    let mut attempts = 0u32;
    loop {
        if coord.mesh().is_shutdown() {
            return Err(LockError::ShuttingDown);
        }
        let nodes = node_set(coord, options);
        attempts += 1;
        let follows = options.nodes.is_none();
        match attempt(coord, resource, &requester, &nodes, follows, deadline).await {
            Attempt::Held(token, lost) => {
                if follows {
                    tell_late_peers(coord, resource, &requester, &nodes, token);
                }
                return Ok(LockGuard {
                    coord: coord.clone(),
                    resource: resource.to_owned(),
                    requester,
                    nodes,
                    follows,
                    token,
                    lost,
                    released: false,
                });
            }
            Attempt::TooMany => {
                return Err(LockError::TooMany {
                    limit: MAX_PER_NODE,
                });
            }
            Attempt::Refused => {}
        }
        let exhausted = options.retries.is_some_and(|r| attempts > r);
        let wait = backoff(attempts);
        if exhausted || Instant::now() + wait >= deadline {
            return Err(LockError::Timeout {
                resource: resource.to_owned(),
                waited: started.elapsed(),
                attempts,
                holder: None,
            });
        }
        tokio::time::sleep(wait).await;
    }
}

/// Nodes that came up while a lock on every connected node was being
/// taken were not asked: they are told of it as nodes meeting are (and
/// answer if they hold it themselves).
fn tell_late_peers(
    coord: &Arc<Coord>,
    resource: &str,
    requester: &LockRequester,
    nodes: &[NodeName],
    token: Token,
) {
    let late: Vec<NodeName> = coord
        .peers()
        .into_iter()
        .filter(|p| !nodes.contains(p))
        .collect();
    if late.is_empty() {
        return;
    }
    let held = vec![LockHeld {
        resource: resource.to_owned(),
        requester: requester.clone(),
        token: token.get(),
    }];
    let c = coord.clone();
    coord.mesh().tasks().spawn(async move {
        for peer in late {
            sync_to(&c, &peer, &held).await;
        }
    });
}

/// The nodes to lock on: the given ones or all connected, plus this one,
/// sorted (the first is asked first).
fn node_set(coord: &Coord, options: &LockOptions) -> Vec<NodeName> {
    let mut nodes = options.nodes.clone().unwrap_or_else(|| coord.peers());
    nodes.push(coord.me().clone());
    nodes.sort();
    nodes.dedup();
    nodes
}

/// A random wait that grows with the attempts.
fn backoff(attempt: u32) -> Duration {
    let cap = BACKOFF_MIN
        .saturating_mul(1 << attempt.min(16))
        .min(BACKOFF_MAX);
    cap.mul_f64(0.5 + fastrand::f64() / 2.0)
}

/// A guard of this node's, as the coordination state keeps it: to tell
/// the nodes it meets, and to tell the guard when it lost.
#[derive(Debug)]
pub(crate) struct Live {
    resource: String,
    requester: LockRequester,
    token: Token,
    /// Locked on every connected node (not on a set given): told to the
    /// nodes it meets.
    follows: bool,
    lost: watch::Sender<bool>,
}

/// This node's guards, by request number.
pub(crate) type Held = HashMap<u64, Live>;

/// An attempt in progress: released everywhere it may have been granted
/// if dropped while armed.
struct Pending<'a> {
    coord: &'a Arc<Coord>,
    resource: &'a str,
    requester: &'a LockRequester,
    nodes: &'a [NodeName],
    follows: bool,
    armed: bool,
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        let coord = self.coord.clone();
        locked(&coord.held).remove(&self.requester.id);
        locked(&coord.locks).release(self.resource, self.requester);
        if tokio::runtime::Handle::try_current().is_ok() {
            let (resource, requester, nodes) = (
                self.resource.to_owned(),
                self.requester.clone(),
                release_set(&coord, self.nodes, self.follows),
            );
            let tasks = coord.mesh().tasks().clone();
            tasks.spawn(async move { release_on(&coord, &resource, &requester, &nodes).await });
        }
    }
}

enum Attempt {
    Held(Token, watch::Receiver<bool>),
    Refused,
    TooMany,
}

/// One attempt: the token when every node granted, or why not (and then
/// nothing held).
async fn attempt(
    coord: &Arc<Coord>,
    resource: &str,
    requester: &LockRequester,
    nodes: &[NodeName],
    follows: bool,
    deadline: Instant,
) -> Attempt {
    let Some((first, rest)) = nodes.split_first() else {
        return Attempt::Refused;
    };
    // If this future is dropped half way (a timeout or `select!` around
    // `lock`, a campaign given up), what it was granted is released.
    let mut pending = Pending {
        coord,
        resource,
        requester,
        nodes,
        follows,
        armed: true,
    };
    let first_answer = ask(coord, first, resource, requester, deadline).await;
    let mut refused = None;
    match first_answer {
        Some(LockAnswer::Granted(_)) => {}
        Some(LockAnswer::TooMany) => refused = Some(Attempt::TooMany),
        _ => refused = Some(Attempt::Refused),
    }
    if refused.is_none() {
        let mut asks = JoinSet::new();
        for node in rest {
            let (coord, node, resource, requester) = (
                coord.clone(),
                node.clone(),
                resource.to_owned(),
                requester.clone(),
            );
            asks.spawn(async move { ask(&coord, &node, &resource, &requester, deadline).await });
        }
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok(Some(LockAnswer::Granted(_))) => {}
                Ok(Some(LockAnswer::TooMany)) => refused = Some(Attempt::TooMany),
                _ => refused = refused.or(Some(Attempt::Refused)),
            }
        }
    }
    if let Some(refused) = refused {
        // LockRelease everywhere asked (a late grant may still land).
        release_on(coord, resource, requester, nodes).await;
        pending.armed = false;
        return refused;
    }
    // The clock is past every granting node's now (`ask` took them in).
    let token = Token::new(coord.clock.now(), coord.me());
    let (lost_tx, lost) = watch::channel(false);
    locked(&coord.held).insert(
        requester.id,
        Live {
            resource: resource.to_owned(),
            requester: requester.clone(),
            token,
            follows,
            lost: lost_tx,
        },
    );
    let confirmed = confirm_on(coord, resource, requester, nodes, token).await;
    if !confirmed || *lost.borrow() {
        // Another holder's grant took it somewhere while this one was
        // being confirmed (two nodes met meanwhile), or a node refused the
        // token: try again.
        locked(&coord.held).remove(&requester.id);
        let nodes = release_set(coord, nodes, follows);
        release_on(coord, resource, requester, &nodes).await;
        pending.armed = false;
        return Attempt::Refused;
    }
    pending.armed = false;
    Attempt::Held(token, lost)
}

/// Asks one node for the lock; `None` if it could not answer in time.
async fn ask(
    coord: &Arc<Coord>,
    node: &NodeName,
    resource: &str,
    requester: &LockRequester,
    deadline: Instant,
) -> Option<LockAnswer> {
    if *node == *coord.me() {
        let now = coord.clock.now().packed();
        return Some(locked(&coord.locks).acquire(resource, requester, now));
    }
    let timeout = deadline
        .saturating_duration_since(Instant::now())
        .min(coord.message_timeout());
    let request = LockAcquire {
        resource: resource.to_owned(),
        requester: requester.clone(),
    };
    match coord
        .call(node, service::LOCK_ACQUIRE, &request, timeout)
        .await
    {
        Ok(LockAnswer::Granted(clock)) => {
            if let Err(ahead) = coord.take_in(Hlc::unpacked(clock)) {
                warn!(peer = %node, resource, "a lock grant's clock is {:?} ahead of this node's, more than the {:?} allowed: taken as refused; check the clocks", ahead.by, crate::clock::MAX_DRIFT);
                return None;
            }
            Some(LockAnswer::Granted(clock))
        }
        Ok(answer) => Some(answer),
        Err(e) => {
            debug!(peer = %node, resource, "lock request failed: {e}");
            None
        }
    }
}

/// Tells every node of the set the token granted; `false` if a node
/// (this one included) no longer has the grant or refused the token (its
/// clock is too far from this node's). A node that does not answer in
/// time is logged, not counted: it releases the grant when it sees this
/// node go, or takes the token in when the two meet.
async fn confirm_on(
    coord: &Arc<Coord>,
    resource: &str,
    requester: &LockRequester,
    nodes: &[NodeName],
    token: Token,
) -> bool {
    let request = LockConfirm {
        resource: resource.to_owned(),
        requester: requester.clone(),
        token: token.get(),
    };
    let mut confirmed = !nodes.contains(coord.me())
        || locked(&coord.locks).confirm(resource, requester, token.get());
    let others = others(coord, nodes);
    let answers: Vec<(&NodeName, Result<bool, RpcError>)> = coord
        .ask_each(&others, service::LOCK_CONFIRM, &request)
        .await;
    for (node, answer) in answers {
        match answer {
            Ok(true) => {}
            Ok(false) => {
                debug!(peer = %node, resource, "lock token {token} refused there");
                confirmed = false;
            }
            Err(e) => warn!(peer = %node, resource, "could not confirm lock token {token}: {e}"),
        }
    }
    confirmed
}

/// Releases the lock on every node of the set that still has it.
async fn release_on(
    coord: &Arc<Coord>,
    resource: &str,
    requester: &LockRequester,
    nodes: &[NodeName],
) {
    let request = LockRelease {
        resource: resource.to_owned(),
        requester: requester.clone(),
    };
    let results = on_each(coord, nodes, service::LOCK_RELEASE, &request, |t| {
        t.release(resource, requester);
    })
    .await;
    for (node, e) in results {
        debug!(peer = %node, resource, "could not release the lock there: {e}");
    }
}

/// Applies `local` to this node's table and calls `service` on the other
/// nodes at once; the failures.
async fn on_each<Req: Serialize>(
    coord: &Arc<Coord>,
    nodes: &[NodeName],
    service: &str,
    request: &Req,
    local: impl FnOnce(&mut Table),
) -> Vec<(NodeName, RpcError)> {
    if nodes.contains(coord.me()) {
        local(&mut locked(&coord.locks));
    }
    let others = others(coord, nodes);
    let answers: Vec<(&NodeName, Result<(), RpcError>)> =
        coord.ask_each(&others, service, request).await;
    answers
        .into_iter()
        .filter_map(|(node, r)| r.err().map(|e| (node.clone(), e)))
        .collect()
}

/// `nodes` but this one.
fn others(coord: &Coord, nodes: &[NodeName]) -> Vec<NodeName> {
    nodes.iter().filter(|n| *n != coord.me()).cloned().collect()
}

/// Every lock held in this node's table, sorted by resource.
pub(crate) fn table(coord: &Coord) -> Vec<HeldLock> {
    let mut held: Vec<HeldLock> = locked(&coord.locks)
        .grants()
        .map(|(resource, requester, token)| HeldLock {
            resource: resource.to_owned(),
            holder: requester.node.clone(),
            incarnation: requester.incarnation,
            token: token.map(Token::from_u128),
        })
        .collect();
    held.sort_by(|a, b| a.resource.cmp(&b.resource));
    held
}

/// The nodes holding locks here.
pub(crate) fn holders(coord: &Coord) -> Vec<NodeName> {
    locked(&coord.locks).holders()
}

/// The locks this node holds on every connected node, to tell a node it
/// meets.
pub(crate) fn held_here(coord: &Coord) -> Vec<LockHeld> {
    locked(&coord.held)
        .values()
        .filter(|live| live.follows && !*live.lost.borrow())
        .map(|live| LockHeld {
            resource: live.resource.clone(),
            requester: live.requester.clone(),
            token: live.token.get(),
        })
        .collect()
}

/// Whether `node` holds `resource` here with `token`.
pub(crate) fn holds(coord: &Coord, resource: &str, node: &NodeName, token: Token) -> bool {
    locked(&coord.locks)
        .holder(resource)
        .is_some_and(|(r, t)| r.node == *node && t == Some(token.get()))
}

/// Takes in the locks a peer it meets holds: the larger token keeps each
/// resource; a guard of this node's whose grant lost is told. Answers with
/// this node's own locks that kept a resource against the peer's, so the
/// peer learns its grant lost even if this node's own sync missed it.
fn met(coord: &Arc<Coord>, from: &NodeName, locks: Vec<LockHeld>) -> Vec<LockHeld> {
    let mut kept = Vec::new();
    for held in locks.into_iter().take(MAX_PER_NODE) {
        if held.requester.node != *from || held.resource.len() > MAX_RESOURCE {
            continue;
        }
        let token = Token::from_u128(held.token);
        if let Err(ahead) = coord.take_in(token.time()) {
            warn!(peer = %from, resource = held.resource, "a held lock's token is {:?} ahead of this node's clock, more than allowed: ignored; check the clocks", ahead.by);
            continue;
        }
        let mut table = locked(&coord.locks);
        let outcome = table.meet(&held.resource, &held.requester, held.token);
        match outcome {
            Met::Replaced { loser } if loser.node == *coord.me() => {
                drop(table);
                lose(coord, &loser, &held.requester.node, token);
            }
            Met::Kept => {
                if let Some((holder, Some(t))) = table.holder(&held.resource)
                    && holder.node == *coord.me()
                {
                    kept.push(LockHeld {
                        resource: held.resource.clone(),
                        requester: holder.clone(),
                        token: t,
                    });
                }
            }
            _ => {}
        }
    }
    kept
}

/// Tells `peer` the locks in `held` (this node's), and takes in its answer:
/// its own locks that kept a resource against one of these, whose guards
/// here lost.
pub(crate) async fn sync_to(coord: &Arc<Coord>, peer: &NodeName, held: &[LockHeld]) {
    let timeout = coord.message_timeout();
    let answer: Result<Vec<LockHeld>, RpcError> =
        coord.call(peer, service::LOCK_SYNC, &held, timeout).await;
    // A lock released while the peer was being told: its release may
    // have reached the peer before this message did, so the peer took it
    // in afterwards. It is released there again, now that the peer has
    // taken the message in (or could not be reached in time).
    let gone: Vec<&LockHeld> = {
        let live = locked(&coord.held);
        held.iter()
            .filter(|h| !live.contains_key(&h.requester.id))
            .collect()
    };
    for h in gone {
        release_on(coord, &h.resource, &h.requester, std::slice::from_ref(peer)).await;
    }
    let kept = match answer {
        Ok(kept) => kept,
        Err(e) => {
            warn!(peer = %peer, "could not tell it the locks this node holds: {e}");
            return;
        }
    };
    for theirs in kept.into_iter().take(held.len()) {
        // The peer speaks for its own locks only.
        if theirs.requester.node != *peer {
            continue;
        }
        let token = Token::from_u128(theirs.token);
        let ours = held
            .iter()
            .find(|h| h.resource == theirs.resource && h.token < theirs.token);
        if let Some(ours) = ours
            && coord.take_in(token.time()).is_ok()
        {
            locked(&coord.locks).meet(&theirs.resource, &theirs.requester, theirs.token);
            lose(coord, &ours.requester, peer, token);
        }
    }
}

/// This node's grant `requester` lost to `winner`'s with `token`: its
/// guard is told, and the other nodes of its set release it.
fn lose(coord: &Arc<Coord>, requester: &LockRequester, winner: &NodeName, token: Token) {
    let Some(live) = locked(&coord.held).remove(&requester.id) else {
        return;
    };
    warn!(resource = live.resource, token = %live.token, winner = %winner, winning_token = %token, "lost a lock: another node was granted it while the two were apart");
    crate::counters::count(&coord.counters.locks_lost);
    live.lost.send_replace(true);
    coord.lock_lost(&live.resource, live.token);
    let (coord, resource, requester) = (coord.clone(), live.resource, live.requester);
    let nodes = coord.peers();
    coord
        .mesh()
        .tasks()
        .clone()
        .spawn(async move { release_on(&coord, &resource, &requester, &nodes).await });
}

/// Releases every lock `node` held here (it went down).
pub(crate) fn node_down(coord: &Coord, node: &NodeName) {
    let freed = locked(&coord.locks).release_node(node);
    if freed > 0 {
        debug!(peer = %node, "released {freed} locks it held");
    }
}

pub(crate) fn serve(coord: &Arc<Coord>) {
    crate::serve(
        coord,
        service::LOCK_SYNC,
        |coord, ctx: &CallContext, locks: Vec<LockHeld>| met(coord, &ctx.from, locks),
    );
    crate::serve(
        coord,
        service::LOCK_ACQUIRE,
        |coord, ctx: &CallContext, req: LockAcquire| {
            if !from_requester(ctx, &req.requester) || req.resource.len() > MAX_RESOURCE {
                return LockAnswer::Held;
            }
            let now = coord.clock.now().packed();
            let answer = locked(&coord.locks).acquire(&req.resource, &req.requester, now);
            if answer == LockAnswer::TooMany {
                crate::counters::count(&coord.counters.locks_refused);
            }
            answer
        },
    );
    crate::serve(
        coord,
        service::LOCK_CONFIRM,
        |coord, ctx: &CallContext, req: LockConfirm| {
            let time = Token::from_u128(req.token).time();
            from_requester(ctx, &req.requester)
                && coord.take_in(time).is_ok()
                && locked(&coord.locks).confirm(&req.resource, &req.requester, req.token)
        },
    );
    crate::serve(
        coord,
        service::LOCK_RELEASE,
        |coord, ctx: &CallContext, req: LockRelease| {
            if from_requester(ctx, &req.requester) {
                locked(&coord.locks).release(&req.resource, &req.requester);
            }
        },
    );
}

/// A node may only lock, confirm and release for itself.
fn from_requester(ctx: &CallContext, requester: &LockRequester) -> bool {
    ctx.from == requester.node
}
