//! What a generation loop or a scheduler needs of a decoder, whichever
//! device it runs on: fresh caches, prefills (whole, or a chunk a slice at
//! a time), batched decode steps with an adapter per row, and copies of a
//! cache's prefix for reuse. The CPU's [`Llama`] implements it here
//! ([`CpuDecoder`]), the device decoder in `device.rs`; tailor-engine's
//! scheduler and [`crate::Sequence`] are written once over it, so
//! continuous batching, prefix reuse and adapters work the same on both.

use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::llama::{DecodeBuffers, LayeredPrefill, Llama, Logits};
use crate::lora::ActiveAdapter;

/// One sequence's keys and values, wherever they live.
pub trait DecoderCache {
    /// Positions it holds.
    fn len(&self) -> usize;

    /// True before the first position.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Bytes it takes (host or device memory).
    fn bytes(&self) -> usize;
}

/// A decoder a scheduler drives (see the module header).
pub trait Decoder {
    /// A sequence's keys and values.
    type Cache: DecoderCache;
    /// A prompt chunk whose prefill is under way.
    type Chunk;

    /// An empty cache.
    fn new_cache(&self) -> Result<Self::Cache>;

    /// A new cache holding the first `len` positions of `cache`.
    fn fork(&self, cache: &Self::Cache, len: usize) -> Result<Self::Cache>;

    /// Prefills `tokens` after what `cache` holds, with `adapter` on every
    /// token, and returns the last position's logits. After a reused
    /// prefix, at least [`Llama::EXACT_PREFILL_MIN`] tokens keep the
    /// result that of one prefill of the whole prompt.
    fn prefill(&mut self, tokens: &[u32], cache: &mut Self::Cache, adapter: Option<&ActiveAdapter>)
        -> Result<Vec<f32>>;

    /// Starts a chunk of a long prompt after what `cache` holds, to be run
    /// by [`Decoder::run_chunk`] a slice at a time.
    fn begin_chunk(
        &mut self,
        tokens: &[u32],
        cache: &Self::Cache,
        adapter: Option<&ActiveAdapter>,
    ) -> Result<Self::Chunk>;

    /// Runs one slice of a chunk (a layer on the CPU); the chunk back while
    /// more is left, `None` once its keys and values are in `cache`.
    fn run_chunk(&mut self, chunk: Self::Chunk, cache: &mut Self::Cache) -> Result<Option<Self::Chunk>>;

    /// One decode step: `tokens[i]` follows what `caches[i]` holds, with
    /// `adapters[i]` (an empty slice: the base for all); `vocab` logits
    /// per row.
    fn decode(
        &mut self,
        tokens: &[u32],
        caches: &mut [&mut Self::Cache],
        adapters: &[Option<ActiveAdapter>],
    ) -> Result<&mut [f32]>;
}

impl DecoderCache for KvCache {
    fn len(&self) -> usize {
        KvCache::len(self)
    }

    fn bytes(&self) -> usize {
        KvCache::bytes(self)
    }
}

/// The decoder on the CPU: a [`Llama`] and the buffers its decode steps
/// reuse.
pub struct CpuDecoder<'m> {
    llama: &'m Llama,
    buffers: DecodeBuffers,
}

impl<'m> CpuDecoder<'m> {
    /// `llama` as a [`Decoder`].
    pub fn new(llama: &'m Llama) -> CpuDecoder<'m> {
        CpuDecoder { llama, buffers: DecodeBuffers::default() }
    }
}

impl Decoder for CpuDecoder<'_> {
    type Cache = KvCache;
    type Chunk = LayeredPrefill;

    fn new_cache(&self) -> Result<KvCache> {
        Ok(self.llama.new_cache())
    }

    fn fork(&self, cache: &KvCache, len: usize) -> Result<KvCache> {
        let mut copy = cache.clone();
        copy.truncate(len);
        Ok(copy)
    }

    /// A fresh cache takes the whole prompt's prefill, a reused prefix the
    /// exact extension ([`Llama::extend`]).
    fn prefill(&mut self, tokens: &[u32], cache: &mut KvCache, adapter: Option<&ActiveAdapter>) -> Result<Vec<f32>> {
        match cache.len() {
            0 => self.llama.forward_adapted(tokens, cache, Logits::Last, adapter),
            _ => self.llama.extend_adapted(tokens, cache, Logits::Last, adapter),
        }
    }

    fn begin_chunk(
        &mut self,
        tokens: &[u32],
        cache: &KvCache,
        adapter: Option<&ActiveAdapter>,
    ) -> Result<LayeredPrefill> {
        self.llama.begin_prefill(tokens, cache, !cache.is_empty(), adapter)
    }

    fn run_chunk(&mut self, mut chunk: LayeredPrefill, cache: &mut KvCache) -> Result<Option<LayeredPrefill>> {
        if !self.llama.prefill_layers(&mut chunk, cache, 1)? {
            return Ok(Some(chunk));
        }
        self.llama.finish_prefill(chunk, cache, Logits::Last)?;
        Ok(None)
    }

    fn decode(
        &mut self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        adapters: &[Option<ActiveAdapter>],
    ) -> Result<&mut [f32]> {
        self.llama.forward_decode_adapted(tokens, caches, adapters, &mut self.buffers)
    }
}
