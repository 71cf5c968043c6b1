//! The one coordination API of both modes: the lock guard, the election
//! and the leadership that [`Node::lock`](crate::Node::lock),
//! [`Node::trans`](crate::Node::trans) and
//! [`Node::election`](crate::Node::election) return, whether the node runs
//! global mode (`quicmesh_coord`, Erlang's `:global`) or consensus mode
//! (`quicmesh_consensus`, a Raft group). Each type wraps the mode's own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use quicmesh_consensus::{Consensus, ConsensusError, Leader};
use quicmesh_coord::{
    Hlc, Keep, LeaderChange, LockError, Registration, RegistryError, RegistryEvent, Token,
};
use quicmesh_mesh::Tasks;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::sync::broadcast;
use tokio::time::Instant;
use tracing::debug;

/// The global-mode types the one API wraps, for code that wants the
/// mode's own (e.g. [`global::LockGuard::nodes`]): reach them with
/// [`LockGuard::as_global`], [`Leadership::as_global`] and
/// [`Election::as_global`], [`Registry::as_global`].
pub mod global {
    pub use quicmesh_coord::{Election, Leadership, LockGuard, Registry};
}

/// The longest a consensus-mode lock or campaign waits: a year (a longer
/// timeout, as `Duration::MAX`, would overflow a deadline).
pub(crate) const LONGEST_WAIT: Duration = Duration::from_secs(365 * 24 * 3600);

/// How long one consensus-mode campaign waits in the election's queue
/// before it asks again (a campaign with no timeout goes on for ever).
const CAMPAIGN_ROUND: Duration = Duration::from_secs(30);

/// How often a consensus-mode [`Election::observe`] looks again while the
/// election has no leader (with one, it waits for the change).
const OBSERVE_IDLE: Duration = Duration::from_millis(100);

/// Longest wait of one look for a change, in consensus mode.
const OBSERVE_ROUND: Duration = Duration::from_secs(5);

fn locked<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A consensus-mode failure as the one [`LockError`], for `resource` (a
/// lock's resource or an election's name).
pub(crate) fn lock_error(resource: &str, e: ConsensusError) -> LockError {
    let resource = resource.to_owned();
    match e {
        ConsensusError::NoQuorum { waited } => LockError::NoQuorum { resource, waited },
        ConsensusError::Timeout { owner, waited } => LockError::Timeout {
            resource,
            waited,
            attempts: 1,
            holder: Some(owner),
        },
        ConsensusError::SessionExpired => LockError::SessionExpired { resource },
        ConsensusError::Invalid => LockError::BadResource(resource),
        ConsensusError::Limit => LockError::TooMany {
            limit: quicmesh_consensus::machine::MAX_HELD_PER_SESSION,
        },
        ConsensusError::Stopped(_) => LockError::ShuttingDown,
        other => LockError::Consensus {
            resource,
            detail: other.to_string(),
        },
    }
}

/// A cluster lock held, in either mode: released when dropped. Hold it in
/// the task that works under the lock, and pass [`LockGuard::token`] to
/// whatever the lock protects, so it can refuse a holder whose lock was
/// given away meanwhile.
#[derive(Debug)]
#[must_use = "the lock is released when the guard is dropped"]
pub struct LockGuard(GuardInner);

#[derive(Debug)]
enum GuardInner {
    Global(quicmesh_coord::LockGuard),
    Consensus {
        guard: quicmesh_consensus::LockGuard,
        resource: String,
    },
}

impl LockGuard {
    pub(crate) fn global(guard: quicmesh_coord::LockGuard) -> Self {
        Self(GuardInner::Global(guard))
    }

    pub(crate) fn consensus(guard: quicmesh_consensus::LockGuard, resource: &str) -> Self {
        Self(GuardInner::Consensus {
            guard,
            resource: resource.to_owned(),
        })
    }

    /// The fencing token: larger than that of every earlier grant of this
    /// resource, and unique in the cluster (see [`Token`]). In consensus
    /// mode, the Raft log index of the granting entry
    /// ([`Token::log_index`]).
    pub fn token(&self) -> Token {
        match &self.0 {
            GuardInner::Global(g) => g.token(),
            GuardInner::Consensus { guard, .. } => Token::from_log_index(guard.token()),
        }
    }

    /// Whether this node knows the lock is no longer its own. Global mode:
    /// it learnt that the lock was given to another holder with a larger
    /// token (granted while this node was cut off or paused, and told when
    /// they met again). Consensus mode: the session that holds it ended
    /// (closed, refused by the group as expired, or not renewed for a
    /// whole TTL by this node's clock, after which the group may grant the
    /// lock to another node).
    pub fn is_lost(&self) -> bool {
        match &self.0 {
            GuardInner::Global(g) => g.is_lost(),
            GuardInner::Consensus { guard, .. } => !guard.is_held(),
        }
    }

    /// Waits until the lock is lost (see [`LockGuard::is_lost`]); pending
    /// for as long as it is held.
    pub async fn lost(&self) {
        match &self.0 {
            GuardInner::Global(g) => g.lost().await,
            GuardInner::Consensus { guard, .. } => guard.lost().await,
        }
    }

    /// The resource locked.
    pub fn resource(&self) -> &str {
        match &self.0 {
            GuardInner::Global(g) => g.resource(),
            GuardInner::Consensus { resource, .. } => resource,
        }
    }

    /// The nodes it is locked on, this one included, in global mode. Empty
    /// in consensus mode, where the Raft group grants it.
    pub fn nodes(&self) -> &[quicmesh_wire::NodeName] {
        match &self.0 {
            GuardInner::Global(g) => g.nodes(),
            GuardInner::Consensus { .. } => &[],
        }
    }

    /// Releases the lock and waits: in global mode until every node of its
    /// set has released it (or could not be reached); in consensus mode
    /// until the release is committed, or `request_timeout` passes (then
    /// the node goes on releasing it in the background while its session
    /// lives).
    pub async fn release(self) {
        match self.0 {
            GuardInner::Global(g) => g.release().await,
            GuardInner::Consensus { guard, resource } => {
                if let Err(e) = guard.release().await {
                    debug!(%resource, "release not confirmed: {e}");
                }
            }
        }
    }

    /// The global-mode guard, with what only that mode has (the nodes the
    /// lock is held on); `None` in consensus mode.
    pub fn as_global(&self) -> Option<&quicmesh_coord::LockGuard> {
        match &self.0 {
            GuardInner::Global(g) => Some(g),
            GuardInner::Consensus { .. } => None,
        }
    }
}

/// The elections this node leads in consensus mode, by name, with the
/// term and the session of each.
pub(crate) type Leading = Arc<Mutex<HashMap<String, (Token, u64)>>>;

/// A leader election (`quicmesh::Node::election`), in either mode.
#[derive(Debug, Clone)]
pub struct Election {
    name: String,
    inner: ElectionInner,
}

#[derive(Debug, Clone)]
enum ElectionInner {
    Global(quicmesh_coord::Election),
    Consensus(ConsensusElection),
}

#[derive(Debug, Clone)]
struct ConsensusElection {
    consensus: Consensus,
    name: String,
    leading: Leading,
    tasks: Tasks,
}

impl Election {
    pub(crate) fn global(election: quicmesh_coord::Election, name: &str) -> Self {
        Self {
            name: name.to_owned(),
            inner: ElectionInner::Global(election),
        }
    }

    pub(crate) fn consensus(
        consensus: Consensus,
        name: &str,
        leading: Leading,
        tasks: Tasks,
    ) -> Self {
        Self {
            name: name.to_owned(),
            inner: ElectionInner::Consensus(ConsensusElection {
                consensus,
                name: name.to_owned(),
                leading,
                tasks,
            }),
        }
    }

    /// Waits until this node leads (for as long as it takes), then tells
    /// every node. Dropping the future gives up. In consensus mode the
    /// node's session waits in the election's queue, asking again while no
    /// quorum answers (the minority side of a partition never leads) or
    /// after its session ended; [`Election::campaign_timeout`] gives up
    /// with `NoQuorum` instead.
    pub async fn campaign(&self) -> Result<Leadership, LockError> {
        match &self.inner {
            ElectionInner::Global(e) => e.campaign().await.map(Leadership::global),
            ElectionInner::Consensus(e) => loop {
                match e.campaign(CAMPAIGN_ROUND).await {
                    Err(LockError::Timeout { .. }) => {}
                    Err(LockError::NoQuorum { .. } | LockError::SessionExpired { .. }) => {
                        let pause = e.consensus.config().session_ttl / 6;
                        tokio::time::sleep(pause).await;
                    }
                    done => return done,
                }
            },
        }
    }

    /// As [`Election::campaign`], giving up after `timeout` (in consensus
    /// mode at most a year): with
    /// [`LockError::Timeout`] if another node led all along, or in
    /// consensus mode [`LockError::NoQuorum`] if no quorum answered.
    pub async fn campaign_timeout(&self, timeout: Duration) -> Result<Leadership, LockError> {
        match &self.inner {
            ElectionInner::Global(e) => {
                let started = Instant::now();
                match tokio::time::timeout(timeout, e.campaign()).await {
                    Ok(led) => led.map(Leadership::global),
                    Err(_) => Err(LockError::Timeout {
                        resource: self.name.clone(),
                        waited: started.elapsed(),
                        attempts: 0,
                        holder: self.leader().leader,
                    }),
                }
            }
            ElectionInner::Consensus(e) => e.campaign(timeout).await,
        }
    }

    /// Who leads, as this node knows, without a round trip. Global mode:
    /// this node's view, kept by the leaders' announcements. Consensus
    /// mode, on a voter: its own applied state of the group (possibly a
    /// little behind); on a client, which keeps no copy of the state: this
    /// node if it leads, else no leader (with [`Token::NONE`]). Read
    /// [`Election::leader_linearizable`] for the group's answer.
    pub fn leader(&self) -> LeaderChange {
        match &self.inner {
            ElectionInner::Global(e) => e.leader(),
            ElectionInner::Consensus(e) => match e.consensus.leader_stale(&e.name) {
                Ok(leader) => change(leader),
                Err(_) => match locked(&e.leading).get(&e.name) {
                    Some((term, _)) if e.am_leader() => LeaderChange {
                        leader: Some(e.consensus.name().clone()),
                        term: *term,
                    },
                    _ => change(None),
                },
            },
        }
    }

    /// Who leads, read linearizably in consensus mode (through the Raft
    /// leader, which confirms its leadership with a quorum: `NoQuorum` on
    /// the minority side of a partition). In global mode there is no group
    /// to read through: the same as [`Election::leader`].
    pub async fn leader_linearizable(&self) -> Result<LeaderChange, LockError> {
        match &self.inner {
            ElectionInner::Global(e) => Ok(e.leader()),
            ElectionInner::Consensus(e) => match e.consensus.leader(&e.name).await {
                Ok(leader) => Ok(change(leader)),
                Err(err) => Err(lock_error(&e.name, err)),
            },
        }
    }

    /// Whether this node leads now: in consensus mode, whether it holds a
    /// [`Leadership`] of the election whose session is still its own.
    pub fn am_leader(&self) -> bool {
        match &self.inner {
            ElectionInner::Global(e) => e.am_leader(),
            ElectionInner::Consensus(e) => e.am_leader(),
        }
    }

    /// Leader changes from now on, in the order this node learns them
    /// (terms only grow); [`Election::leader`] is the current one. In
    /// consensus mode a task of the node follows the group (a voter's
    /// applied state, or the Raft leader's answers on a client) while a
    /// receiver is left; its first item is the leader at its first look,
    /// if there is one, a change from no leader is seen within 100 ms,
    /// and changes quicker than a look may be seen only as the last.
    pub fn observe(&self) -> broadcast::Receiver<LeaderChange> {
        match &self.inner {
            ElectionInner::Global(e) => e.observe(),
            ElectionInner::Consensus(e) => e.observe(),
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The global-mode election; `None` in consensus mode.
    pub fn as_global(&self) -> Option<&quicmesh_coord::Election> {
        match &self.inner {
            ElectionInner::Global(e) => Some(e),
            ElectionInner::Consensus(_) => None,
        }
    }
}

/// A consensus-mode leader as a [`LeaderChange`]: no leader has
/// [`Token::NONE`] (the group keeps no past terms).
fn change(leader: Option<Leader>) -> LeaderChange {
    match leader {
        Some(l) => LeaderChange {
            leader: Some(l.node),
            term: Token::from_log_index(l.term),
        },
        None => LeaderChange {
            leader: None,
            term: Token::NONE,
        },
    }
}

impl ConsensusElection {
    async fn campaign(&self, timeout: Duration) -> Result<Leadership, LockError> {
        let guard = self
            .consensus
            .campaign(&self.name, timeout.min(LONGEST_WAIT))
            .await
            .map_err(|e| lock_error(&self.name, e))?;
        let term = Token::from_log_index(guard.token());
        if let Some(session) = self.consensus.session_id().filter(|_| guard.is_held()) {
            locked(&self.leading).insert(self.name.clone(), (term, session));
        }
        Ok(Leadership(LeadershipInner::Consensus(
            ConsensusLeadership {
                guard: Some(guard),
                term,
                name: self.name.clone(),
                leading: self.leading.clone(),
            },
        )))
    }

    fn am_leader(&self) -> bool {
        let session = self.consensus.session_id();
        locked(&self.leading)
            .get(&self.name)
            .is_some_and(|(_, s)| Some(*s) == session)
    }

    fn observe(&self) -> broadcast::Receiver<LeaderChange> {
        let (tx, rx) = broadcast::channel(256);
        let this = self.clone();
        let tasks = self.tasks.clone();
        if tasks.is_cancelled() {
            return rx;
        }
        tasks.spawn(async move {
            let mut last = LeaderChange {
                leader: None,
                term: Token::NONE,
            };
            while tx.receiver_count() > 0 && !this.tasks.is_cancelled() {
                let term = last.term.log_index().unwrap_or(0);
                let seen = match last.leader {
                    Some(_) => {
                        this.consensus
                            .leader_change(&this.name, term, OBSERVE_ROUND)
                            .await
                    }
                    None => {
                        tokio::time::sleep(OBSERVE_IDLE).await;
                        this.consensus
                            .leader_change(&this.name, 0, OBSERVE_ROUND)
                            .await
                    }
                };
                let now = match seen {
                    Ok(Some(l)) => change(Some(l)),
                    // No leader now: the term stays the last leader's.
                    Ok(None) => LeaderChange {
                        leader: None,
                        term: last.term,
                    },
                    Err(e) => {
                        debug!(election = %this.name, "observe: {e}");
                        tokio::time::sleep(OBSERVE_IDLE).await;
                        continue;
                    }
                };
                if now != last {
                    let _ = tx.send(now.clone());
                    last = now;
                }
            }
        });
        rx
    }
}

/// Leading an election, in either mode: ends with [`Leadership::resign`]
/// or when dropped (then in the background).
#[derive(Debug)]
#[must_use = "leadership ends when this is dropped"]
pub struct Leadership(LeadershipInner);

#[derive(Debug)]
enum LeadershipInner {
    Global(quicmesh_coord::Leadership),
    Consensus(ConsensusLeadership),
}

#[derive(Debug)]
struct ConsensusLeadership {
    guard: Option<quicmesh_consensus::LockGuard>,
    term: Token,
    name: String,
    leading: Leading,
}

impl Drop for ConsensusLeadership {
    fn drop(&mut self) {
        let mut leading = locked(&self.leading);
        if leading
            .get(&self.name)
            .is_some_and(|(t, _)| *t == self.term)
        {
            leading.remove(&self.name);
        }
        // The guard, dropped after this, gives the leadership back.
    }
}

impl Leadership {
    fn global(leadership: quicmesh_coord::Leadership) -> Self {
        Self(LeadershipInner::Global(leadership))
    }

    /// The term: larger for every new leader (global mode: the election
    /// lock's fencing token; consensus mode: the Raft log index of the
    /// entry that made this node leader). Give it to whatever the leader
    /// writes to.
    pub fn term(&self) -> Token {
        match &self.0 {
            LeadershipInner::Global(l) => l.term(),
            LeadershipInner::Consensus(l) => l.term,
        }
    }

    /// Whether this node knows it no longer leads. Global mode: another
    /// node led with a larger term while the two were apart. Consensus
    /// mode: the session that held it ended (see [`LockGuard::is_lost`]).
    pub fn is_lost(&self) -> bool {
        match &self.0 {
            LeadershipInner::Global(l) => l.is_lost(),
            LeadershipInner::Consensus(l) => l.guard.as_ref().is_none_or(|g| !g.is_held()),
        }
    }

    /// Waits until the leadership is lost (see [`Leadership::is_lost`]).
    pub async fn lost(&self) {
        match &self.0 {
            LeadershipInner::Global(l) => l.lost().await,
            LeadershipInner::Consensus(l) => match &l.guard {
                Some(g) => g.lost().await,
                None => std::future::pending().await,
            },
        }
    }

    /// Stops leading and frees the election for the next campaigner: in
    /// global mode after telling every node; in consensus mode once the
    /// resignation is committed, or `request_timeout` passes (then the
    /// node goes on in the background while its session lives).
    pub async fn resign(self) {
        match self.0 {
            LeadershipInner::Global(l) => l.resign().await,
            LeadershipInner::Consensus(mut l) => {
                if let Some(guard) = l.guard.take() {
                    drop(l);
                    if let Err(e) = guard.release().await {
                        debug!("resignation not confirmed: {e}");
                    }
                }
            }
        }
    }

    /// The global-mode leadership; `None` in consensus mode.
    pub fn as_global(&self) -> Option<&quicmesh_coord::Leadership> {
        match &self.0 {
            LeadershipInner::Global(l) => Some(l),
            LeadershipInner::Consensus(_) => None,
        }
    }
}

/// The cluster-wide name registry (`quicmesh::Node::registry`), in either
/// mode: a name has one owner node.
///
/// Global mode: the `:global` registry of the connected nodes (see
/// [`global::Registry`]): a name maps to its owner and a service there,
/// every node keeps the whole table, each side of a partition may register
/// a name and conflicts are resolved when they meet ([`Registry::events`],
/// [`Registry::set_resolver`]).
///
/// Consensus mode: the Raft group agrees each name, with its owner (this
/// node's session: the name goes when the session ends) and its service
/// there; the minority side of a partition never registers one. There are
/// no conflicts, so no events and no resolver.
#[derive(Debug, Clone)]
pub struct Registry(RegistryInner);

#[derive(Debug, Clone)]
enum RegistryInner {
    Global(quicmesh_coord::Registry),
    Consensus {
        node: crate::Node,
        consensus: Consensus,
        /// Sends nothing: consensus mode has no registry events. Kept so
        /// that receivers wait rather than end.
        quiet: broadcast::Sender<RegistryEvent>,
    },
}

impl Registry {
    pub(crate) fn global(registry: quicmesh_coord::Registry) -> Self {
        Self(RegistryInner::Global(registry))
    }

    pub(crate) fn consensus(
        node: crate::Node,
        consensus: Consensus,
        quiet: broadcast::Sender<RegistryEvent>,
    ) -> Self {
        Self(RegistryInner::Consensus {
            node,
            consensus,
            quiet,
        })
    }

    /// Registers `name` for `service` on this node: of concurrent attempts
    /// exactly one succeeds. Global mode: on every connected node.
    /// Consensus mode: committed by the Raft group within
    /// `request_timeout`, failing with a [`RegistryError::Lock`] of
    /// [`LockError::NoQuorum`] when no quorum answers (the minority side of
    /// a partition); a `service` empty or longer than 255 bytes is
    /// `BadName`. Registering a name this node has again is
    /// `AlreadyRegistered` in global mode and succeeds in consensus mode,
    /// the name standing for `service` from then on.
    pub async fn register(&self, name: &str, service: &str) -> Result<Registration, RegistryError> {
        let c = match &self.0 {
            RegistryInner::Global(r) => return r.register(name, service).await,
            RegistryInner::Consensus { consensus: c, .. } => c,
        };
        match c.register_service(name, service).await {
            Ok(()) => Ok(registration(name, c.name().clone(), service)),
            Err(ConsensusError::Taken { owner }) => Err(RegistryError::AlreadyRegistered {
                name: name.to_owned(),
                owner,
            }),
            Err(ConsensusError::Invalid) => Err(RegistryError::BadName(name.to_owned())),
            Err(ConsensusError::InvalidService) => Err(RegistryError::BadName(service.to_owned())),
            Err(ConsensusError::Limit) => Err(RegistryError::TooMany {
                limit: quicmesh_consensus::machine::MAX_HELD_PER_SESSION,
            }),
            Err(e) => Err(RegistryError::Lock(lock_error(name, e))),
        }
    }

    /// Removes `name` if this node owns it; `false` if it does not (in
    /// consensus mode also when no quorum answered within
    /// `request_timeout`: the name may still be this node's).
    pub async fn unregister(&self, name: &str) -> bool {
        match &self.0 {
            RegistryInner::Global(r) => r.unregister(name).await,
            RegistryInner::Consensus { consensus: c, .. } => match c.unregister(name).await {
                Ok(()) => true,
                Err(e) => {
                    debug!(name, "not unregistered: {e}");
                    false
                }
            },
        }
    }

    /// Who has `name`, as this node knows, without a round trip. Global
    /// mode: the whole table is on every node. Consensus mode, on a voter:
    /// its own applied state (possibly a little behind); on a client,
    /// which keeps no copy: always `None`. Read
    /// [`Registry::whereis_linearizable`] for the group's answer. A
    /// consensus-mode registration carries no clock reading
    /// (`registered_at` is zero).
    pub fn whereis(&self, name: &str) -> Option<Registration> {
        match &self.0 {
            RegistryInner::Global(r) => r.whereis(name),
            RegistryInner::Consensus { consensus: c, .. } => {
                let owner = c.whereis_stale(name).ok()??;
                Some(registration(name, owner.node, &owner.service))
            }
        }
    }

    /// Who has `name`, read linearizably in consensus mode (through the
    /// Raft leader, confirming its leadership with a quorum: `NoQuorum` on
    /// the minority side). In global mode, the same as
    /// [`Registry::whereis`].
    pub async fn whereis_linearizable(
        &self,
        name: &str,
    ) -> Result<Option<Registration>, RegistryError> {
        match &self.0 {
            RegistryInner::Global(r) => Ok(r.whereis(name)),
            RegistryInner::Consensus { consensus: c, .. } => match c.whereis(name).await {
                Ok(owner) => Ok(owner.map(|o| registration(name, o.node, &o.service))),
                Err(e) => Err(RegistryError::Lock(lock_error(name, e))),
            },
        }
    }

    /// Every registered name, sorted. Global mode only: in consensus mode
    /// the group lists no names, and this is empty.
    pub fn registered_names(&self) -> Vec<String> {
        match &self.0 {
            RegistryInner::Global(r) => r.registered_names(),
            RegistryInner::Consensus { .. } => Vec::new(),
        }
    }

    /// Events from now on: registrations, removals, conflicts. Global mode
    /// only: in consensus mode nothing is ever received (the receiver
    /// waits, until the node is dropped).
    pub fn events(&self) -> broadcast::Receiver<RegistryEvent> {
        match &self.0 {
            RegistryInner::Global(r) => r.events(),
            RegistryInner::Consensus { quiet, .. } => quiet.subscribe(),
        }
    }

    /// Replaces the conflict rule of global mode (default: the earliest
    /// registration, ties by owner name); every node must use the same
    /// rule. No effect in consensus mode, where a name is never granted
    /// twice.
    pub fn set_resolver(
        &self,
        resolver: impl Fn(&Registration, &Registration) -> Keep + Send + Sync + 'static,
    ) {
        if let RegistryInner::Global(r) = &self.0 {
            r.set_resolver(resolver);
        }
    }

    /// Calls the service registered as `name`, wherever it is, with the
    /// default timeout (`rpc.timeout`). In consensus mode the owner is
    /// read linearizably first, within `request_timeout`.
    pub async fn call<Req, Resp>(&self, name: &str, request: &Req) -> Result<Resp, RegistryError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        match &self.0 {
            RegistryInner::Global(r) => r.call(name, request).await,
            RegistryInner::Consensus { node, .. } => {
                let timeout = node.rpc().config().timeout;
                self.call_timeout(name, request, timeout).await
            }
        }
    }

    /// As [`Registry::call`], waiting at most `timeout` for the call.
    pub async fn call_timeout<Req, Resp>(
        &self,
        name: &str,
        request: &Req,
        timeout: Duration,
    ) -> Result<Resp, RegistryError>
    where
        Req: Serialize + ?Sized,
        Resp: DeserializeOwned,
    {
        match &self.0 {
            RegistryInner::Global(r) => r.call_timeout(name, request, timeout).await,
            RegistryInner::Consensus { node, .. } => {
                let r = self
                    .whereis_linearizable(name)
                    .await?
                    .ok_or_else(|| RegistryError::NotRegistered(name.to_owned()))?;
                Ok(node
                    .call_timeout(&r.owner, &r.service, request, timeout)
                    .await?)
            }
        }
    }

    /// The global-mode registry; `None` in consensus mode.
    pub fn as_global(&self) -> Option<&quicmesh_coord::Registry> {
        match &self.0 {
            RegistryInner::Global(r) => Some(r),
            RegistryInner::Consensus { .. } => None,
        }
    }
}

/// A consensus-mode name as a [`Registration`]: the service of the same
/// name on `owner`, with no clock reading.
fn registration(name: &str, owner: quicmesh_wire::NodeName, service: &str) -> Registration {
    Registration {
        name: name.to_owned(),
        owner,
        service: service.to_owned(),
        registered_at: Hlc {
            millis: 0,
            counter: 0,
        },
        supersedes: None,
    }
}
