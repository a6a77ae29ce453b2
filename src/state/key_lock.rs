//! One writer per key inside a process.
//!
//! Compare-and-set keeps two writers of one key from both winning, but
//! under contention it makes them lose: 32 requests reserving the same sku
//! each read revision N, one writes N+1, 31 retry, and a handful give up
//! after their attempts — a popular product turned into refusals. Writers
//! of one key in the same process therefore queue here first and meet no
//! conflict among themselves; compare-and-set still guards against other
//! processes (a second instance), which are retried as before.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{Mutex as AsyncMutex, OwnedMutexGuard};

/// Per-key locks, created on demand and dropped when nobody holds or waits.
#[derive(Debug, Default)]
pub(crate) struct KeyLocks {
    locks: Mutex<HashMap<String, Arc<AsyncMutex<()>>>>,
}

/// Held while one writer changes its key; dropping it lets the next in.
pub struct KeyGuard<'a> {
    owner: &'a KeyLocks,
    key: String,
    lock: Arc<AsyncMutex<()>>,
    held: Option<OwnedMutexGuard<()>>,
}

impl KeyLocks {
    /// Waits until this task is the only writer of `key` in the process.
    pub(crate) async fn lock(&self, key: &str) -> KeyGuard<'_> {
        let lock = match self.locks.lock() {
            Ok(mut locks) => locks.entry(key.to_owned()).or_default().clone(),
            // A poisoned map only means a panic elsewhere; lock alone.
            Err(_) => Arc::new(AsyncMutex::new(())),
        };
        let held = Some(lock.clone().lock_owned().await);
        KeyGuard {
            owner: self,
            key: key.to_owned(),
            lock,
            held,
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.locks.lock().map(|l| l.len()).unwrap_or_default()
    }
}

impl std::fmt::Debug for KeyGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyGuard").field("key", &self.key).finish()
    }
}

impl Drop for KeyGuard<'_> {
    fn drop(&mut self) {
        self.held.take();
        if let Ok(mut locks) = self.owner.locks.lock() {
            // The map's reference and ours: nobody else holds or waits (a
            // new waiter would need the map, which is locked right now).
            if Arc::strong_count(&self.lock) == 2 {
                locks.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn writers_of_one_key_take_turns_and_the_lock_goes_away() {
        let locks = Arc::new(KeyLocks::default());
        let inside = Arc::new(AtomicUsize::new(0));
        let most = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..32 {
            let (locks, inside, most) = (locks.clone(), inside.clone(), most.clone());
            tasks.push(tokio::spawn(async move {
                let _turn = locks.lock("sku-1").await;
                let now = inside.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(now, Ordering::SeqCst);
                tokio::task::yield_now().await;
                inside.fetch_sub(1, Ordering::SeqCst);
            }));
        }
        for task in tasks {
            assert!(task.await.is_ok());
        }
        assert_eq!(most.load(Ordering::SeqCst), 1, "one writer at a time");
        assert_eq!(locks.len(), 0, "no lock left behind");
        // Other keys do not wait for each other.
        let a = locks.lock("a").await;
        let b = tokio::time::timeout(std::time::Duration::from_secs(1), locks.lock("b")).await;
        assert!(b.is_ok());
        drop(a);
    }
}
