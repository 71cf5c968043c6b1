//! Cluster locks (`:global.set_lock`/`trans`) with fencing tokens.
//!
//! Every node keeps a lock table: a resource is free or held by one
//! requester, and has a fence, a counter that only grows. To lock a
//! resource on a set of nodes, the requester asks the lowest-named node
//! of the set first and then the others at once; each grants it (the
//! resource is free, or already this requester's) with its fence plus one,
//! or refuses. All granted: the token is the largest fence granted, which
//! the requester then tells every node, so any later grant anywhere in the
//! set is larger. One refused: the requester releases what it got, waits a
//! random, growing while, and tries again. As everyone asks the same first
//! node first, contention is settled there, and the random wait ends the
//! rest: no deadlock (nobody waits while holding) and no livelock.
//!
//! A lock is released when its guard is dropped (so when the task holding
//! it ends, or panics), and by every node when the holder's node goes down.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use quicmesh_rpc::{CallContext, RpcError};
use quicmesh_wire::NodeName;
use quicmesh_wire::coord::{
    LockAcquire, LockAnswer, LockConfirm, LockRelease, LockRequester, service,
};
use serde::Serialize;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::{Coord, locked};

mod table;

pub(crate) use table::Table;

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

/// Why a lock was not taken.
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
        /// How many attempts it made.
        attempts: u32,
    },
    /// The resource name is empty or longer than 1024 bytes.
    #[error("bad lock resource name {0:?}: 1 to 1024 bytes")]
    BadResource(String),
    /// The node is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
}

/// A cluster lock held: released when dropped. Hold it in the task that
/// works under the lock, and pass [`LockGuard::token`] to whatever the
/// lock protects, so it can refuse a holder whose lock was given away
/// meanwhile (its node was cut off and declared down).
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard {
    coord: Arc<Coord>,
    resource: String,
    requester: LockRequester,
    nodes: Vec<NodeName>,
    token: u64,
    released: bool,
}

impl LockGuard {
    /// The fencing token: larger than that of every earlier grant of this
    /// resource on any node of the set still up.
    pub fn token(&self) -> u64 {
        self.token
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
        release_on(&self.coord, &self.resource, &self.requester, &self.nodes).await;
    }
}

impl Drop for LockGuard {
    fn drop(&mut self) {
        if self.released {
            return;
        }
        let (coord, resource, requester, nodes) = (
            self.coord.clone(),
            std::mem::take(&mut self.resource),
            self.requester.clone(),
            std::mem::take(&mut self.nodes),
        );
        // The local table at once; the other nodes as soon as possible.
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
        if let Some(token) = attempt(coord, resource, &requester, &nodes, deadline).await {
            return Ok(LockGuard {
                coord: coord.clone(),
                resource: resource.to_owned(),
                requester,
                nodes,
                token,
                released: false,
            });
        }
        let exhausted = options.retries.is_some_and(|r| attempts > r);
        let wait = backoff(attempts);
        if exhausted || Instant::now() + wait >= deadline {
            return Err(LockError::Timeout {
                resource: resource.to_owned(),
                waited: started.elapsed(),
                attempts,
            });
        }
        tokio::time::sleep(wait).await;
    }
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

/// One attempt: the token when every node granted, `None` (and nothing
/// held) otherwise.
async fn attempt(
    coord: &Arc<Coord>,
    resource: &str,
    requester: &LockRequester,
    nodes: &[NodeName],
    deadline: Instant,
) -> Option<u64> {
    let (first, rest) = nodes.split_first()?;
    let first_answer = ask(coord, first, resource, requester, deadline).await;
    let mut granted = Vec::with_capacity(nodes.len());
    let mut refused = false;
    match first_answer {
        Some(LockAnswer::Granted(fence)) => granted.push((first.clone(), fence)),
        _ => refused = true,
    }
    if !refused {
        let mut asks = JoinSet::new();
        for node in rest.iter().cloned() {
            let (coord, resource, requester) =
                (coord.clone(), resource.to_owned(), requester.clone());
            asks.spawn(async move {
                let answer = ask(&coord, &node, &resource, &requester, deadline).await;
                (node, answer)
            });
        }
        while let Some(joined) = asks.join_next().await {
            match joined {
                Ok((node, Some(LockAnswer::Granted(fence)))) => granted.push((node, fence)),
                _ => refused = true,
            }
        }
    }
    if refused {
        // LockRelease everywhere asked (a late grant may still land).
        release_on(coord, resource, requester, nodes).await;
        return None;
    }
    let token = granted.iter().map(|(_, f)| *f).max().unwrap_or(0);
    confirm_on(coord, resource, requester, nodes, token).await;
    Some(token)
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
        return Some(locked(&coord.locks).acquire(resource, requester));
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
        Ok(answer) => Some(answer),
        Err(e) => {
            debug!(peer = %node, resource, "lock request failed: {e}");
            None
        }
    }
}

/// Tells every node of the set the token granted.
async fn confirm_on(
    coord: &Arc<Coord>,
    resource: &str,
    requester: &LockRequester,
    nodes: &[NodeName],
    token: u64,
) {
    let request = LockConfirm {
        resource: resource.to_owned(),
        requester: requester.clone(),
        token,
    };
    let results = on_each(coord, nodes, service::LOCK_CONFIRM, &request, |t| {
        t.confirm(resource, token)
    })
    .await;
    for (node, e) in results {
        warn!(peer = %node, resource, "could not confirm lock token {token}: {e}");
    }
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
    let timeout = coord.message_timeout();
    let calls = nodes
        .iter()
        .filter(|n| **n != *coord.me())
        .map(|node| async move {
            let result: Result<(), RpcError> = coord.call(node, service, request, timeout).await;
            (node.clone(), result)
        });
    join_all(calls)
        .await
        .into_iter()
        .filter_map(|(node, r)| r.err().map(|e| (node, e)))
        .collect()
}

/// Runs futures concurrently on this task, in order of the results.
pub(crate) async fn join_all<F: Future>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output> {
    let mut pending: Vec<_> = futures.into_iter().map(Box::pin).collect();
    let mut results: Vec<Option<F::Output>> = (0..pending.len()).map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut done = true;
        for (fut, slot) in pending.iter_mut().zip(results.iter_mut()) {
            if slot.is_none() {
                match fut.as_mut().poll(cx) {
                    std::task::Poll::Ready(v) => *slot = Some(v),
                    std::task::Poll::Pending => done = false,
                }
            }
        }
        if done {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    results.into_iter().flatten().collect()
}

/// The nodes holding locks here.
pub(crate) fn holders(coord: &Coord) -> Vec<NodeName> {
    locked(&coord.locks).holders()
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
        service::LOCK_ACQUIRE,
        |coord, ctx: &CallContext, req: LockAcquire| {
            if !from_requester(ctx, &req.requester) || req.resource.len() > MAX_RESOURCE {
                return LockAnswer::Held;
            }
            locked(&coord.locks).acquire(&req.resource, &req.requester)
        },
    );
    crate::serve(
        coord,
        service::LOCK_CONFIRM,
        |coord, ctx: &CallContext, req: LockConfirm| {
            if from_requester(ctx, &req.requester) {
                locked(&coord.locks).confirm(&req.resource, req.token);
            }
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
