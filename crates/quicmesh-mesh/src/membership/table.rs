//! The peer table: which nodes are up, over which connection, and the
//! rules that decide between two connections to the same node. Pure data:
//! no I/O, no clock; the runtime passes `now` and executes the outcomes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::SystemTime;

use quicmesh_wire::{NodeAddr, NodeName, PeerInfo};

use crate::event::DownReason;

/// A live connection as the table sees it.
pub(crate) trait Link {
    /// Unique per connection for the node's lifetime.
    fn id(&self) -> usize;
}

/// A connected peer's link and what its `Hello` said.
#[derive(Debug, Clone)]
pub(crate) struct UpPeer<L> {
    pub(crate) link: L,
    pub(crate) incarnation: u64,
    pub(crate) hidden: bool,
    pub(crate) since: SystemTime,
}

/// Everything known about one node.
#[derive(Debug)]
pub(crate) struct Peer<L> {
    pub(crate) up: Option<UpPeer<L>>,
    /// Dials to it in progress from this node.
    pub(crate) dialing: u32,
    /// A peer told of it; a dial waits for its turn (it is known, but not
    /// being dialled, so its own dial to this node is not refused).
    pub(crate) queued: bool,
    /// Where it listens.
    pub(crate) addrs: Vec<SocketAddr>,
    /// Set when it came from configuration or discovery: re-dialled while down.
    pub(crate) seed: Option<NodeAddr>,
    /// Up peers that told of it (at most [`MAX_VOUCHERS`]): while it is
    /// down and one of them vouches for it, it is dialled.
    pub(crate) vouchers: Vec<NodeName>,
    pub(crate) incarnation: Option<u64>,
    pub(crate) last_down: Option<(DownReason, SystemTime)>,
    pub(crate) last_dial_error: Option<String>,
}

impl<L> Default for Peer<L> {
    fn default() -> Self {
        Self {
            up: None,
            dialing: 0,
            queued: false,
            addrs: Vec::new(),
            seed: None,
            vouchers: Vec::new(),
            incarnation: None,
            last_down: None,
            last_dial_error: None,
        }
    }
}

/// What installing a connection did.
#[derive(Debug)]
pub(crate) enum Installed<L> {
    /// The node was not up: emit `NodeUp`.
    NewlyUp,
    /// The node was up over `old`, same incarnation: the connection was
    /// swapped silently; close `old` as a duplicate.
    Replaced { old: L },
    /// The node was up with another incarnation: it restarted. Emit
    /// `NodeDown { Restarted }` then `NodeUp`; close `old`.
    Restarted { old: L },
}

/// Most addresses kept of a peer someone told of.
pub(crate) const MAX_ADDRS: usize = 4;

/// Most peers remembered as having told of one node.
pub(crate) const MAX_VOUCHERS: usize = 4;

/// The peer table of one node.
#[derive(Debug)]
pub(crate) struct PeerTable<L> {
    me: NodeName,
    peers: HashMap<NodeName, Peer<L>>,
}

impl<L: Link + Clone> PeerTable<L> {
    pub(crate) fn new(me: NodeName) -> Self {
        Self {
            me,
            peers: HashMap::new(),
        }
    }

    pub(crate) fn get(&self, name: &NodeName) -> Option<&Peer<L>> {
        self.peers.get(name)
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (&NodeName, &Peer<L>)> {
        self.peers.iter()
    }

    pub(crate) fn is_up(&self, name: &NodeName) -> bool {
        self.peers.get(name).is_some_and(|p| p.up.is_some())
    }

    #[cfg(test)]
    pub(crate) fn is_known(&self, name: &NodeName) -> bool {
        self.peers
            .get(name)
            .is_some_and(|p| p.up.is_some() || p.dialing > 0 || p.queued || p.seed.is_some())
    }

    /// Up peers, with their links.
    pub(crate) fn up(&self) -> impl Iterator<Item = (&NodeName, &UpPeer<L>)> {
        self.peers
            .iter()
            .filter_map(|(n, p)| p.up.as_ref().map(|u| (n, u)))
    }

    pub(crate) fn up_count(&self) -> usize {
        self.up().count()
    }

    /// Up, non-hidden peers other than `except`, as they are told to others.
    pub(crate) fn shareable(&self, except: &NodeName) -> Vec<PeerInfo> {
        self.up()
            .filter(|(n, u)| !u.hidden && *n != except)
            .map(|(n, _)| PeerInfo {
                name: n.clone(),
                addrs: self.peers[n].addrs.clone(),
            })
            .collect()
    }

    /// Marks `addr` as a seed (kept connected).
    pub(crate) fn add_seed(&mut self, addr: NodeAddr) {
        let name = addr.name.clone();
        self.peers.entry(name).or_default().seed = Some(addr);
    }

    /// Forgets that `name` is a seed; returns whether it was one.
    pub(crate) fn remove_seed(&mut self, name: &NodeName) -> bool {
        self.peers
            .get_mut(name)
            .is_some_and(|p| p.seed.take().is_some())
    }

    pub(crate) fn is_seed(&self, name: &NodeName) -> bool {
        self.peers.get(name).is_some_and(|p| p.seed.is_some())
    }

    /// A dial to `name` starts, unless it is up already (`false`).
    pub(crate) fn begin_dial(&mut self, name: &NodeName) -> bool {
        let p = self.peers.entry(name.clone()).or_default();
        if p.up.is_some() {
            return false;
        }
        p.dialing += 1;
        true
    }

    /// A dial to `name` ended, with its error if it failed.
    pub(crate) fn end_dial(&mut self, name: &NodeName, error: Option<String>) {
        if let Some(p) = self.peers.get_mut(name) {
            p.dialing = p.dialing.saturating_sub(1);
            if error.is_some() {
                p.last_dial_error = error;
            }
        }
    }

    /// Should a connection *from* `name` with this incarnation be accepted?
    ///
    /// The rule both sides apply, so that two nodes dialling each other end
    /// with exactly one connection: the connection dialled by the node with
    /// the smaller name wins. A dial from a smaller name is always accepted
    /// (it replaces whatever is there). A dial from a larger name is refused
    /// while this node has its own dial to it in flight (that one wins), or
    /// while it is up with the same incarnation (a duplicate); a new
    /// incarnation means the peer restarted, and is accepted, even while a
    /// dial to the old one is in flight.
    pub(crate) fn should_accept(&self, name: &NodeName, incarnation: u64) -> bool {
        if *name < self.me {
            return true;
        }
        match self.peers.get(name) {
            None => true,
            Some(p) => {
                let same_incarnation_up =
                    p.up.as_ref().is_some_and(|u| u.incarnation == incarnation);
                // This node's dial in flight is to the incarnation it knew
                // (maybe at an address it left): a new one dialling in wins.
                let restarted = p.incarnation.is_some_and(|known| known != incarnation);
                (p.dialing == 0 || restarted) && !same_incarnation_up
            }
        }
    }

    /// One node per name: a connection from `name` with another
    /// incarnation than the one up is refused while the one up is `alive`
    /// (heard from lately), with where that one listens. A restarted node
    /// gets in once its old connection has gone quiet.
    pub(crate) fn name_in_use(
        &self,
        name: &NodeName,
        incarnation: u64,
        alive: impl FnOnce(&L) -> bool,
    ) -> Option<Vec<SocketAddr>> {
        let p = self.peers.get(name)?;
        let up = p.up.as_ref()?;
        (up.incarnation != incarnation && alive(&up.link)).then(|| p.addrs.clone())
    }

    /// Installs `up` as the connection to `name`. A dialler always installs
    /// what the listener welcomed: the listener already applied the rule.
    pub(crate) fn install(
        &mut self,
        name: &NodeName,
        up: UpPeer<L>,
        addrs: Vec<SocketAddr>,
    ) -> Installed<L> {
        let p = self.peers.entry(name.clone()).or_default();
        p.incarnation = Some(up.incarnation);
        p.addrs = addrs;
        p.last_dial_error = None;
        let new_incarnation = up.incarnation;
        match p.up.replace(up) {
            None => Installed::NewlyUp,
            Some(old) if old.incarnation == new_incarnation => {
                Installed::Replaced { old: old.link }
            }
            Some(old) => {
                p.last_down = Some((DownReason::Restarted, old.since));
                Installed::Restarted { old: old.link }
            }
        }
    }

    /// The connection `link_id` to `name` ended. Returns `true` if it was
    /// the current one: the node is now down (emit `NodeDown`). A replaced
    /// connection ending changes nothing. A hidden node that dialled in
    /// (an admin command, say) is forgotten: nothing dials it again.
    pub(crate) fn link_closed(
        &mut self,
        name: &NodeName,
        link_id: usize,
        reason: DownReason,
        now: SystemTime,
    ) -> bool {
        let Some(p) = self.peers.get_mut(name) else {
            return false;
        };
        if p.up.as_ref().is_none_or(|u| u.link.id() != link_id) {
            return false;
        }
        let was_hidden = p.up.take().is_some_and(|u| u.hidden);
        p.last_down = Some((reason, now));
        if was_hidden && p.seed.is_none() && p.dialing == 0 && !p.queued {
            self.peers.remove(name);
        }
        true
    }

    /// Takes in what peer `from` said it knows, up to `max` entries in the
    /// whole table: the ones to dial (queued: see [`Self::start_queued`])
    /// and how many new names did not fit. `from` vouches for every name
    /// it told of; a name known and down, not dialled already and no seed
    /// is dialled again. Names up, this node's own and entries without an
    /// address are passed over; at most [`MAX_ADDRS`] addresses of each are
    /// kept. When the table is full, room is made by forgetting peers that
    /// are down and tie this node to nothing (no seed, no dial, no
    /// voucher), those down longest first.
    pub(crate) fn learn(
        &mut self,
        from: &NodeName,
        told: Vec<PeerInfo>,
        max: usize,
    ) -> (Vec<PeerInfo>, u64) {
        let mut to_dial = Vec::new();
        let mut refused = 0u64;
        let mut evictable: Option<Vec<NodeName>> = None;
        for mut p in told {
            if p.name == self.me || p.addrs.is_empty() {
                continue;
            }
            if !self.peers.contains_key(&p.name) && self.peers.len() >= max {
                let room = evictable.get_or_insert_with(|| self.evictable());
                match room.pop() {
                    Some(gone) => {
                        self.peers.remove(&gone);
                    }
                    None => {
                        refused += 1;
                        continue;
                    }
                }
            }
            p.addrs.truncate(MAX_ADDRS);
            let peer = self.peers.entry(p.name.clone()).or_default();
            if !peer.vouchers.contains(from) && peer.vouchers.len() < MAX_VOUCHERS {
                peer.vouchers.push(from.clone());
            }
            if peer.up.is_some() || peer.seed.is_some() {
                continue;
            }
            // A node down here may have come back elsewhere (restarted on
            // another port): the newest word on where it listens counts.
            peer.addrs = p.addrs.clone();
            if peer.dialing > 0 || peer.queued {
                continue;
            }
            peer.queued = true;
            to_dial.push(p);
        }
        (to_dial, refused)
    }

    /// Whether a dial to `name` on a peer's word should go on: it is down,
    /// no seed (seeds have their own dialler), and an up peer vouches for
    /// it.
    pub(crate) fn wanted(&self, name: &NodeName) -> bool {
        self.peers.get(name).is_some_and(|p| {
            p.up.is_none() && p.seed.is_none() && p.vouchers.iter().any(|v| self.is_up(v))
        })
    }

    /// Gives up dialling `name` if it was never up: its vouchers are
    /// dropped and it is forgotten. `true` if it was given up.
    pub(crate) fn give_up_if_never_up(&mut self, name: &NodeName) -> bool {
        let Some(p) = self.peers.get_mut(name) else {
            return true;
        };
        if p.incarnation.is_some() || p.up.is_some() {
            return false;
        }
        p.vouchers.clear();
        p.queued = false;
        self.forget_stranger(name);
        true
    }

    /// `from` says `names` went down there: it no longer vouches for them.
    pub(crate) fn gone(&mut self, from: &NodeName, names: &[NodeName]) {
        for name in names {
            if let Some(p) = self.peers.get_mut(name) {
                p.vouchers.retain(|v| v != from);
            }
        }
    }

    /// `node` went down: it vouches for nothing any more. Names that no
    /// one vouches for and that were never up, are no seed and have no
    /// dial in progress or queued are forgotten.
    pub(crate) fn voucher_down(&mut self, node: &NodeName) {
        for p in self.peers.values_mut() {
            p.vouchers.retain(|v| v != node);
        }
        self.peers.retain(|_, p| {
            !(p.up.is_none()
                && p.incarnation.is_none()
                && p.seed.is_none()
                && p.vouchers.is_empty()
                && p.dialing == 0
                && !p.queued)
        });
    }

    /// `name` went down (`reason`): `true` if it is to be dialled again on
    /// its vouchers' word (queued). Only when the link failed (heartbeat
    /// timeout, connection lost); after a decision of either side (a
    /// disconnect, a shutdown, a violation, a refusal) its vouchers are
    /// dropped instead, and a restart is told of when it comes up again.
    pub(crate) fn redial_after_down(&mut self, name: &NodeName, reason: &DownReason) -> bool {
        let Some(p) = self.peers.get_mut(name) else {
            return false;
        };
        if !matches!(
            reason,
            DownReason::HeartbeatTimeout | DownReason::ConnectionLost { .. }
        ) {
            p.vouchers.clear();
            return false;
        }
        if p.up.is_some() || p.dialing > 0 || p.queued || p.seed.is_some() || p.vouchers.is_empty()
        {
            return false;
        }
        p.queued = true;
        true
    }

    /// Peers that are down and tie this node to nothing, those down the
    /// shortest time first (so `pop` takes the longest down).
    fn evictable(&self) -> Vec<NodeName> {
        let mut down: Vec<_> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.up.is_none()
                    && p.dialing == 0
                    && !p.queued
                    && p.seed.is_none()
                    && p.vouchers.is_empty()
            })
            .map(|(n, p)| (p.last_down.as_ref().map(|(_, at)| *at), n.clone()))
            .collect();
        down.sort_unstable_by(|a, b| b.cmp(a));
        down.into_iter().map(|(_, n)| n).collect()
    }

    /// A queued dial to `name` gets its turn: `true` if it should go
    /// ahead (counted as a dial in progress), `false` if the peer is up
    /// meanwhile.
    pub(crate) fn start_queued(&mut self, name: &NodeName) -> bool {
        let Some(p) = self.peers.get_mut(name) else {
            return false;
        };
        // Not queued: another dial loop took this turn.
        if !std::mem::replace(&mut p.queued, false) || p.up.is_some() {
            return false;
        }
        p.dialing += 1;
        true
    }

    /// Puts `name` back in the queue (a dial to it is to be tried again
    /// later); `false` if it is up meanwhile.
    pub(crate) fn requeue(&mut self, name: &NodeName) -> bool {
        match self.peers.get_mut(name) {
            Some(p) if p.up.is_none() => {
                p.queued = true;
                true
            }
            _ => false,
        }
    }

    /// A queued dial will not happen (the node is stopping).
    pub(crate) fn unqueue(&mut self, name: &NodeName) {
        if let Some(p) = self.peers.get_mut(name) {
            p.queued = false;
        }
    }

    /// Forgets `name` if nothing ties this node to it: it was never up,
    /// is no seed, no peer vouches for it and no dial to it is in progress
    /// or queued. `true` if it was forgotten.
    pub(crate) fn forget_stranger(&mut self, name: &NodeName) -> bool {
        let stranger = self.peers.get(name).is_some_and(|p| {
            p.up.is_none()
                && p.incarnation.is_none()
                && p.seed.is_none()
                && p.vouchers.is_empty()
                && p.dialing == 0
                && !p.queued
        });
        if stranger {
            self.peers.remove(name);
        }
        stranger
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Clone, PartialEq)]
    struct L(usize);
    impl Link for L {
        fn id(&self) -> usize {
            self.0
        }
    }

    fn n(s: &str) -> NodeName {
        s.parse().unwrap()
    }

    fn up(id: usize, inc: u64) -> UpPeer<L> {
        UpPeer {
            link: L(id),
            incarnation: inc,
            hidden: false,
            since: SystemTime::UNIX_EPOCH,
        }
    }

    fn told(names: &[&str]) -> Vec<PeerInfo> {
        names
            .iter()
            .map(|s| PeerInfo {
                name: n(s),
                addrs: vec!["127.0.0.1:1".parse().unwrap()],
            })
            .collect()
    }

    #[test]
    fn a_second_node_with_a_live_nodes_name_is_refused_a_restarted_one_is_not() {
        let mut a = PeerTable::<L>::new(n("a@h"));
        let at: SocketAddr = "127.0.0.1:9".parse().unwrap();
        a.install(&n("b@h"), up(1, 7), vec![at]);
        assert_eq!(
            a.name_in_use(&n("b@h"), 8, |_| true),
            Some(vec![at]),
            "another incarnation while the first is alive"
        );
        assert_eq!(
            a.name_in_use(&n("b@h"), 8, |_| false),
            None,
            "the first went quiet"
        );
        assert_eq!(
            a.name_in_use(&n("b@h"), 7, |_| true),
            None,
            "the same node again"
        );
        assert_eq!(
            a.name_in_use(&n("c@h"), 1, |_| true),
            None,
            "a name nobody holds"
        );
        a.link_closed(&n("b@h"), 1, DownReason::Shutdown, SystemTime::UNIX_EPOCH);
        assert_eq!(
            a.name_in_use(&n("b@h"), 8, |_| true),
            None,
            "nobody holds it now"
        );
    }

    #[test]
    fn what_a_peer_tells_is_taken_in_up_to_the_cap() {
        let mut t = PeerTable::<L>::new(n("a@h"));
        t.add_seed("s@h:1".parse().unwrap());
        let mut list = told(&["a@h", "b@h", "c@h", "c@h", "d@h", "e@h"]);
        list.push(PeerInfo {
            name: n("x@h"),
            addrs: Vec::new(),
        });
        list[1].addrs = vec!["127.0.0.1:1".parse().unwrap(); 100];
        let (dial, refused) = t.learn(&n("v@h"), list, 3);
        let names: Vec<_> = dial.iter().map(|p| p.name.to_string()).collect();
        assert_eq!(
            names,
            ["b@h", "c@h"],
            "self, repeats and address-less entries pass"
        );
        assert_eq!(
            dial[0].addrs.len(),
            MAX_ADDRS,
            "a few addresses of each are kept"
        );
        assert_eq!(refused, 2, "d and e do not fit: the seed and b, c fill 3");
        assert_eq!(t.iter().count(), 3);
        let (again, refused) = t.learn(&n("v@h"), told(&["b@h", "c@h"]), 3);
        assert!(again.is_empty(), "queued names are not queued twice");
        assert_eq!(refused, 0);
    }

    #[test]
    fn a_queued_dial_is_no_dial_in_progress_for_the_tie_break() {
        // a < b: b's connection is refused while a has its own dial out.
        let mut b = PeerTable::<L>::new(n("b@h"));
        b.learn(&n("v@h"), told(&["c@h"]), 10);
        assert!(b.is_known(&n("c@h")));
        assert!(
            b.should_accept(&n("c@h"), 1),
            "queued only: c's own dial is taken"
        );
        assert!(b.start_queued(&n("c@h")));
        assert!(!b.should_accept(&n("c@h"), 1), "now b's dial is out");
        b.end_dial(&n("c@h"), Some("unreachable".into()));
        assert!(b.requeue(&n("c@h")), "to be tried again");
        assert!(b.is_known(&n("c@h")));
        b.install(&n("c@h"), up(1, 1), vec![]);
        assert!(!b.start_queued(&n("c@h")), "up meanwhile: no dial");
        assert!(!b.requeue(&n("c@h")));
    }

    #[test]
    fn a_full_table_makes_room_by_forgetting_the_longest_down() {
        let mut t = PeerTable::<L>::new(n("a@h"));
        let at = |s: u64| SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(s);
        for (i, name) in ["b@h", "c@h", "d@h"].iter().enumerate() {
            t.install(&n(name), up(i, 1), vec![]);
            t.link_closed(&n(name), i, DownReason::Shutdown, at(10 - i as u64));
        }
        t.add_seed("s@h:1".parse().unwrap());
        // Full at 4: b (down longest ago... at 10), c (9), d (8), the seed s.
        let (dial, refused) = t.learn(&n("v@h"), told(&["e@h", "f@h"]), 4);
        assert_eq!(dial.len(), 2);
        assert_eq!(refused, 0);
        assert!(t.get(&n("d@h")).is_none(), "d went down first: it went");
        assert!(t.get(&n("c@h")).is_none());
        assert!(t.get(&n("b@h")).is_some());
        assert!(t.is_seed(&n("s@h")), "seeds are never made room for");
        let (dial, refused) = t.learn(&n("v@h"), told(&["g@h", "h@h"]), 4);
        assert_eq!((dial.len(), refused), (1, 1), "b made room once; then full");
    }

    #[test]
    fn strangers_that_could_not_be_reached_are_forgotten_and_nobody_else() {
        let mut t = PeerTable::<L>::new(n("a@h"));
        let (dial, _) = t.learn(&n("v@h"), told(&["b@h", "c@h", "s@h"]), 10);
        assert_eq!(dial.len(), 3);
        t.add_seed("s@h:1".parse().unwrap());
        assert!(!t.forget_stranger(&n("b@h")), "its dial is still queued");
        for name in ["b@h", "c@h", "s@h"] {
            assert!(t.start_queued(&n(name)));
        }
        assert!(!t.forget_stranger(&n("b@h")), "its dial is in progress");
        for name in ["b@h", "c@h", "s@h"] {
            t.end_dial(&n(name), Some("unreachable".into()));
        }
        t.install(&n("c@h"), up(1, 7), vec![]);
        t.link_closed(
            &n("c@h"),
            1,
            DownReason::HeartbeatTimeout,
            SystemTime::UNIX_EPOCH,
        );
        assert!(
            !t.forget_stranger(&n("b@h")),
            "v, which told of it, still vouches for it"
        );
        t.voucher_down(&n("v@h"));
        assert!(t.get(&n("b@h")).is_none(), "nobody vouches for b now");
        assert!(
            t.get(&n("c@h")).is_some(),
            "it was up once: its history stays"
        );
        assert!(t.is_seed(&n("s@h")), "a seed stays");
        assert_eq!(t.iter().count(), 2);
        assert!(
            t.learn(&n("v@h"), told(&["b@h"]), 10).0.len() == 1,
            "b may be told of again"
        );
    }

    #[test]
    fn a_node_is_dialled_while_a_peer_vouches_for_it() {
        let mut t = PeerTable::<L>::new(n("a@h"));
        let (v, w) = (n("v@h"), n("w@h"));
        t.install(&v, up(100, 1), vec![]);
        t.install(&w, up(101, 1), vec![]);
        let (dial, _) = t.learn(&v, told(&["c@h"]), 10);
        assert_eq!(dial.len(), 1);
        t.learn(&w, told(&["c@h"]), 10);
        assert!(t.wanted(&n("c@h")));
        t.gone(&v, &[n("c@h")]);
        assert!(t.wanted(&n("c@h")), "w still vouches");
        t.link_closed(
            &w,
            101,
            DownReason::HeartbeatTimeout,
            SystemTime::UNIX_EPOCH,
        );
        assert!(!t.wanted(&n("c@h")), "w is down: it vouches for nothing");
        t.voucher_down(&w);
        assert!(!t.wanted(&n("c@h")), "nobody vouches: the dial stops");
        // Up once, then down: dialled again on a voucher's word, but not
        // after this node disconnected it or it shut down.
        t.learn(&v, told(&["d@h"]), 10);
        assert!(t.start_queued(&n("d@h")));
        t.install(&n("d@h"), up(3, 1), vec![]);
        t.end_dial(&n("d@h"), None);
        let reason = DownReason::HeartbeatTimeout;
        t.link_closed(&n("d@h"), 3, reason.clone(), SystemTime::UNIX_EPOCH);
        assert!(t.redial_after_down(&n("d@h"), &reason));
        assert!(!t.redial_after_down(&n("d@h"), &reason), "queued already");
        assert!(t.start_queued(&n("d@h")));
        t.install(&n("d@h"), up(4, 1), vec![]);
        t.end_dial(&n("d@h"), None);
        t.link_closed(&n("d@h"), 4, DownReason::Shutdown, SystemTime::UNIX_EPOCH);
        assert!(!t.redial_after_down(&n("d@h"), &DownReason::Shutdown));
        assert!(!t.wanted(&n("d@h")), "its vouchers went with the shutdown");
        // Told of again while down: dialled again.
        assert_eq!(t.learn(&v, told(&["d@h"]), 10).0.len(), 1);
        // A told-of node never up is given up after its attempts; one up
        // once is not.
        t.learn(&v, told(&["e@h"]), 10);
        assert!(t.give_up_if_never_up(&n("e@h")));
        assert!(t.get(&n("e@h")).is_none());
        assert!(!t.give_up_if_never_up(&n("d@h")));
        // A second dial loop finds the turn taken.
        assert!(t.start_queued(&n("d@h")));
        assert!(!t.start_queued(&n("d@h")), "not queued any more");
    }

    #[test]
    fn simultaneous_dials_keep_the_smaller_names_connection() {
        // a < b. Both dial at once.
        let mut a = PeerTable::<L>::new(n("a@h"));
        let mut b = PeerTable::<L>::new(n("b@h"));
        assert!(a.begin_dial(&n("b@h")));
        assert!(b.begin_dial(&n("a@h")));
        // a refuses b's dial (a's own dial wins); b accepts a's.
        assert!(!a.should_accept(&n("b@h"), 2));
        assert!(b.should_accept(&n("a@h"), 1));
        assert!(matches!(
            b.install(&n("a@h"), up(10, 1), vec![]),
            Installed::NewlyUp
        ));
        // a's dial is welcomed.
        assert!(matches!(
            a.install(&n("b@h"), up(10, 2), vec![]),
            Installed::NewlyUp
        ));
        a.end_dial(&n("b@h"), None);
        b.end_dial(&n("a@h"), Some("duplicate".into()));
        assert!(a.is_up(&n("b@h")) && b.is_up(&n("a@h")));
        // Once up, neither dials again.
        assert!(!a.begin_dial(&n("b@h")));
    }

    #[test]
    fn larger_name_is_refused_while_up_unless_restarted() {
        let mut a = PeerTable::<L>::new(n("a@h"));
        a.install(&n("b@h"), up(1, 7), vec![]);
        assert!(!a.should_accept(&n("b@h"), 7));
        assert!(a.should_accept(&n("b@h"), 8));
        assert!(matches!(
            a.install(&n("b@h"), up(2, 8), vec![]),
            Installed::Restarted { old: L(1) }
        ));
        // The old connection closing now changes nothing.
        assert!(!a.link_closed(&n("b@h"), 1, DownReason::Restarted, SystemTime::UNIX_EPOCH));
        assert!(a.is_up(&n("b@h")));
        assert!(a.link_closed(
            &n("b@h"),
            2,
            DownReason::HeartbeatTimeout,
            SystemTime::UNIX_EPOCH
        ));
        assert!(!a.is_up(&n("b@h")));
        assert_eq!(
            a.get(&n("b@h")).unwrap().last_down.as_ref().unwrap().0,
            DownReason::HeartbeatTimeout
        );
    }

    #[test]
    fn smaller_name_always_accepted_and_swaps_silently() {
        let mut b = PeerTable::<L>::new(n("b@h"));
        b.install(&n("a@h"), up(1, 5), vec![]);
        assert!(b.should_accept(&n("a@h"), 5));
        assert!(matches!(
            b.install(&n("a@h"), up(2, 5), vec![]),
            Installed::Replaced { old: L(1) }
        ));
    }

    #[test]
    fn hidden_and_self_are_not_shared() {
        let mut t = PeerTable::<L>::new(n("a@h"));
        t.install(&n("b@h"), up(1, 1), vec!["127.0.0.1:1".parse().unwrap()]);
        let mut hidden = up(2, 1);
        hidden.hidden = true;
        t.install(&n("c@h"), hidden, vec![]);
        t.install(&n("d@h"), up(3, 1), vec![]);
        let mut shared: Vec<_> = t.shareable(&n("d@h")).into_iter().map(|p| p.name).collect();
        shared.sort();
        assert_eq!(shared, vec![n("b@h")]);
    }

    #[test]
    fn a_hidden_node_that_left_is_forgotten_unless_it_is_a_seed() {
        let mut t = PeerTable::<L>::new(n("a@h"));
        let hidden = || UpPeer {
            hidden: true,
            ..up(1, 1)
        };
        t.install(&n("admin@h"), hidden(), vec![]);
        assert!(t.link_closed(
            &n("admin@h"),
            1,
            DownReason::Shutdown,
            SystemTime::UNIX_EPOCH
        ));
        assert!(t.get(&n("admin@h")).is_none(), "forgotten");
        t.add_seed("shell@h:1".parse().unwrap());
        t.install(&n("shell@h"), hidden(), vec![]);
        assert!(t.link_closed(
            &n("shell@h"),
            1,
            DownReason::Shutdown,
            SystemTime::UNIX_EPOCH
        ));
        assert!(
            t.is_known(&n("shell@h")),
            "a seed is kept, to be dialled again"
        );
        t.install(&n("b@h"), up(2, 1), vec![]);
        assert!(t.link_closed(&n("b@h"), 2, DownReason::Shutdown, SystemTime::UNIX_EPOCH));
        assert!(t.get(&n("b@h")).is_some(), "a visible node is remembered");
    }

    #[test]
    fn seeds_and_dial_errors_are_remembered() {
        let mut t = PeerTable::<L>::new(n("a@h"));
        t.add_seed("b@h:1".parse().unwrap());
        assert!(t.begin_dial(&n("c@h")));
        assert!(t.is_known(&n("c@h")));
        t.end_dial(&n("c@h"), Some("x".into()));
        assert_eq!(
            t.get(&n("c@h")).unwrap().last_dial_error.as_deref(),
            Some("x")
        );
        assert!(!t.is_known(&n("c@h")));
        assert!(t.is_seed(&n("b@h")));
        assert!(t.remove_seed(&n("b@h")));
        assert!(!t.is_seed(&n("b@h")));
    }
}
