//! A byte-bounded in-memory cache of whole objects, shared by every region.
//!
//! Objects the backend reads or writes in full are kept (if small enough) so a later `Get`
//! copies straight from memory into the guest's buffer. Entries expire after `ttl`, because
//! writers outside Nexus can change the store; the backend's own puts and deletes invalidate
//! at once. Eviction is least-recently-used.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::config::CacheConfig;

/// What a `Head` or `Get` reports about an object.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ObjectInfo {
    pub size: u64,
    pub etag: Option<String>,
    /// RFC 3339, millisecond precision, UTC.
    pub last_modified: String,
    pub content_type: Option<String>,
    pub metadata: Vec<(String, String)>,
}

/// A cached object.
#[derive(Debug, Clone)]
pub struct Cached {
    pub info: ObjectInfo,
    pub bytes: Bytes,
}

#[derive(Debug)]
struct Entry {
    object: Cached,
    inserted: Instant,
    used: u64,
}

#[derive(Debug, Default)]
struct State {
    entries: HashMap<(String, String), Entry>,
    bytes: u64,
    clock: u64,
}

/// The cache.
#[derive(Debug)]
pub struct ObjectCache {
    max_bytes: u64,
    max_object_bytes: u64,
    ttl: Duration,
    state: Mutex<State>,
}

impl ObjectCache {
    /// A cache as configured; `max_bytes == 0` disables it.
    pub fn new(config: &CacheConfig) -> Self {
        Self {
            max_bytes: config.max_bytes,
            max_object_bytes: config.max_object_bytes.min(config.max_bytes),
            ttl: Duration::from_secs(config.ttl_secs),
            state: Mutex::default(),
        }
    }

    /// Whether an object of `size` bytes would be kept.
    pub fn admits(&self, size: u64) -> bool {
        size <= self.max_object_bytes
    }

    /// A fresh cached copy of `bucket/key`, if any.
    pub fn get(&self, bucket: &str, key: &str, now: Instant) -> Option<Cached> {
        let mut state = self.lock();
        state.clock += 1;
        let clock = state.clock;
        let id = (bucket.to_owned(), key.to_owned());
        let fresh = state.entries.get(&id).map(|e| now.duration_since(e.inserted) < self.ttl)?;
        if !fresh {
            state.remove(&id);
            return None;
        }
        let entry = state.entries.get_mut(&id)?;
        entry.used = clock;
        Some(entry.object.clone())
    }

    /// Keeps `object` as the current content of `bucket/key`.
    pub fn insert(&self, bucket: &str, key: &str, object: Cached, now: Instant) {
        let size = object.bytes.len() as u64;
        if !self.admits(size) {
            self.invalidate(bucket, key);
            return;
        }
        let mut state = self.lock();
        let id = (bucket.to_owned(), key.to_owned());
        state.remove(&id);
        while state.bytes + size > self.max_bytes {
            let Some(oldest) =
                state.entries.iter().min_by_key(|(_, e)| e.used).map(|(k, _)| k.clone())
            else {
                break;
            };
            state.remove(&oldest);
        }
        state.clock += 1;
        state.bytes += size;
        let used = state.clock;
        state.entries.insert(id, Entry { object, inserted: now, used });
    }

    /// Forgets `bucket/key` (after a put or delete).
    pub fn invalidate(&self, bucket: &str, key: &str) {
        self.lock().remove(&(bucket.to_owned(), key.to_owned()));
    }

    /// Bytes currently cached.
    pub fn bytes(&self) -> u64 {
        self.lock().bytes
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl State {
    fn remove(&mut self, id: &(String, String)) {
        if let Some(entry) = self.entries.remove(id) {
            self.bytes -= entry.object.bytes.len() as u64;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cache(max_bytes: u64, max_object_bytes: u64) -> ObjectCache {
        ObjectCache::new(&CacheConfig { max_bytes, max_object_bytes, ttl_secs: 10 })
    }

    fn object(len: usize) -> Cached {
        let info = ObjectInfo {
            size: len as u64,
            etag: None,
            last_modified: String::new(),
            content_type: None,
            metadata: vec![],
        };
        Cached { info, bytes: Bytes::from(vec![7; len]) }
    }

    #[test]
    fn evicts_least_recently_used_within_the_byte_budget() {
        let cache = cache(100, 60);
        let now = Instant::now();
        cache.insert("b", "x", object(40), now);
        cache.insert("b", "y", object(40), now);
        assert!(cache.get("b", "x", now).is_some());
        cache.insert("b", "z", object(40), now);
        assert!(cache.get("b", "y", now).is_none(), "y was least recently used");
        assert!(cache.get("b", "x", now).is_some());
        assert_eq!(cache.bytes(), 80);
        cache.insert("b", "big", object(61), now);
        assert!(cache.get("b", "big", now).is_none(), "over max_object_bytes");
    }

    #[test]
    fn entries_expire_and_can_be_invalidated() {
        let cache = cache(100, 100);
        let now = Instant::now();
        cache.insert("b", "x", object(10), now);
        assert!(cache.get("b", "x", now + Duration::from_secs(11)).is_none());
        assert_eq!(cache.bytes(), 0);
        cache.insert("b", "x", object(10), now);
        cache.invalidate("b", "x");
        assert!(cache.get("b", "x", now).is_none());
    }

    #[test]
    fn disabled_cache_keeps_nothing() {
        let cache = cache(0, 64 << 20);
        cache.insert("b", "x", object(1), Instant::now());
        assert!(cache.get("b", "x", Instant::now()).is_none());
    }
}
