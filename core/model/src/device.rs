//! The decoder on a CUDA device (or on the CPU emulation of its kernels):
//! a loaded [`Llama`]'s weights uploaded once as stored (GGUF blocks stay
//! blocks), keys and values in device memory, and every layer run by the
//! same [`run_layer`] as on the CPU, over the device's ops
//! ([`Backend`]). Only the logits come back to the host. Adapters are
//! uploaded once each and chosen per row of a decode batch (BGMV), as on
//! the CPU. This is not a second model: the layer's order of ops lives in
//! `layer.rs` alone, and the weights are the [`Llama`]'s.

mod decoder;

pub use decoder::{DeviceChunk, DeviceDecoder, DeviceOptions, DEFAULT_ADAPTER_SLOTS, DEFAULT_FIRST_CACHE_POSITIONS};

use crate::config::LlamaConfig;
use crate::error::{ModelError, Result};
use crate::layer::{run_layer, LayerActs, LayerOps, Norm};
use crate::llama::{check_decode_batch, GreedyRun, Llama, Logits};
use crate::lora::ActiveAdapter;
use crate::names::Proj;
use tailor_tensor::cpu::{LoraMatrix, LoraPair};
use tailor_tensor::cuda::backend::{
    Backend, DeviceBuffer, DeviceLora, DeviceMatrix, DeviceRope, Executor, KvView, EMBEDDING_DTYPES, KV_DTYPES,
    LINEAR_DTYPES,
};
use tailor_tensor::{DType, Tensor};

/// A [`Llama`] on a device: its weights uploaded, ready to prefill and
/// decode sequences whose keys and values stay there.
pub struct DeviceLlama<'m, E: Executor> {
    model: &'m Llama,
    backend: &'m Backend<E>,
    blocks: Vec<DeviceBlock<E::Block>>,
    /// The embedding table when the gather kernel takes its dtype and it
    /// is not the output projection; else rows are gathered on the host.
    embed: Option<DeviceMatrix<E::Block>>,
    lm_head: DeviceMatrix<E::Block>,
    /// The output projection is the embedding, and the gather kernel
    /// takes it.
    gather_from_head: bool,
    norm: DeviceBuffer<E::Block>,
    rope: DeviceRope<E::Block>,
    /// The element type of new caches' keys and values.
    kv_dtype: DType,
}

/// One layer's weights on the device.
struct DeviceBlock<B> {
    attn_norm: DeviceBuffer<B>,
    ffn_norm: DeviceBuffer<B>,
    /// By [`Proj::index`].
    linears: Vec<DeviceLinear<B>>,
}

/// A projection's weight as stored, and its bias.
struct DeviceLinear<B> {
    weight: DeviceMatrix<B>,
    bias: Option<DeviceBuffer<B>>,
}

/// One sequence's keys and values on the device: per layer, room for
/// `capacity` positions of `kv_dim` elements of `dtype` (f32, f16 or bf16)
/// each, `len` of them filled.
pub struct DeviceKvCache<B> {
    layers: Vec<[DeviceBuffer<B>; 2]>,
    len: usize,
    capacity: usize,
    dtype: DType,
}

/// An adapter on the device, its scale folded into each `B`.
pub struct DeviceAdapter<B> {
    /// Per layer, by [`Proj::index`].
    layers: Vec<Vec<Option<DeviceLora<B>>>>,
}

impl<'m, E: Executor> DeviceLlama<'m, E> {
    /// Uploads `model`'s weights to `backend`'s device. Fails with a typed
    /// error, before anything runs, when a weight's dtype or the head
    /// layout is one the kernels do not take (the caller stays on the CPU).
    pub fn upload(model: &'m Llama, backend: &'m Backend<E>) -> Result<DeviceLlama<'m, E>> {
        let cfg = model.config();
        check_heads(cfg)?;
        let mut blocks = Vec::with_capacity(cfg.num_hidden_layers);
        for layer in 0..cfg.num_hidden_layers {
            let (attn_norm, ffn_norm) = model.layer_norm_weights(layer);
            let linears = Proj::ALL
                .into_iter()
                .map(|proj| {
                    let linear = model.projection(layer, proj);
                    let weight = upload_weight(backend, linear.weight(), &proj.module(layer))?;
                    let bias = linear.bias().map(|b| backend.upload(b)).transpose()?;
                    Ok(DeviceLinear { weight, bias })
                })
                .collect::<Result<Vec<_>>>()?;
            blocks.push(DeviceBlock {
                attn_norm: backend.upload(attn_norm)?,
                ffn_norm: backend.upload(ffn_norm)?,
                linears,
            });
        }
        let lm_head = upload_weight(backend, model.lm_head().weight(), "lm_head")?;
        let table = model.embedding();
        let gatherable = EMBEDDING_DTYPES.contains(&table.dtype());
        let gather_from_head = gatherable && model.is_tied();
        let embed = match gatherable && !model.is_tied() {
            true => Some(backend.upload_matrix(table)?),
            false => None,
        };
        Ok(DeviceLlama {
            model,
            backend,
            blocks,
            embed,
            lm_head,
            gather_from_head,
            norm: backend.upload(model.final_norm_weight())?,
            rope: backend.upload_rope(model.rope())?,
            kv_dtype: DType::F32,
        })
    }

    /// Keys and values of caches made from now on are stored as `dtype`:
    /// f32 (the default, as the CPU keeps them), f16 or bf16 (half the memory
    /// and the attention's reads; attention still sums in f32).
    pub fn set_kv_dtype(&mut self, dtype: DType) -> Result<()> {
        if !KV_DTYPES.contains(&dtype) {
            return Err(ModelError::InvalidParameter(format!(
                "a device cache of {dtype:?}: the attention kernels take {KV_DTYPES:?}"
            )));
        }
        self.kv_dtype = dtype;
        Ok(())
    }

    /// The model on the host.
    pub fn model(&self) -> &Llama {
        self.model
    }

    /// A cache with room for `capacity` positions (it grows as needed, up
    /// to the context length).
    pub fn new_cache(&self, capacity: usize) -> Result<DeviceKvCache<E::Block>> {
        let cfg = self.model.config();
        let capacity = capacity.clamp(1, self.model.context_length());
        let bytes = capacity * cfg.kv_dim() * self.kv_dtype.bytes_for(1)?;
        let layers = (0..cfg.num_hidden_layers)
            .map(|_| Ok([self.backend.alloc(bytes)?, self.backend.alloc(bytes)?]))
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceKvCache { layers, len: 0, capacity, dtype: self.kv_dtype })
    }

    /// A new cache (of `cache`'s dtype) holding a copy of its first `len`
    /// positions: a reused prompt prefix.
    pub fn fork_cache(&self, cache: &DeviceKvCache<E::Block>, len: usize) -> Result<DeviceKvCache<E::Block>> {
        let len = len.min(cache.len);
        let capacity = len.max(1);
        let row_bytes = self.model.config().kv_dim() * cache.dtype.bytes_for(1)?;
        let layers = cache
            .layers
            .iter()
            .map(|buffers| {
                let copy = |from: &DeviceBuffer<E::Block>| -> Result<DeviceBuffer<E::Block>> {
                    let mut to = self.backend.alloc(capacity * row_bytes)?;
                    self.backend.copy_region(from, 0, &mut to, 0, len * row_bytes)?;
                    Ok(to)
                };
                Ok([copy(&buffers[0])?, copy(&buffers[1])?])
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceKvCache { layers, len, capacity, dtype: cache.dtype })
    }

    /// `active` on the device: each adapted projection's `A`, and its `B`
    /// times the adapter's scaling and the request's scale. DoRA adapters
    /// are refused (their per-row magnitudes have no kernel yet).
    pub fn upload_adapter(&self, active: &ActiveAdapter) -> Result<DeviceAdapter<E::Block>> {
        if active.adapter.is_dora() {
            return Err(ModelError::InvalidParameter("DoRA adapters do not run on the device yet".into()));
        }
        let layers = (0..self.blocks.len())
            .map(|layer| {
                Proj::ALL
                    .into_iter()
                    .map(|proj| {
                        let Some(lora) = active.adapter.layer(layer, proj) else { return Ok(None) };
                        let rank = lora.rank();
                        let factor = lora.scaling() * active.scale;
                        let (a, b) = (lora.a_f32(), lora.b_f32().into_iter().map(|v| v * factor).collect::<Vec<_>>());
                        let (in_dim, out_dim) = (a.len() / rank, b.len() / rank);
                        let pair = LoraPair::new(rank, in_dim, out_dim, LoraMatrix::F32(a), LoraMatrix::F32(b))?;
                        Ok(Some(self.backend.upload_lora(&pair)?))
                    })
                    .collect::<Result<Vec<_>>>()
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(DeviceAdapter { layers })
    }

    /// Runs `tokens` after what `cache` holds (one prefill on the device),
    /// appends their keys and values to it, and returns the logits of the
    /// requested positions.
    pub fn forward(
        &self,
        tokens: &[u32],
        cache: &mut DeviceKvCache<E::Block>,
        which: Logits,
        adapter: Option<&DeviceAdapter<E::Block>>,
    ) -> Result<Vec<f32>> {
        let (n, start) = (tokens.len(), cache.len);
        if n == 0 {
            return Err(ModelError::EmptyPrompt);
        }
        self.reserve(cache, start + n)?;
        let mut x = self.embed(tokens)?;
        let mut acts = self.activations(n)?;
        let adapters = vec![adapter; n];
        for layer in 0..self.blocks.len() {
            let context = DeviceContext::Prefill { cache: &*cache, start };
            run_layer(&mut self.layer_ops(layer, n, context, &adapters), &mut x, &mut acts)?;
        }
        cache.len += n;
        let rows = match which {
            Logits::Last => 1,
            Logits::All => n,
        };
        self.logits(&x, n - rows, rows)
    }

    /// One decode step for a batch: `tokens[i]` follows what `caches[i]`
    /// holds, with `adapters[i]` (an empty slice: the base for all). The
    /// weights are read once for the batch; `vocab` logits per sequence
    /// come back.
    pub fn forward_decode(
        &self,
        tokens: &[u32],
        caches: &mut [&mut DeviceKvCache<E::Block>],
        adapters: &[Option<&DeviceAdapter<E::Block>>],
    ) -> Result<Vec<f32>> {
        let n = tokens.len();
        check_decode_batch(n, caches.len(), adapters.len())?;
        if caches.iter().any(|c| c.dtype != caches[0].dtype) {
            return Err(ModelError::InvalidParameter("one decode batch's caches must share a dtype".into()));
        }
        for cache in caches.iter_mut() {
            self.reserve(cache, cache.len + 1)?;
        }
        let adapters = if adapters.is_empty() { vec![None; n] } else { adapters.to_vec() };
        let mut x = self.embed(tokens)?;
        let mut acts = self.activations(n)?;
        let views: Vec<&DeviceKvCache<E::Block>> = caches.iter().map(|c| &**c).collect();
        for layer in 0..self.blocks.len() {
            let context = DeviceContext::Decode(&views);
            run_layer(&mut self.layer_ops(layer, n, context, &adapters), &mut x, &mut acts)?;
        }
        for cache in caches.iter_mut() {
            cache.len += 1;
        }
        self.logits(&x, 0, n)
    }

    /// Prefills `prompt` into a fresh cache, then decodes `steps` tokens
    /// greedily one at a time (logits back to the host each step, as
    /// serving takes them), timing both phases (the device synchronized).
    pub fn greedy(&self, prompt: &[u32], steps: usize) -> Result<GreedyRun> {
        let mut cache = self.new_cache(prompt.len() + steps + 1)?;
        let start = std::time::Instant::now();
        let logits = self.forward(prompt, &mut cache, Logits::Last, None)?;
        let prefill_secs = start.elapsed().as_secs_f64();
        let mut tokens = vec![crate::sampler::argmax(&logits)];
        let start = std::time::Instant::now();
        for _ in 0..steps {
            let logits = self.forward_decode(&tokens[tokens.len() - 1..], &mut [&mut cache], &[])?;
            tokens.push(crate::sampler::argmax(&logits));
        }
        Ok(GreedyRun { prefill_secs, decode_secs: start.elapsed().as_secs_f64(), tokens })
    }

    fn layer_ops<'o>(
        &'o self,
        layer: usize,
        tokens: usize,
        context: DeviceContext<'o, E::Block>,
        adapters: &'o [Option<&'o DeviceAdapter<E::Block>>],
    ) -> DeviceLayer<'o, 'm, E> {
        DeviceLayer { model: self, layer, tokens, context, adapters }
    }

    /// Buffers for one pass of `tokens` tokens.
    fn activations(&self, tokens: usize) -> Result<LayerActs<DeviceBuffer<E::Block>>> {
        LayerActs::widths(self.model.config()).try_map(|width| Ok(self.backend.alloc(tokens * width * 4)?))
    }

    /// The residual stream entering layer 0: the tokens' embedding rows.
    fn embed(&self, tokens: &[u32]) -> Result<DeviceBuffer<E::Block>> {
        let vocab = self.model.config().vocab_size;
        if let Some(&id) = tokens.iter().find(|&&id| id as usize >= vocab) {
            return Err(ModelError::BadToken { id, vocab });
        }
        let table = match (&self.embed, self.gather_from_head) {
            (Some(table), _) => table,
            (None, true) => &self.lm_head,
            (None, false) => return Ok(self.backend.upload(&self.model.embed(tokens)?)?),
        };
        let mut x = self.backend.alloc(tokens.len() * self.model.config().hidden_size * 4)?;
        self.backend.embedding(table, tokens, &mut x)?;
        Ok(x)
    }

    /// The final norm and output projection of `rows` rows of `x` from
    /// row `first`, copied back to the host.
    fn logits(&self, x: &DeviceBuffer<E::Block>, first: usize, rows: usize) -> Result<Vec<f32>> {
        let cfg = self.model.config();
        let (hidden, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let mut picked = self.backend.alloc(rows * hidden * 4)?;
        self.backend.copy_region(x, first * hidden * 4, &mut picked, 0, rows * hidden * 4)?;
        let mut normed = self.backend.alloc(rows * hidden * 4)?;
        self.backend.rms_norm(&picked, &self.norm, &mut normed, rows, hidden, cfg.rms_norm_eps as f32)?;
        let mut logits = self.backend.alloc(rows * vocab * 4)?;
        self.backend.linear(&self.lm_head, &normed, rows, &mut logits)?;
        Ok(self.backend.download(&logits, rows * vocab)?)
    }

    /// Grows `cache` (doubling, up to the context length) to hold
    /// `positions` positions.
    fn reserve(&self, cache: &mut DeviceKvCache<E::Block>, positions: usize) -> Result<()> {
        let context = self.model.context_length();
        if positions > context {
            return Err(ModelError::ContextOverflow { tokens: positions, context });
        }
        if positions <= cache.capacity {
            return Ok(());
        }
        let capacity = positions.max(cache.capacity * 2).min(context);
        let row_bytes = self.model.config().kv_dim() * cache.dtype.bytes_for(1)?;
        let filled = cache.len * row_bytes;
        for buffers in cache.layers.iter_mut() {
            for buffer in buffers.iter_mut() {
                let mut grown = self.backend.alloc(capacity * row_bytes)?;
                self.backend.copy_region(buffer, 0, &mut grown, 0, filled)?;
                *buffer = grown;
            }
        }
        cache.capacity = capacity;
        Ok(())
    }
}

impl<B> DeviceKvCache<B> {
    /// Positions held.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True before the first token.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Positions it has room for before it grows.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// The element type of its keys and values.
    pub fn dtype(&self) -> DType {
        self.dtype
    }
}

/// Where a device pass's attention finds keys and values.
enum DeviceContext<'c, B> {
    /// One sequence's prefill after the `start` positions its cache holds.
    Prefill { cache: &'c DeviceKvCache<B>, start: usize },
    /// A decode batch: row `i` follows what cache `i` holds.
    Decode(&'c [&'c DeviceKvCache<B>]),
}

/// One layer's ops on the device.
struct DeviceLayer<'o, 'm, E: Executor> {
    model: &'o DeviceLlama<'m, E>,
    layer: usize,
    tokens: usize,
    context: DeviceContext<'o, E::Block>,
    /// Row `r`'s adapter.
    adapters: &'o [Option<&'o DeviceAdapter<E::Block>>],
}

impl<E: Executor> LayerOps for DeviceLayer<'_, '_, E> {
    type Rows = DeviceBuffer<E::Block>;
    type Buffer = DeviceBuffer<E::Block>;

    fn norm(&mut self, norm: Norm, x: &Self::Rows, out: &mut Self::Rows) -> Result<()> {
        let block = &self.model.blocks[self.layer];
        let weight = match norm {
            Norm::Attention => &block.attn_norm,
            Norm::Mlp => &block.ffn_norm,
        };
        let cfg = self.model.model.config();
        Ok(self.model.backend.rms_norm(x, weight, out, self.tokens, cfg.hidden_size, cfg.rms_norm_eps as f32)?)
    }

    fn project(&mut self, input: &Self::Rows, outputs: &mut [(Proj, &mut Self::Rows)]) -> Result<()> {
        let backend = self.model.backend;
        for (proj, y) in outputs.iter_mut() {
            let linear = &self.model.blocks[self.layer].linears[proj.index()];
            backend.linear(&linear.weight, input, self.tokens, y)?;
            if let Some(bias) = &linear.bias {
                backend.add_bias(y, bias, self.tokens, linear.weight.shape()[0])?;
            }
            let loras: Vec<Option<&DeviceLora<E::Block>>> = self
                .adapters
                .iter()
                .map(|a| a.and_then(|a| a.layers.get(self.layer)).and_then(|l| l[proj.index()].as_ref()))
                .collect();
            backend.lora(input, &loras, y)?;
        }
        Ok(())
    }

    fn attend(&mut self, q: &mut Self::Rows, k: &mut Self::Rows, v: &Self::Rows, out: &mut Self::Rows) -> Result<()> {
        let (backend, rope, layer) = (self.model.backend, &self.model.rope, self.layer);
        let cfg = self.model.model.config();
        let (shape, kv_dim) = (cfg.attention_shape(), cfg.kv_dim());
        match &self.context {
            DeviceContext::Prefill { cache, start } => {
                let positions: Vec<usize> = (*start..start + self.tokens).collect();
                backend.rope(q, rope, &positions, cfg.num_attention_heads)?;
                backend.rope(k, rope, &positions, cfg.num_key_value_heads)?;
                let [keys, values] = &cache.layers[layer];
                let slots: Vec<KvView<'_, E::Block>> =
                    positions.iter().map(|&length| KvView { keys, values, length }).collect();
                backend.kv_store(k, v, kv_dim, &slots, cache.dtype)?;
                backend.attention_prefill(q, keys, values, *start, self.tokens, shape, cache.dtype, out)?;
            }
            DeviceContext::Decode(caches) => {
                let positions: Vec<usize> = caches.iter().map(|c| c.len).collect();
                backend.rope(q, rope, &positions, cfg.num_attention_heads)?;
                backend.rope(k, rope, &positions, cfg.num_key_value_heads)?;
                let kv = caches.first().map_or(DType::F32, |c| c.dtype);
                backend.kv_store(k, v, kv_dim, &layer_views(caches, layer, 0), kv)?;
                backend.attention_decode(q, &layer_views(caches, layer, 1), shape, kv, out)?;
            }
        }
        Ok(())
    }

    fn silu_mul(&mut self, gate: &mut Self::Rows, up: &Self::Rows) -> Result<()> {
        let width = self.model.model.config().intermediate_size;
        Ok(self.model.backend.silu_mul(gate, up, self.tokens * width)?)
    }

    fn add(&mut self, x: &mut Self::Rows, delta: &Self::Rows) -> Result<()> {
        let width = self.model.model.config().hidden_size;
        Ok(self.model.backend.add(x, delta, self.tokens * width)?)
    }
}

/// Each cache's buffers of `layer`, seen as holding `grown` more positions
/// than it does.
fn layer_views<'c, B>(caches: &[&'c DeviceKvCache<B>], layer: usize, grown: usize) -> Vec<KvView<'c, B>> {
    let view = |c: &&'c DeviceKvCache<B>| {
        let [keys, values] = &c.layers[layer];
        KvView { keys, values, length: c.len + grown }
    };
    caches.iter().map(view).collect()
}

/// `tensor` on the device as stored, or a typed error naming the weight
/// when the linear kernels do not take its dtype.
fn upload_weight<E: Executor>(backend: &Backend<E>, tensor: &Tensor, name: &str) -> Result<DeviceMatrix<E::Block>> {
    let dtype: DType = tensor.dtype();
    if !LINEAR_DTYPES.contains(&dtype) {
        return Err(ModelError::InvalidParameter(format!(
            "{name} is {dtype:?}: the device's linear kernels take {LINEAR_DTYPES:?}"
        )));
    }
    Ok(backend.upload_matrix(tensor)?)
}

/// The attention kernels' head layout: heads of a multiple of 32 values,
/// at most 128.
fn check_heads(cfg: &LlamaConfig) -> Result<()> {
    if !cfg.head_dim.is_multiple_of(32) || cfg.head_dim > 128 {
        return Err(ModelError::InvalidParameter(format!(
            "heads of {} values: the device's attention kernels take multiples of 32 up to 128",
            cfg.head_dim
        )));
    }
    Ok(())
}
