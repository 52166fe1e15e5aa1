//! The exact-match answer cache: a deterministic request (greedy, or
//! sampled with a fixed seed) for the same stage and the same final prompt
//! gets the stored answer, until it expires or is evicted (oldest first).

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Bounded, expiring map from request key to response body.
pub struct AnswerCache {
    capacity: usize,
    ttl: Duration,
    entries: Mutex<Entries>,
}

/// Answers by key (with when they were stored) and keys oldest first.
type Entries = (HashMap<String, (Instant, String)>, VecDeque<String>);

impl AnswerCache {
    /// A cache of at most `capacity` answers, each kept `ttl` (capacity 0 disables it).
    pub fn new(capacity: usize, ttl: Duration) -> AnswerCache {
        AnswerCache { capacity, ttl, entries: Mutex::new((HashMap::new(), VecDeque::new())) }
    }

    /// The stored answer for `key`, if fresh.
    pub fn get(&self, key: &str) -> Option<String> {
        if self.capacity == 0 {
            return None;
        }
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        match map.get(key) {
            Some((at, body)) if at.elapsed() <= self.ttl => Some(body.clone()),
            Some(_) => {
                map.remove(key);
                order.retain(|k| k != key);
                None
            }
            None => None,
        }
    }

    /// Stores an answer, evicting the oldest beyond capacity.
    pub fn put(&self, key: String, body: String) {
        if self.capacity == 0 {
            return;
        }
        let mut guard = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        let (map, order) = &mut *guard;
        if map.insert(key.clone(), (Instant::now(), body)).is_none() {
            order.push_back(key);
        }
        while order.len() > self.capacity {
            if let Some(old) = order.pop_front() {
                map.remove(&old);
            }
        }
    }
}
