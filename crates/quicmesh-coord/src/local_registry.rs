//! A registry local to one process, like Elixir's `Registry`: keys with
//! unique or duplicate registrations, each held by a guard that
//! unregisters it when dropped (as a process's entries go when it exits).

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::sync::{Arc, Mutex, MutexGuard};

/// Whether a key may be registered more than once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keys {
    /// At most one registration per key.
    Unique,
    /// Any number of registrations per key.
    Duplicate,
}

/// The key is taken (a [`Keys::Unique`] registry).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the key is already registered")]
pub struct AlreadyRegistered;

/// A process-local registry of values under keys. Cheap to clone; clones
/// share the entries.
pub struct LocalRegistry<K, V> {
    keys: Keys,
    inner: Arc<Mutex<Entries<K, V>>>,
}

struct Entries<K, V> {
    by_key: HashMap<K, Vec<(u64, V)>>,
    next_id: u64,
}

impl<K, V> Clone for LocalRegistry<K, V> {
    fn clone(&self) -> Self {
        Self {
            keys: self.keys,
            inner: self.inner.clone(),
        }
    }
}

impl<K, V> fmt::Debug for LocalRegistry<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("LocalRegistry")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> LocalRegistry<K, V> {
    /// An empty registry.
    pub fn new(keys: Keys) -> Self {
        Self {
            keys,
            inner: Arc::new(Mutex::new(Entries {
                by_key: HashMap::new(),
                next_id: 0,
            })),
        }
    }

    fn entries(&self) -> MutexGuard<'_, Entries<K, V>> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers `value` under `key`, until the returned guard is dropped.
    pub fn register(&self, key: K, value: V) -> Result<Registered<K, V>, AlreadyRegistered> {
        let mut entries = self.entries();
        let taken = entries.by_key.get(&key).is_some_and(|v| !v.is_empty());
        if self.keys == Keys::Unique && taken {
            return Err(AlreadyRegistered);
        }
        entries.next_id += 1;
        let id = entries.next_id;
        entries
            .by_key
            .entry(key.clone())
            .or_default()
            .push((id, value));
        Ok(Registered {
            registry: self.clone(),
            key: Some(key),
            id,
        })
    }

    /// The values under `key`, oldest first.
    pub fn lookup(&self, key: &K) -> Vec<V> {
        self.entries()
            .by_key
            .get(key)
            .map(|v| v.iter().map(|(_, value)| value.clone()).collect())
            .unwrap_or_default()
    }

    /// Every key with at least one registration.
    pub fn keys(&self) -> Vec<K> {
        self.entries().by_key.keys().cloned().collect()
    }

    /// How many registrations there are in all.
    pub fn count(&self) -> usize {
        self.entries().by_key.values().map(Vec::len).sum()
    }

    fn remove(&self, key: &K, id: u64) {
        let mut entries = self.entries();
        if let Some(values) = entries.by_key.get_mut(key) {
            values.retain(|(i, _)| *i != id);
            if values.is_empty() {
                entries.by_key.remove(key);
            }
        }
    }
}

/// One registration: dropping it unregisters.
#[must_use = "the registration ends when this is dropped"]
pub struct Registered<K: Eq + Hash + Clone, V: Clone> {
    registry: LocalRegistry<K, V>,
    key: Option<K>,
    id: u64,
}

impl<K: Eq + Hash + Clone, V: Clone> fmt::Debug for Registered<K, V> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registered")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl<K: Eq + Hash + Clone, V: Clone> Drop for Registered<K, V> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            self.registry.remove(&key, self.id);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unique_keys_refuse_a_second_registration_until_the_first_is_dropped() {
        let r = LocalRegistry::new(Keys::Unique);
        let first = r.register("job", 1).expect("free");
        assert_eq!(r.register("job", 2).err(), Some(AlreadyRegistered));
        assert_eq!(r.lookup(&"job"), vec![1]);
        drop(first);
        assert!(r.lookup(&"job").is_empty());
        let _second = r.register("job", 2).expect("free again");
        assert_eq!(r.lookup(&"job"), vec![2]);
    }

    #[test]
    fn duplicate_keys_keep_every_registration_in_order() {
        let r = LocalRegistry::new(Keys::Duplicate);
        let a = r.register("topic", "a").expect("a");
        let b = r.register("topic", "b").expect("b");
        let _c = r.register("other", "c").expect("c");
        assert_eq!(r.lookup(&"topic"), vec!["a", "b"]);
        assert_eq!(r.count(), 3);
        drop(a);
        assert_eq!(r.lookup(&"topic"), vec!["b"]);
        drop(b);
        let mut keys = r.keys();
        keys.sort();
        assert_eq!(keys, vec!["other"]);
    }

    #[test]
    fn a_task_that_ends_takes_its_registrations_with_it() {
        let r = LocalRegistry::new(Keys::Unique);
        let r2 = r.clone();
        let ended = std::thread::spawn(move || {
            let _held = r2.register(7u32, "worker").expect("free");
            panic!("the worker fails");
        })
        .join();
        assert!(ended.is_err());
        assert!(r.lookup(&7).is_empty(), "unregistered on unwind");
    }
}
