//! One async lock per key (a sandbox id): operations on the same sandbox
//! take turns, operations on different sandboxes never wait for each other.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError, Weak};

use tokio::sync::OwnedMutexGuard;

/// Async locks by key, created on first use and forgotten when no one holds
/// or waits for them.
#[derive(Debug, Default)]
pub struct KeyedLocks {
    locks: Mutex<HashMap<String, Weak<tokio::sync::Mutex<()>>>>,
}

impl KeyedLocks {
    /// Locks `key`, waiting for whoever holds it.
    pub async fn lock(&self, key: &str) -> OwnedMutexGuard<()> {
        self.get(key).lock_owned().await
    }

    /// Locks `key` if no one holds it.
    pub fn try_lock(&self, key: &str) -> Option<OwnedMutexGuard<()>> {
        self.get(key).try_lock_owned().ok()
    }

    fn get(&self, key: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self.locks.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(lock) = locks.get(key).and_then(Weak::upgrade) {
            return lock;
        }
        // Forget the locks no one uses any more, now and then: the map
        // stays as large as the number of keys in use, give or take half.
        if locks.len() >= 64 && locks.len().is_power_of_two() {
            locks.retain(|_, w| w.strong_count() > 0);
        }
        let lock = Arc::new(tokio::sync::Mutex::new(()));
        locks.insert(key.to_owned(), Arc::downgrade(&lock));
        lock
    }

    /// How many keys the map remembers (for tests).
    #[cfg(test)]
    fn remembered(&self) -> usize {
        self.locks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn same_key_waits_other_keys_do_not() {
        let locks = KeyedLocks::default();
        let a = locks.lock("a").await;
        assert!(locks.try_lock("a").is_none());
        let b = locks.try_lock("b").expect("another key is free");
        drop(a);
        assert!(locks.try_lock("a").is_some());
        drop(b);
    }

    #[tokio::test]
    async fn a_waiter_gets_the_lock_when_it_is_released() {
        let locks = Arc::new(KeyedLocks::default());
        let held = locks.lock("a").await;
        let waiter = {
            let locks = locks.clone();
            tokio::spawn(async move {
                let _g = locks.lock("a").await;
            })
        };
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        drop(held);
        waiter.await.unwrap();
    }

    #[tokio::test]
    async fn unused_locks_are_forgotten() {
        let locks = KeyedLocks::default();
        for i in 0..10_000 {
            let _g = locks.lock(&i.to_string()).await;
        }
        assert!(locks.remembered() <= 128, "{}", locks.remembered());
    }
}
