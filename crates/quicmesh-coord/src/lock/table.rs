//! One node's lock table as data: who holds each resource here, and the
//! token each holder confirmed. No I/O, no clock: the caller passes its
//! clock reading in. A free resource leaves nothing behind.

use std::collections::HashMap;

use quicmesh_wire::NodeName;
use quicmesh_wire::coord::{LockAnswer, LockRequester};

/// At most this many locks held by one node on another.
pub(crate) const MAX_PER_NODE: usize = 65_536;

#[derive(Debug)]
struct Grant {
    requester: LockRequester,
    /// Set when the holder confirms it had every node's grant.
    token: Option<u128>,
}

/// What came of a lock a peer says it holds ([`Table::meet`]).
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Met {
    /// Nobody held it here: now the peer's.
    Adopted,
    /// It was the peer's here already.
    Same,
    /// Held here with a larger token; the peer's grant lost.
    Kept,
    /// Held here by `loser` with a smaller token (or unconfirmed): now
    /// the peer's.
    Replaced {
        /// The holder whose grant lost.
        loser: LockRequester,
    },
    /// The peer's node holds as many locks here as a node may.
    Full,
}

/// One node's locks.
#[derive(Debug, Default)]
pub(crate) struct Table {
    held: HashMap<String, Grant>,
    per_node: HashMap<NodeName, usize>,
    last_id: u64,
}

impl Table {
    /// A number for this node's next request, never used before.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    fn insert(&mut self, resource: &str, requester: &LockRequester, token: Option<u128>) {
        *self.per_node.entry(requester.node.clone()).or_insert(0) += 1;
        let old = self.held.insert(
            resource.to_owned(),
            Grant {
                requester: requester.clone(),
                token,
            },
        );
        if let Some(old) = old {
            self.uncount(&old.requester.node);
        }
    }

    fn uncount(&mut self, node: &NodeName) {
        if let Some(n) = self.per_node.get_mut(node) {
            *n -= 1;
            if *n == 0 {
                self.per_node.remove(node);
            }
        }
    }

    fn full(&self, node: &NodeName) -> bool {
        self.per_node.get(node).copied().unwrap_or(0) >= MAX_PER_NODE
    }

    /// Grants `resource` to `requester` unless another holds it here,
    /// answering with `clock`, this node's clock reading (packed).
    pub(crate) fn acquire(
        &mut self,
        resource: &str,
        requester: &LockRequester,
        clock: u64,
    ) -> LockAnswer {
        match self.held.get(resource) {
            Some(grant) if grant.requester != *requester => LockAnswer::Held,
            Some(_) => LockAnswer::Granted(clock),
            None if self.full(&requester.node) => LockAnswer::TooMany,
            None => {
                self.insert(resource, requester, None);
                LockAnswer::Granted(clock)
            }
        }
    }

    /// Records the token `requester` got for `resource`; `false` if it does
    /// not hold it here (any more).
    pub(crate) fn confirm(
        &mut self,
        resource: &str,
        requester: &LockRequester,
        token: u128,
    ) -> bool {
        match self.held.get_mut(resource) {
            Some(grant) if grant.requester == *requester => {
                grant.token = Some(token);
                true
            }
            _ => false,
        }
    }

    /// Takes in that `requester` holds `resource` with `token` (it says so
    /// when the nodes meet): of two holders, the larger token keeps it.
    pub(crate) fn meet(&mut self, resource: &str, requester: &LockRequester, token: u128) -> Met {
        let loser = match self.held.get_mut(resource) {
            Some(grant) if grant.requester == *requester => {
                grant.token = Some(token);
                return Met::Same;
            }
            Some(grant) if grant.token.is_some_and(|t| t > token) => return Met::Kept,
            Some(grant) => Some(grant.requester.clone()),
            None => None,
        };
        if self.full(&requester.node) {
            return Met::Full;
        }
        self.insert(resource, requester, Some(token));
        match loser {
            Some(loser) => Met::Replaced { loser },
            None => Met::Adopted,
        }
    }

    /// Frees `resource` if `requester` holds it; `true` if it did.
    pub(crate) fn release(&mut self, resource: &str, requester: &LockRequester) -> bool {
        if self
            .held
            .get(resource)
            .is_some_and(|g| g.requester == *requester)
        {
            self.held.remove(resource);
            self.uncount(&requester.node);
            true
        } else {
            false
        }
    }

    /// Who holds `resource` here, with the token it confirmed.
    pub(crate) fn holder(&self, resource: &str) -> Option<(&LockRequester, Option<u128>)> {
        self.held.get(resource).map(|g| (&g.requester, g.token))
    }

    /// Every resource held here with its holder and confirmed token, in
    /// no particular order.
    pub(crate) fn grants(&self) -> impl Iterator<Item = (&str, &LockRequester, Option<u128>)> {
        self.held
            .iter()
            .map(|(resource, g)| (resource.as_str(), &g.requester, g.token))
    }

    /// The nodes holding locks here.
    pub(crate) fn holders(&self) -> Vec<NodeName> {
        self.per_node.keys().cloned().collect()
    }

    /// How many resources are held here.
    pub(crate) fn len(&self) -> usize {
        self.held.len()
    }

    /// Frees every lock `node` holds here; how many there were.
    pub(crate) fn release_node(&mut self, node: &NodeName) -> usize {
        let before = self.held.len();
        self.held.retain(|_, grant| grant.requester.node != *node);
        self.per_node.remove(node);
        before - self.held.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn requester(node: &str, id: u64) -> LockRequester {
        LockRequester {
            node: node.parse().unwrap(),
            incarnation: 1,
            id,
        }
    }

    #[test]
    fn one_holder_at_a_time_and_a_free_resource_leaves_nothing() {
        let mut t = Table::default();
        let (a, b) = (requester("a@h", 1), requester("b@h", 1));
        assert_eq!(t.acquire("r", &a, 5), LockAnswer::Granted(5));
        assert_eq!(
            t.acquire("r", &a, 6),
            LockAnswer::Granted(6),
            "the holder may ask again"
        );
        assert_eq!(t.acquire("r", &b, 7), LockAnswer::Held);
        assert!(!t.release("r", &b), "only the holder releases");
        assert!(!t.confirm("r", &b, 9), "nor confirms");
        assert!(t.confirm("r", &a, 9));
        assert_eq!(t.holder("r"), Some((&a, Some(9))));
        assert!(t.release("r", &a));
        assert_eq!(t.acquire("r", &b, 8), LockAnswer::Granted(8));
        assert!(t.release("r", &b));
        assert_eq!(t.len(), 0);
        assert!(t.holders().is_empty(), "nothing kept for free resources");
    }

    #[test]
    fn of_two_holders_that_meet_the_larger_token_keeps_it() {
        let mut t = Table::default();
        let (a, b, c) = (
            requester("a@h", 1),
            requester("b@h", 1),
            requester("c@h", 1),
        );
        t.acquire("r", &a, 1);
        t.confirm("r", &a, 10);
        assert_eq!(t.meet("r", &b, 5), Met::Kept);
        assert_eq!(t.meet("r", &a, 10), Met::Same);
        assert_eq!(t.meet("r", &c, 20), Met::Replaced { loser: a.clone() });
        assert_eq!(t.holder("r"), Some((&c, Some(20))));
        assert_eq!(t.meet("free", &b, 3), Met::Adopted);
        // An unconfirmed grant (an attempt still running) loses.
        t.acquire("u", &a, 1);
        assert_eq!(t.meet("u", &b, 2), Met::Replaced { loser: a.clone() });
        assert!(!t.confirm("u", &a, 30), "the attempt learns it lost here");
        let mut holders = t.holders();
        holders.sort();
        assert_eq!(holders, vec![b.node.clone(), c.node.clone()]);
    }

    #[test]
    fn a_node_holds_at_most_its_share_and_loses_all_when_it_goes() {
        let mut t = Table::default();
        let a = requester("a@h", 1);
        for i in 0..MAX_PER_NODE {
            assert_eq!(t.acquire(&format!("r{i}"), &a, 1), LockAnswer::Granted(1));
        }
        assert_eq!(t.acquire("one-more", &a, 1), LockAnswer::TooMany);
        assert_eq!(t.meet("one-more", &a, 1), Met::Full);
        let b = requester("b@h", 1);
        assert_eq!(t.acquire("one-more", &b, 1), LockAnswer::Granted(1));
        assert!(t.release("r0", &a));
        assert_eq!(t.acquire("one-more-a", &a, 1), LockAnswer::Granted(1));
        assert_eq!(t.release_node(&a.node), MAX_PER_NODE);
        assert_eq!(t.holders(), vec![b.node.clone()]);
        assert_eq!(t.acquire("r1", &b, 2), LockAnswer::Granted(2));
        assert_eq!((t.next_id(), t.next_id()), (1, 2));
    }
}
