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
use tailor_model::{Decoder, DecoderCache, Llama};

/// Fewer shared tokens than this are not worth a copy of the cache.
const MIN_REUSE: usize = 4;

/// One remembered prompt.
struct Entry<C> {
    adapter: Option<AdapterKey>,
    tokens: Vec<u32>,
    cache: C,
}

/// Recent prompts and their caches (host or device memory, as the decoder
/// keeps them), least recently used first, bounded in bytes.
pub(crate) struct PrefixCache<C> {
    entries: VecDeque<Entry<C>>,
    bytes: usize,
    max_bytes: usize,
}

impl<C: DecoderCache> PrefixCache<C> {
    /// An empty cache holding at most `max_bytes` of keys and values.
    pub(crate) fn new(max_bytes: usize) -> PrefixCache<C> {
        PrefixCache { entries: VecDeque::new(), bytes: 0, max_bytes }
    }

    /// A cache holding the longest reusable prefix of `prompt`, if any (a
    /// copy made by `decoder`; none when that copy fails).
    pub(crate) fn lookup<D: Decoder<Cache = C>>(
        &mut self,
        decoder: &D,
        prompt: &[u32],
        adapter: Option<AdapterKey>,
    ) -> Option<C> {
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
        let cache = decoder.fork(&entry.cache, reuse).ok();
        self.entries.push_back(entry);
        cache
    }

    /// Remembers a prompt's cache (a copy, taken right after its prefill;
    /// nothing when the copy fails).
    pub(crate) fn insert<D: Decoder<Cache = C>>(
        &mut self,
        decoder: &D,
        prompt: &[u32],
        adapter: Option<AdapterKey>,
        cache: &C,
    ) {
        if prompt.len() < Llama::EXACT_PREFILL_MIN || cache.bytes() > self.max_bytes {
            return;
        }
        if let Some(i) = self.entries.iter().position(|e| e.tokens == prompt && e.adapter == adapter) {
            if let Some(entry) = self.entries.remove(i) {
                self.entries.push_back(entry);
            }
            return;
        }
        let Ok(copy) = decoder.fork(cache, cache.len()) else { return };
        self.bytes += copy.bytes();
        self.entries.push_back(Entry { adapter, tokens: prompt.to_vec(), cache: copy });
        while self.bytes > self.max_bytes {
            let Some(evicted) = self.entries.pop_front() else { break };
            self.bytes -= evicted.cache.bytes();
        }
    }
}

fn common_prefix(a: &[u32], b: &[u32]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}
