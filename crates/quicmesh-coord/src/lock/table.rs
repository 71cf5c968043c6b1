//! One node's lock table as data: who holds each resource here, and the
//! fence of each resource, which only grows. No I/O, no clock.

use std::collections::HashMap;

use quicmesh_wire::NodeName;
use quicmesh_wire::coord::{LockAnswer, LockRequester};

/// One node's locks.
#[derive(Debug, Default)]
pub(crate) struct Table {
    held: HashMap<String, LockRequester>,
    fences: HashMap<String, u64>,
    last_id: u64,
}

impl Table {
    /// A number for this node's next request, never used before.
    pub(crate) fn next_id(&mut self) -> u64 {
        self.last_id += 1;
        self.last_id
    }

    /// Grants `resource` to `requester` unless another holds it here; a
    /// grant raises the resource's fence and answers with it.
    pub(crate) fn acquire(&mut self, resource: &str, requester: &LockRequester) -> LockAnswer {
        match self.held.get(resource) {
            Some(holder) if holder != requester => LockAnswer::Held,
            _ => {
                let fence = self.fences.entry(resource.to_owned()).or_insert(0);
                *fence += 1;
                let granted = *fence;
                self.held.insert(resource.to_owned(), requester.clone());
                LockAnswer::Granted(granted)
            }
        }
    }

    /// Raises `resource`'s fence to `token` (the token a holder got from
    /// all its nodes), so a later grant here is larger.
    pub(crate) fn confirm(&mut self, resource: &str, token: u64) {
        let fence = self.fences.entry(resource.to_owned()).or_insert(0);
        *fence = (*fence).max(token);
    }

    /// Frees `resource` if `requester` holds it; `true` if it did.
    pub(crate) fn release(&mut self, resource: &str, requester: &LockRequester) -> bool {
        if self.held.get(resource) == Some(requester) {
            self.held.remove(resource);
            true
        } else {
            false
        }
    }

    /// The nodes holding locks here.
    pub(crate) fn holders(&self) -> Vec<NodeName> {
        self.held.values().map(|r| r.node.clone()).collect()
    }

    /// Frees every lock `node` holds here; how many there were.
    pub(crate) fn release_node(&mut self, node: &NodeName) -> usize {
        let before = self.held.len();
        self.held.retain(|_, holder| holder.node != *node);
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
    fn one_holder_at_a_time_and_fences_only_grow() {
        let mut t = Table::default();
        let (a, b) = (requester("a@h", 1), requester("b@h", 1));
        assert_eq!(t.acquire("r", &a), LockAnswer::Granted(1));
        assert_eq!(
            t.acquire("r", &a),
            LockAnswer::Granted(2),
            "the holder may ask again"
        );
        assert_eq!(t.acquire("r", &b), LockAnswer::Held);
        assert!(!t.release("r", &b), "only the holder releases");
        assert!(t.release("r", &a));
        t.confirm("r", 10);
        assert_eq!(t.acquire("r", &b), LockAnswer::Granted(11));
        t.confirm("r", 3);
        assert!(t.release("r", &b));
        assert_eq!(
            t.acquire("r", &a),
            LockAnswer::Granted(12),
            "a smaller confirm never lowers the fence"
        );
        assert_eq!(t.acquire("other", &b), LockAnswer::Granted(1));
    }

    #[test]
    fn a_node_that_goes_loses_every_lock_it_held_and_ids_are_fresh() {
        let mut t = Table::default();
        let a1 = requester("a@h", 1);
        let a2 = requester("a@h", 2);
        let b = requester("b@h", 1);
        t.acquire("x", &a1);
        t.acquire("y", &a2);
        t.acquire("z", &b);
        let mut holders = t.holders();
        holders.sort();
        assert_eq!(holders.len(), 3);
        assert_eq!(t.release_node(&"a@h".parse().unwrap()), 2);
        assert_eq!(t.holders(), vec!["b@h".parse::<NodeName>().unwrap()]);
        assert_eq!(t.acquire("x", &b), LockAnswer::Granted(2));
        assert_eq!((t.next_id(), t.next_id()), (1, 2));
    }
}
