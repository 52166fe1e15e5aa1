//! KV-prefix reuse: the keys and values of recent prompts, kept so a new
//! prompt that starts the same way (a shared system prompt, a RAG template)
//! prefills only what differs. Reuse is exact: a prefix is only taken from
//! prompts long enough to have been prefilled on the gemm path, and enough
//! tokens are always left to extend on that same path, so the result equals
//! a full prefill bit for bit (see `Llama::extend`). Entries are keyed by
//! the adapter (and scale) too: keys and values computed with one adapter
//! are never reused for another, or for the base.

use std::collections::VecDeque;
use tailor_model::lora::AdapterKey;
use tailor_model::{KvCache, Llama};

/// Fewer shared tokens than this are not worth a copy of the cache.
const MIN_REUSE: usize = 4;

/// One remembered prompt.
struct Entry {
    adapter: Option<AdapterKey>,
    tokens: Vec<u32>,
    cache: KvCache,
}

/// Recent prompts and their caches, least recently used first, bounded in bytes.
pub(crate) struct PrefixCache {
    entries: VecDeque<Entry>,
    bytes: usize,
    max_bytes: usize,
}

impl PrefixCache {
    /// An empty cache holding at most `max_bytes` of keys and values.
    pub(crate) fn new(max_bytes: usize) -> PrefixCache {
        PrefixCache { entries: VecDeque::new(), bytes: 0, max_bytes }
    }

    /// A cache holding the longest reusable prefix of `prompt`, if any.
    pub(crate) fn lookup(&mut self, prompt: &[u32], adapter: Option<AdapterKey>) -> Option<KvCache> {
        if prompt.len() < Llama::EXACT_PREFILL_MIN + MIN_REUSE {
            return None;
        }
        let (index, shared) = self
            .entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.adapter == adapter)
            .map(|(i, e)| (i, common_prefix(&e.tokens, prompt)))
            .max_by_key(|&(_, shared)| shared)?;
        let reuse = shared.min(prompt.len() - Llama::EXACT_PREFILL_MIN);
        if reuse < MIN_REUSE {
            return None;
        }
        let entry = self.entries.remove(index)?;
        let mut cache = entry.cache.clone();
        cache.truncate(reuse);
        self.entries.push_back(entry);
        Some(cache)
    }

    /// Remembers a prompt's cache (a copy, taken right after its prefill).
    pub(crate) fn insert(&mut self, prompt: &[u32], adapter: Option<AdapterKey>, cache: &KvCache) {
        if prompt.len() < Llama::EXACT_PREFILL_MIN || cache.bytes() > self.max_bytes {
            return;
        }
        if let Some(i) = self.entries.iter().position(|e| e.tokens == prompt && e.adapter == adapter) {
            if let Some(entry) = self.entries.remove(i) {
                self.entries.push_back(entry);
            }
            return;
        }
        self.bytes += cache.bytes();
        self.entries.push_back(Entry { adapter, tokens: prompt.to_vec(), cache: cache.clone() });
        while self.bytes > self.max_bytes {
            let Some(evicted) = self.entries.pop_front() else { break };
            self.bytes -= evicted.cache.bytes();
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
