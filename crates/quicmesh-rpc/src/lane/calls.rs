//! The calls in progress on one lane, by id, as data: the caller's side
//! keeps the waiting replies in one, the callee's side the running
//! handlers. No I/O, no clock.

use std::collections::HashMap;
use std::collections::hash_map::Entry;

/// Why a call could not be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refused {
    /// The lane has ended: no call can start on it any more.
    Closed,
    /// A call with that id is in progress already (from a peer, a
    /// protocol violation).
    Duplicate(u64),
}

/// Calls in progress by id, each with what it needs at its end; once
/// closed, it takes no more.
#[derive(Debug)]
pub(super) struct CallTable<T> {
    calls: Option<HashMap<u64, T>>,
}

impl<T> Default for CallTable<T> {
    fn default() -> Self {
        Self {
            calls: Some(HashMap::new()),
        }
    }
}

impl<T> CallTable<T> {
    /// Adds call `id`.
    pub(super) fn insert(&mut self, id: u64, call: T) -> Result<(), Refused> {
        match self.calls.as_mut().ok_or(Refused::Closed)?.entry(id) {
            Entry::Occupied(_) => Err(Refused::Duplicate(id)),
            Entry::Vacant(slot) => {
                slot.insert(call);
                Ok(())
            }
        }
    }

    /// Whether call `id` is in progress.
    pub(super) fn contains(&self, id: u64) -> bool {
        self.calls
            .as_ref()
            .is_some_and(|calls| calls.contains_key(&id))
    }

    /// Takes call `id` out (it ended, or its reply came); `None` if it is
    /// not in progress.
    pub(super) fn remove(&mut self, id: u64) -> Option<T> {
        self.calls.as_mut()?.remove(&id)
    }

    /// Ends the table: hands back every call still in progress; later
    /// inserts are refused with [`Refused::Closed`].
    pub(super) fn close(&mut self) -> Vec<T> {
        self.calls
            .take()
            .map(|calls| calls.into_values().collect())
            .unwrap_or_default()
    }

    /// Calls in progress; `None` once closed.
    pub(super) fn len(&self) -> Option<usize> {
        self.calls.as_ref().map(HashMap::len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_come_out_once_and_ids_are_not_reused_while_in_progress() {
        let mut t = CallTable::default();
        assert_eq!(t.insert(1, "a"), Ok(()));
        assert!(t.contains(1));
        assert_eq!(t.insert(1, "b"), Err(Refused::Duplicate(1)));
        assert_eq!(t.insert(2, "b"), Ok(()));
        assert_eq!(t.len(), Some(2));
        assert_eq!(t.remove(1), Some("a"));
        assert_eq!(t.remove(1), None, "a reply for an ended call finds nobody");
        assert_eq!(
            t.insert(1, "c"),
            Ok(()),
            "an ended call's id may come again"
        );
    }

    #[test]
    fn a_closed_table_hands_back_everything_and_takes_nothing() {
        let mut t = CallTable::default();
        t.insert(1, "a").unwrap();
        t.insert(2, "b").unwrap();
        let mut left = t.close();
        left.sort_unstable();
        assert_eq!(left, vec!["a", "b"]);
        assert_eq!(t.len(), None);
        assert_eq!(t.insert(3, "c"), Err(Refused::Closed));
        assert_eq!(t.remove(1), None);
        assert!(t.close().is_empty());
    }
}
