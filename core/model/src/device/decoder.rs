//! The device decoder as a [`Decoder`], so tailor-engine's scheduler runs
//! it as it runs the CPU's: caches in device memory, prefix copies made on
//! the device, and adapters uploaded on first use and kept (the least
//! recently used one leaves when the slots are full), so a decode batch
//! mixes them by BGMV.

use super::{DeviceAdapter, DeviceKvCache, DeviceLlama};
use crate::decoder::{Decoder, DecoderCache};
use crate::error::Result;
use crate::llama::Logits;
use crate::lora::{ActiveAdapter, AdapterKey};
use tailor_tensor::cuda::backend::Executor;

/// Adapters kept on the device unless told otherwise.
pub const DEFAULT_ADAPTER_SLOTS: usize = 64;

/// Positions a new cache has room for before it first grows, unless told
/// otherwise.
pub const DEFAULT_FIRST_CACHE_POSITIONS: usize = 256;

/// How a [`DeviceDecoder`] uses device memory.
#[derive(Debug, Clone, Copy)]
pub struct DeviceOptions {
    /// Adapters kept uploaded (at least one).
    pub adapter_slots: usize,
    /// Positions a new cache has room for; it doubles as it fills, up to
    /// the context length.
    pub first_cache_positions: usize,
}

impl Default for DeviceOptions {
    fn default() -> DeviceOptions {
        DeviceOptions { adapter_slots: DEFAULT_ADAPTER_SLOTS, first_cache_positions: DEFAULT_FIRST_CACHE_POSITIONS }
    }
}

/// A [`DeviceLlama`] driven through [`Decoder`].
pub struct DeviceDecoder<'m, E: Executor> {
    device: DeviceLlama<'m, E>,
    /// Uploaded adapters, least recently used first.
    adapters: Vec<(AdapterKey, DeviceAdapter<E::Block>)>,
    options: DeviceOptions,
    logits: Vec<f32>,
}

/// A prompt chunk for the device: it runs whole, in one slice (a device
/// prefill of a chunk takes milliseconds).
pub struct DeviceChunk {
    tokens: Vec<u32>,
    adapter: Option<ActiveAdapter>,
}

impl<'m, E: Executor> DeviceDecoder<'m, E> {
    /// `device` as a [`Decoder`], keeping up to `adapter_slots` adapters
    /// uploaded (at least one).
    pub fn new(device: DeviceLlama<'m, E>, adapter_slots: usize) -> DeviceDecoder<'m, E> {
        DeviceDecoder::with_options(device, DeviceOptions { adapter_slots, ..DeviceOptions::default() })
    }

    /// `device` as a [`Decoder`] with `options`.
    pub fn with_options(device: DeviceLlama<'m, E>, options: DeviceOptions) -> DeviceDecoder<'m, E> {
        let options = DeviceOptions { adapter_slots: options.adapter_slots.max(1), ..options };
        DeviceDecoder { device, adapters: Vec::new(), options, logits: Vec::new() }
    }

    /// The device decoder it drives.
    pub fn device(&self) -> &DeviceLlama<'m, E> {
        &self.device
    }

    /// Adapters uploaded now.
    pub fn resident_adapters(&self) -> usize {
        self.adapters.len()
    }

    /// Makes every adapter of `wanted` resident (uploading the missing
    /// ones, evicting the least recently used that `wanted` does not name)
    /// and marks them most recently used.
    fn make_resident(&mut self, wanted: &[Option<&ActiveAdapter>]) -> Result<()> {
        let keys: Vec<AdapterKey> = wanted.iter().flatten().map(|a| a.cache_key()).collect();
        for active in wanted.iter().flatten() {
            let key = active.cache_key();
            let uploaded = match self.adapters.iter().position(|(k, _)| *k == key) {
                Some(at) => self.adapters.remove(at).1,
                None => {
                    self.evict_for_one(&keys);
                    self.device.upload_adapter(active)?
                }
            };
            self.adapters.push((key, uploaded));
        }
        Ok(())
    }

    /// Frees a slot when all are taken, by the least recently used adapter
    /// outside `keep`.
    fn evict_for_one(&mut self, keep: &[AdapterKey]) {
        if self.adapters.len() < self.options.adapter_slots {
            return;
        }
        if let Some(at) = self.adapters.iter().position(|(k, _)| !keep.contains(k)) {
            self.adapters.remove(at);
        }
    }

    /// The resident copy of `active` (after [`Self::make_resident`]).
    fn resident(&self, active: Option<&ActiveAdapter>) -> Option<&DeviceAdapter<E::Block>> {
        let key = active?.cache_key();
        self.adapters.iter().find(|(k, _)| *k == key).map(|(_, a)| a)
    }
}

impl<B> DecoderCache for DeviceKvCache<B> {
    fn len(&self) -> usize {
        self.len
    }

    fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|b| b.bytes()).sum()
    }
}

impl<E: Executor> Decoder for DeviceDecoder<'_, E> {
    type Cache = DeviceKvCache<E::Block>;
    type Chunk = DeviceChunk;

    fn new_cache(&self) -> Result<Self::Cache> {
        self.device.new_cache(self.options.first_cache_positions)
    }

    fn fork(&self, cache: &Self::Cache, len: usize) -> Result<Self::Cache> {
        self.device.fork_cache(cache, len)
    }

    fn prefill(
        &mut self,
        tokens: &[u32],
        cache: &mut Self::Cache,
        adapter: Option<&ActiveAdapter>,
    ) -> Result<Vec<f32>> {
        self.make_resident(&[adapter])?;
        self.device.forward(tokens, cache, Logits::Last, self.resident(adapter))
    }

    fn begin_chunk(
        &mut self,
        tokens: &[u32],
        _cache: &Self::Cache,
        adapter: Option<&ActiveAdapter>,
    ) -> Result<DeviceChunk> {
        Ok(DeviceChunk { tokens: tokens.to_vec(), adapter: adapter.cloned() })
    }

    fn run_chunk(&mut self, chunk: DeviceChunk, cache: &mut Self::Cache) -> Result<Option<DeviceChunk>> {
        self.prefill(&chunk.tokens, cache, chunk.adapter.as_ref())?;
        Ok(None)
    }

    fn decode(
        &mut self,
        tokens: &[u32],
        caches: &mut [&mut Self::Cache],
        adapters: &[Option<ActiveAdapter>],
    ) -> Result<&mut [f32]> {
        let wanted: Vec<Option<&ActiveAdapter>> = adapters.iter().map(Option::as_ref).collect();
        self.make_resident(&wanted)?;
        let rows: Vec<Option<&DeviceAdapter<E::Block>>> = wanted.iter().map(|a| self.resident(*a)).collect();
        self.logits = self.device.forward_decode(tokens, caches, &rows)?;
        Ok(&mut self.logits)
    }
}
