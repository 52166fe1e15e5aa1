//! The exact-match answer cache: a deterministic request (greedy, or
//! sampled with a fixed seed) for the same stage and the same final prompt
//! gets the stored answer, until it expires or is evicted (oldest first).
//! Bounded both in answers and in bytes (keys hold whole prompts, RAG
//! context included, so a count alone does not bound memory).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bounded, expiring map from request key to response body.
pub struct AnswerCache {
    limits: CacheLimits,
    entries: Mutex<Entries>,
}

/// How much the cache keeps.
#[derive(Debug, Clone, Copy)]
pub struct CacheLimits {
    /// Answers kept (0 disables the cache).
    pub entries: usize,
    /// Bytes of keys and answers kept.
    pub bytes: usize,
    /// How long an answer stays valid.
    pub ttl: Duration,
}

/// One stored answer.
struct Entry {
    stored: Instant,
    body: String,
}

#[derive(Default)]
struct Entries {
    by_key: HashMap<String, Entry>,
    /// Keys, oldest first.
    order: VecDeque<String>,
    /// Bytes of every key and body held.
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &str) {
        if let Some(entry) = self.by_key.remove(key) {
            self.bytes -= key.len() + entry.body.len();
            self.order.retain(|k| k != key);
        }
    }

    fn evict_oldest(&mut self) {
        if let Some(old) = self.order.pop_front() {
            if let Some(entry) = self.by_key.remove(&old) {
                self.bytes -= old.len() + entry.body.len();
            }
        }
    }
}

impl AnswerCache {
    /// A cache within `limits`.
    pub fn new(limits: CacheLimits) -> AnswerCache {
        AnswerCache { limits, entries: Mutex::new(Entries::default()) }
    }

    fn enabled(&self) -> bool {
        self.limits.entries > 0 && self.limits.bytes > 0
    }

    /// The stored answer for `key`, if fresh.
    pub fn get(&self, key: &str) -> Option<String> {
        if !self.enabled() {
            return None;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        match entries.by_key.get(key) {
            Some(entry) if entry.stored.elapsed() <= self.limits.ttl => Some(entry.body.clone()),
            Some(_) => {
                entries.remove(key);
                None
            }
            None => None,
        }
    }

    /// Stores an answer, evicting the oldest beyond the limits; an answer
    /// larger than the whole byte budget is not stored.
    pub fn put(&self, key: String, body: String) {
        let size = key.len() + body.len();
        if !self.enabled() || size > self.limits.bytes {
            return;
        }
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(&key);
        entries.bytes += size;
        entries.order.push_back(key.clone());
        entries.by_key.insert(key, Entry { stored: Instant::now(), body });
        while entries.order.len() > self.limits.entries || entries.bytes > self.limits.bytes {
            entries.evict_oldest();
        }
    }

    /// Forgets every answer (an adapter was loaded or unloaded: a name
    /// may now stand for other weights).
    pub fn clear(&self) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        *entries = Entries::default();
    }

    /// Bytes held now (for /metrics).
    pub fn bytes(&self) -> usize {
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).bytes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_in_entries_and_in_bytes_oldest_out_first() {
        let cache = AnswerCache::new(CacheLimits { entries: 3, bytes: 100, ttl: Duration::from_secs(60) });
        for i in 0..4 {
            cache.put(format!("k{i}"), "x".repeat(10));
        }
        assert_eq!(cache.get("k0"), None, "the fourth answer evicted the first");
        assert!(cache.get("k3").is_some());
        cache.put("big".into(), "y".repeat(80));
        assert_eq!(cache.bytes(), 2 + 10 + 3 + 80, "bytes evicted down to the budget");
        assert!(cache.get("k3").is_some() && cache.get("k2").is_none());
        cache.put("huge".into(), "z".repeat(200));
        assert_eq!(cache.get("huge"), None, "larger than the whole budget: not stored");
        cache.put("k3".into(), "w".repeat(5));
        assert_eq!(cache.get("k3").as_deref(), Some("wwwww"), "a key stored again replaces its answer");
        assert_eq!(cache.bytes(), 3 + 80 + 2 + 5);
    }
}
