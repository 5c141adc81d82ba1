//! In-process adapters: a key store (tests and reference), the embedded-mode snapshot store
//! and the embedded read cache. All are bounded where they hold unbounded input.

use std::collections::{HashMap, HashSet};
use std::num::NonZeroUsize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lru::LruCache;
use parking_lot::Mutex;
use serde_json::Value;

use crate::error::{KernelError, KernelResult};
use crate::ports::{CacheStats, KeyStore, ReadCache, SnapshotStore};

fn capacity(n: usize) -> NonZeroUsize {
    NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN)
}

/// Wrapped data keys in a map. Remembers forgotten key ids so they stay forgotten.
#[derive(Debug, Default)]
pub struct MemoryKeyStore {
    inner: Mutex<KeyState>,
}

#[derive(Debug, Default)]
struct KeyState {
    keys: HashMap<String, Vec<u8>>,
    forgotten: HashSet<String>,
}

impl MemoryKeyStore {
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl KeyStore for MemoryKeyStore {
    async fn get(&self, key_id: &str) -> KernelResult<Option<Vec<u8>>> {
        let state = self.inner.lock();
        if state.forgotten.contains(key_id) {
            return Err(KernelError::Forgotten(key_id.to_string()));
        }
        Ok(state.keys.get(key_id).cloned())
    }

    async fn put_if_absent(&self, key_id: &str, wrapped: &[u8]) -> KernelResult<Vec<u8>> {
        let mut state = self.inner.lock();
        if state.forgotten.contains(key_id) {
            return Err(KernelError::Forgotten(key_id.to_string()));
        }
        Ok(state
            .keys
            .entry(key_id.to_string())
            .or_insert_with(|| wrapped.to_vec())
            .clone())
    }

    async fn forget(&self, key_id: &str) -> KernelResult<bool> {
        let mut state = self.inner.lock();
        state.forgotten.insert(key_id.to_string());
        Ok(state.keys.remove(key_id).is_some())
    }

    /// Live (not yet forgotten) key ids `{type}/{aggregate_id}`.
    async fn key_ids_for(&self, aggregate_id: &str) -> KernelResult<Vec<String>> {
        let state = self.inner.lock();
        let mut ids: Vec<String> = state
            .keys
            .keys()
            .filter(|k| k.split_once('/').is_some_and(|(_, id)| id == aggregate_id))
            .cloned()
            .collect();
        ids.sort();
        Ok(ids)
    }
}

/// The embedded-mode snapshot store: an LRU bounded by entry count.
#[derive(Debug)]
pub struct MemorySnapshotStore {
    inner: Mutex<LruCache<String, Vec<u8>>>,
}

impl MemorySnapshotStore {
    pub fn new(capacity_entries: usize) -> Self {
        Self {
            inner: Mutex::new(LruCache::new(capacity(capacity_entries))),
        }
    }

    pub fn len(&self) -> usize {
        self.inner.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[async_trait]
impl SnapshotStore for MemorySnapshotStore {
    async fn get(&self, key: &str) -> KernelResult<Option<Vec<u8>>> {
        Ok(self.inner.lock().get(key).cloned())
    }

    async fn put(&self, key: &str, bytes: Vec<u8>) -> KernelResult<()> {
        self.inner.lock().put(key.to_string(), bytes);
        Ok(())
    }

    async fn purge(&self, prefix: &str) -> KernelResult<()> {
        let mut inner = self.inner.lock();
        let doomed: Vec<String> = inner
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            inner.pop(&key);
        }
        Ok(())
    }

    async fn ping(&self) -> KernelResult<()> {
        Ok(())
    }
}

/// The embedded read cache: an LRU of JSON values with optional per-entry expiry.
#[derive(Debug)]
pub struct MemoryCache {
    inner: Mutex<LruCache<String, (Value, Option<Instant>)>>,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl MemoryCache {
    pub fn new(capacity_entries: usize) -> Self {
        Self {
            inner: Mutex::new(LruCache::new(capacity(capacity_entries))),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    fn lookup(&self, key: &str) -> Option<Value> {
        let mut inner = self.inner.lock();
        let expired = match inner.get(key) {
            None => return None,
            Some((value, expiry)) => match expiry {
                Some(at) if *at <= Instant::now() => true,
                _ => return Some(value.clone()),
            },
        };
        if expired {
            inner.pop(key);
        }
        None
    }
}

#[async_trait]
impl ReadCache for MemoryCache {
    async fn get(&self, key: &str) -> KernelResult<Option<Value>> {
        let found = self.lookup(key);
        let counter = if found.is_some() {
            &self.hits
        } else {
            &self.misses
        };
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(found)
    }

    async fn put(&self, key: &str, value: &Value, ttl: Option<Duration>) -> KernelResult<()> {
        // A TTL too large to represent means "no expiry".
        let expiry = ttl.and_then(|ttl| Instant::now().checked_add(ttl));
        self.inner
            .lock()
            .put(key.to_string(), (value.clone(), expiry));
        Ok(())
    }

    async fn invalidate(&self, key: &str) -> KernelResult<()> {
        self.inner.lock().pop(key);
        Ok(())
    }

    async fn invalidate_prefix(&self, prefix: &str) -> KernelResult<()> {
        let mut inner = self.inner.lock();
        let doomed: Vec<String> = inner
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.clone())
            .collect();
        for key in doomed {
            inner.pop(&key);
        }
        Ok(())
    }

    async fn stats(&self) -> KernelResult<CacheStats> {
        Ok(CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            size: self.inner.lock().len() as u64,
        })
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[tokio::test]
    async fn key_store_remembers_forgotten_ids() {
        let store = MemoryKeyStore::new();
        assert_eq!(store.get("user/1").await.unwrap(), None);
        assert_eq!(store.put_if_absent("user/1", b"a").await.unwrap(), b"a");
        assert_eq!(store.put_if_absent("user/1", b"b").await.unwrap(), b"a");
        store.put_if_absent("order/1", b"c").await.unwrap();
        store.put_if_absent("user/10", b"d").await.unwrap();
        assert_eq!(
            store.key_ids_for("1").await.unwrap(),
            vec!["order/1".to_string(), "user/1".to_string()]
        );
        assert!(store.forget("user/1").await.unwrap());
        assert!(!store.forget("user/1").await.unwrap());
        assert!(matches!(
            store.get("user/1").await,
            Err(KernelError::Forgotten(_))
        ));
        assert!(matches!(
            store.put_if_absent("user/1", b"e").await,
            Err(KernelError::Forgotten(_))
        ));
        assert_eq!(store.key_ids_for("1").await.unwrap(), vec!["order/1"]);
    }

    #[tokio::test]
    async fn snapshot_store_is_bounded_and_purges_by_prefix() {
        let store = MemorySnapshotStore::new(2);
        store.put("snap:a:1", vec![1]).await.unwrap();
        store.put("snap:a:2", vec![2]).await.unwrap();
        store.put("snap:b:1", vec![3]).await.unwrap();
        assert_eq!(store.len(), 2);
        assert_eq!(store.get("snap:a:1").await.unwrap(), None);
        store.purge("snap:a:").await.unwrap();
        assert_eq!(store.get("snap:a:2").await.unwrap(), None);
        assert_eq!(store.get("snap:b:1").await.unwrap(), Some(vec![3]));
    }

    #[tokio::test]
    async fn cache_counts_hits_misses_and_expires() {
        let cache = MemoryCache::new(10);
        assert_eq!(cache.get("k").await.unwrap(), None);
        cache.put("k", &json!({"a": 1}), None).await.unwrap();
        assert_eq!(cache.get("k").await.unwrap(), Some(json!({"a": 1})));
        cache
            .put("gone", &json!(1), Some(Duration::ZERO))
            .await
            .unwrap();
        assert_eq!(cache.get("gone").await.unwrap(), None);
        cache.put("p:1", &json!(1), None).await.unwrap();
        cache.put("p:2", &json!(2), None).await.unwrap();
        cache.invalidate_prefix("p:").await.unwrap();
        cache.invalidate("k").await.unwrap();
        assert_eq!(
            cache.stats().await.unwrap(),
            CacheStats {
                hits: 1,
                misses: 2,
                size: 0
            }
        );
    }
}
