//! The Llama-family decoder: one implementation, switched by [`LlamaConfig`]
//! (grouped-query attention, optional q/k/v bias, tied embeddings, RoPE
//! scaling). Weights come from any [`WeightSource`] under Hugging Face names.

mod cpu_layer;

use crate::config::{rope_inv_freq, LlamaConfig};
use crate::error::{ModelError, Result};
use crate::kv_cache::KvCache;
use crate::linear::Linear;
use crate::lora::{ActiveAdapter, LoraDropout, RowAdapters};
use crate::names::{layer_prefix, Proj};
use crate::tape::LayerTape;
use crate::weights::WeightSource;
use cpu_layer::{Context, LinearPass, Scratch};
use std::path::Path;
use tailor_tensor::cpu::{rms_norm, RopeTable};
use tailor_tensor::{DType, Tensor};

/// Which positions to compute logits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logits {
    /// Only the last position (generation).
    Last,
    /// Every position (scoring, tests).
    All,
}

struct Block {
    attn_norm: Vec<f32>,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ffn_norm: Vec<f32>,
    gate: Linear,
    up: Linear,
    down: Linear,
}

/// A loaded decoder.
pub struct Llama {
    config: LlamaConfig,
    embed: Tensor,
    blocks: Vec<Block>,
    norm: Vec<f32>,
    lm_head: Linear,
    /// The output projection is the embedding (no `lm_head.weight`).
    tied: bool,
    rope: RopeTable,
}

/// Which weights a load-time dtype conversion applies to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum ConvertScope {
    /// Every matrix: the blocks' projections, the embedding and lm_head.
    #[default]
    AllMatrices,
    /// The blocks' projections; the embedding and lm_head are converted
    /// to `others` if given, else stay as stored (QLoRA's base:
    /// bitsandbytes quantizes the decoder's linear layers and leaves the
    /// embedding and lm_head in the dtype the model was loaded in).
    Projections {
        /// The embedding's and lm_head's dtype, if not as stored.
        others: Option<DType>,
    },
}

/// Options for building the decoder from weights.
#[derive(Clone, Copy)]
pub struct BuildOptions<'a> {
    /// Convert weights to this dtype on load (those `scope` names).
    pub dtype: Option<DType>,
    /// Which weights `dtype` converts.
    pub scope: ConvertScope,
    /// Called with (tensors done, tensors total) while loading.
    pub progress: &'a (dyn Fn(usize, usize) + Sync),
}

impl Llama {
    /// Builds the decoder, checking every tensor's shape against the config.
    pub fn load(config: LlamaConfig, source: &dyn WeightSource, options: BuildOptions<'_>) -> Result<Llama> {
        let loader = Loader { source, config: &config, dtype: options.dtype, owned: false };
        let outer = match (options.dtype, options.scope) {
            // Kept as stored, but out of the file: once the converted
            // projections are loaded, nothing holds its mapping (whose pages
            // the conversion made resident).
            (Some(_), ConvertScope::Projections { others }) => Loader { dtype: others, owned: true, ..loader },
            _ => loader,
        };
        let total = config.num_hidden_layers + 2;
        let embed = outer.matrix("model.embed_tokens.weight", config.vocab_size, config.hidden_size)?;
        (options.progress)(1, total);
        let mut blocks = Vec::with_capacity(config.num_hidden_layers);
        for layer in 0..config.num_hidden_layers {
            blocks.push(loader.block(layer)?);
            (options.progress)(layer + 2, total);
        }
        let norm = loader.vector("model.norm.weight", config.hidden_size)?;
        let tied = config.tie_word_embeddings && !source.contains("lm_head.weight");
        let lm_head = if tied {
            Linear::new(embed.clone(), None)
        } else {
            outer.linear("lm_head.weight", config.vocab_size, config.hidden_size, false)?
        };
        (options.progress)(total, total);
        let inv_freq = rope_inv_freq(&config);
        let rope = RopeTable::new(config.head_dim, &inv_freq, config.max_position_embeddings);
        Ok(Llama { config, embed, blocks, norm, lm_head, tied, rope })
    }

    /// The hyper-parameters.
    pub fn config(&self) -> &LlamaConfig {
        &self.config
    }

    /// Longest sequence this model can process.
    pub fn context_length(&self) -> usize {
        self.config.max_position_embeddings
    }

    /// A fresh KV cache for one sequence.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.num_hidden_layers, self.config.kv_dim())
    }

    /// The linear layer of `proj` in `layer` (panics past the last layer).
    pub fn projection(&self, layer: usize, proj: Proj) -> &Linear {
        self.blocks[layer].linear(proj)
    }

    /// Bytes of weights in memory (or mapped).
    pub fn weight_bytes(&self) -> usize {
        let block_bytes: usize = self
            .blocks
            .iter()
            .flat_map(|b| [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down])
            .map(|l| l.weight().bytes().len())
            .sum();
        block_bytes + self.embed.bytes().len()
    }

    /// Runs `tokens` after what `cache` holds, appends their keys/values, and
    /// returns logits (`vocab` values per requested position).
    pub fn forward(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        self.forward_with(tokens, cache, which, false, None)
    }

    /// [`Llama::forward`] with an adapter on every projection it adapts.
    pub fn forward_adapted(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        adapter: Option<&ActiveAdapter>,
    ) -> Result<Vec<f32>> {
        self.forward_with(tokens, cache, which, false, adapter)
    }

    /// Shortest prompt whose prefill [`Llama::extend`] reproduces exactly.
    pub const EXACT_PREFILL_MIN: usize = tailor_tensor::cpu::QUANT_GEMM_MIN_TOKENS;

    /// Continues a prefill after a cached prefix: like [`Llama::forward`], but
    /// every linear takes the path a long prompt's prefill takes. When the
    /// prefix came from such a prefill and at least
    /// [`Llama::EXACT_PREFILL_MIN`] tokens are extended, the keys, values
    /// and logits are exactly those of one prefill of the whole prompt (the
    /// prefill kernels' rows do not depend on how many rows they multiply,
    /// once there are that many: with very few the gemm switches kernels).
    pub fn extend(&self, tokens: &[u32], cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        self.extend_adapted(tokens, cache, which, None)
    }

    /// [`Llama::extend`] with an adapter (the one the prefix was computed with).
    pub fn extend_adapted(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        adapter: Option<&ActiveAdapter>,
    ) -> Result<Vec<f32>> {
        if tokens.len() < Self::EXACT_PREFILL_MIN {
            return Err(ModelError::InvalidParameter(format!(
                "extend needs at least {} tokens, got {}",
                Self::EXACT_PREFILL_MIN,
                tokens.len()
            )));
        }
        self.forward_with(tokens, cache, which, true, adapter)
    }

    fn forward_with(
        &self,
        tokens: &[u32],
        cache: &mut KvCache,
        which: Logits,
        gemm: bool,
        adapter: Option<&ActiveAdapter>,
    ) -> Result<Vec<f32>> {
        let mut prefill = self.begin_prefill(tokens, cache, gemm, adapter)?;
        self.prefill_layers(&mut prefill, cache, self.blocks.len())?;
        self.finish_prefill(prefill, cache, which)
    }

    /// Starts a prefill of `tokens` after what `cache` holds, to be run a
    /// few layers at a time ([`Llama::prefill_layers`]) so that a scheduler
    /// can put other work between them; `exact_extend` takes the path of
    /// [`Llama::extend`] (the same minimum length applies for exactness);
    /// `adapter` applies to every token. Until [`Llama::finish_prefill`],
    /// `cache` must serve this prefill only.
    pub fn begin_prefill(
        &self,
        tokens: &[u32],
        cache: &KvCache,
        exact_extend: bool,
        adapter: Option<&ActiveAdapter>,
    ) -> Result<LayeredPrefill> {
        let (n, start) = (tokens.len(), cache.len());
        if n == 0 {
            return Err(ModelError::EmptyPrompt);
        }
        if start + n > self.context_length() {
            return Err(ModelError::ContextOverflow { tokens: start + n, context: self.context_length() });
        }
        let x = self.embed_tokens(tokens)?;
        let mut scratch = Box::new(Scratch::new(&self.config, n));
        scratch.pass = if exact_extend { LinearPass::PrefillExact } else { LinearPass::Prefill };
        scratch.adapters = adapter.map_or(RowAdapters::Base, |a| RowAdapters::One(a.clone()));
        Ok(LayeredPrefill { x, scratch, start, next_layer: 0 })
    }

    /// Runs up to `layers` more layers of a prefill; true once all have run.
    pub fn prefill_layers(&self, prefill: &mut LayeredPrefill, cache: &mut KvCache, layers: usize) -> Result<bool> {
        let LayeredPrefill { x, scratch, start, next_layer } = prefill;
        let end = (*next_layer + layers).min(self.blocks.len());
        for layer in *next_layer..end {
            self.run_block(layer, x, Context::Cache { cache: &mut *cache, start: *start }, scratch, None)?;
        }
        *next_layer = end;
        Ok(end == self.blocks.len())
    }

    /// Ends a prefill whose layers have all run: `cache` takes its tokens,
    /// and the logits of the requested positions come back.
    pub fn finish_prefill(&self, prefill: LayeredPrefill, cache: &mut KvCache, which: Logits) -> Result<Vec<f32>> {
        let LayeredPrefill { x, mut scratch, next_layer, .. } = prefill;
        if next_layer != self.blocks.len() {
            return Err(ModelError::InvalidParameter(format!(
                "finish_prefill after {next_layer} of {} layers",
                self.blocks.len()
            )));
        }
        let cfg = &self.config;
        let n = scratch.tokens;
        cache.advance(n);
        let rows = match which {
            Logits::Last => &x[(n - 1) * cfg.hidden_size..],
            Logits::All => &x[..],
        };
        let count = rows.len() / cfg.hidden_size;
        let mut normed = vec![0f32; rows.len()];
        rms_norm(rows, &self.norm, cfg.rms_norm_eps as f32, &mut normed);
        let mut logits = vec![0f32; count * cfg.vocab_size];
        self.lm_head.forward(&normed, count, &mut logits, &mut scratch.linear)?;
        Ok(logits)
    }

    /// One decode step for a batch of sequences: `tokens[i]` follows what
    /// `caches[i]` holds. Appends each token's keys/values to its cache and
    /// returns `vocab` logits per sequence. Each sequence's logits are
    /// exactly those [`Llama::forward`] gives it alone, while the weights are
    /// read once for the whole batch.
    pub fn forward_decode<'b>(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        buffers: &'b mut DecodeBuffers,
    ) -> Result<&'b mut [f32]> {
        self.forward_decode_adapted(tokens, caches, &[], buffers)
    }

    /// [`Llama::forward_decode`] where sequence `i` runs with `adapters[i]`
    /// (none: the base; an empty slice: the base for all). The base weights
    /// are still read once for the batch; each row then gets its own
    /// adapter's delta, so its logits are exactly those it gets alone.
    pub fn forward_decode_adapted<'b>(
        &self,
        tokens: &[u32],
        caches: &mut [&mut KvCache],
        adapters: &[Option<ActiveAdapter>],
        buffers: &'b mut DecodeBuffers,
    ) -> Result<&'b mut [f32]> {
        let cfg = &self.config;
        let n = tokens.len();
        check_decode_batch(n, caches.len(), adapters.len())?;
        if let Some(full) = caches.iter().find(|c| c.len() + 1 > self.context_length()) {
            return Err(ModelError::ContextOverflow { tokens: full.len() + 1, context: self.context_length() });
        }
        let mut x = self.embed_tokens(tokens)?;
        let DecodeBuffers { scratch, logits } = buffers;
        let s = scratch.get_or_insert_with(|| Scratch::new(cfg, n));
        s.resize(cfg, n);
        s.pass = LinearPass::Decode;
        s.adapters = RowAdapters::each(adapters);
        for layer in 0..self.blocks.len() {
            self.run_block(layer, &mut x, Context::Decode(&mut *caches), s, None)?;
        }
        for cache in caches.iter_mut() {
            cache.advance(1);
        }
        rms_norm(&x, &self.norm, cfg.rms_norm_eps as f32, &mut s.acts.normed);
        logits.resize(n * cfg.vocab_size, 0.0);
        Linear::forward_many_decode(&s.acts.normed, n, &mut [(&self.lm_head, &mut logits[..])], &mut s.linear)?;
        Ok(&mut logits[..])
    }

    /// Prefills `prompt` into a fresh cache, then decodes `steps` tokens
    /// greedily one at a time, timing both phases (`tailor bench`; the
    /// device decoder's `greedy` is the same on the GPU).
    pub fn greedy(&self, prompt: &[u32], steps: usize) -> Result<GreedyRun> {
        let mut cache = self.new_cache();
        let start = std::time::Instant::now();
        let logits = self.forward(prompt, &mut cache, Logits::Last)?;
        let prefill_secs = start.elapsed().as_secs_f64();
        let mut tokens = vec![crate::sampler::argmax(&logits)];
        let start = std::time::Instant::now();
        for _ in 0..steps {
            let logits = self.forward(&tokens[tokens.len() - 1..], &mut cache, Logits::Last)?;
            tokens.push(crate::sampler::argmax(&logits));
        }
        Ok(GreedyRun { prefill_secs, decode_secs: start.elapsed().as_secs_f64(), tokens })
    }

    /// Training mode: the embedding rows of `tokens`, the residual stream
    /// entering layer 0.
    pub fn embed(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        self.embed_tokens(tokens)
    }

    /// Training mode: runs decoder layer `layer` on the residual stream `x`
    /// of sequences packed back to back (`lengths`; each starts at
    /// position 0 and attends only within itself), with `adapter` on the
    /// projections it adapts, their inputs dropped out by `dropout` (PEFT's
    /// `lora_dropout`; no effect without an adapter). This is the serving
    /// forward (the same functions and kernels as a prefill, every linear
    /// over all rows at once); given a tape it also keeps what the layer's
    /// backward needs.
    pub fn run_layer(
        &self,
        layer: usize,
        x: &mut [f32],
        lengths: &[usize],
        adapter: Option<&ActiveAdapter>,
        dropout: Option<LoraDropout>,
        tape: Option<&mut LayerTape>,
    ) -> Result<()> {
        let cfg = &self.config;
        let n: usize = lengths.iter().sum();
        if layer >= self.blocks.len() {
            return Err(ModelError::InvalidParameter(format!("layer {layer} of a model with {}", self.blocks.len())));
        }
        if n == 0 || lengths.contains(&0) || x.len() != n * cfg.hidden_size {
            return Err(ModelError::InvalidParameter(format!(
                "{} values for sequences of {lengths:?} tokens",
                x.len()
            )));
        }
        if let Some(&longest) = lengths.iter().max().filter(|&&l| l > self.context_length()) {
            return Err(ModelError::ContextOverflow { tokens: longest, context: self.context_length() });
        }
        let mut scratch = Scratch::new(cfg, n);
        scratch.pass = LinearPass::Train;
        scratch.adapters = match (adapter, dropout) {
            (None, _) => RowAdapters::Base,
            (Some(a), None) => RowAdapters::One(a.clone()),
            (Some(a), Some(dropout)) => RowAdapters::Dropped(a.clone(), dropout),
        };
        self.run_block(layer, x, Context::Packed(lengths), &mut scratch, tape)
    }

    /// Full fine-tuning: every weight by Hugging Face name, as mutable f32
    /// (each converted to owned f32 on first use); the names are
    /// [`Llama::parameter_names`]. A tied output projection is the embedding, listed once; call
    /// [`Llama::sync_tied`] after changing it. Models with q/k/v biases are
    /// refused (their biases are not trained).
    pub fn parameters_mut(&mut self) -> Result<Vec<(String, &mut [f32])>> {
        if self.config.attention_bias {
            return Err(ModelError::InvalidParameter(
                "full fine-tuning of a model with attention biases is not supported".into(),
            ));
        }
        let mut out: Vec<(String, &mut [f32])> = vec![
            ("model.embed_tokens.weight".into(), self.embed.f32_mut()?),
            ("model.norm.weight".into(), &mut self.norm[..]),
        ];
        if !self.tied {
            out.push(("lm_head.weight".into(), self.lm_head.weight_f32_mut()?));
        }
        for (layer, block) in self.blocks.iter_mut().enumerate() {
            let p = layer_prefix(layer);
            let Block { attn_norm, q, k, v, o, ffn_norm, gate, up, down } = block;
            out.push((format!("{p}.input_layernorm.weight"), &mut attn_norm[..]));
            out.push((format!("{p}.post_attention_layernorm.weight"), &mut ffn_norm[..]));
            for (proj, linear) in Proj::ALL.into_iter().zip([q, k, v, o, gate, up, down]) {
                out.push((format!("{}.weight", proj.module(layer)), linear.weight_f32_mut()?));
            }
        }
        Ok(out)
    }

    /// The names [`Llama::parameters_mut`] gives (and the folder a trained
    /// model is written as holds).
    pub fn parameter_names(&self) -> Vec<String> {
        crate::convert::hf_tensor_names(&self.config, !self.tied)
    }

    /// After the embedding changed: a tied output projection follows it.
    pub fn sync_tied(&mut self) {
        if self.tied {
            self.lm_head = Linear::new(self.embed.clone(), None);
        }
    }

    /// True when the output projection is the embedding.
    pub fn is_tied(&self) -> bool {
        self.tied
    }

    /// The final RMSNorm's weight.
    pub fn final_norm_weight(&self) -> &[f32] {
        &self.norm
    }

    /// The attention and MLP norms' weights of `layer` (panics past the last).
    pub fn layer_norm_weights(&self, layer: usize) -> (&[f32], &[f32]) {
        (&self.blocks[layer].attn_norm, &self.blocks[layer].ffn_norm)
    }

    /// The token embedding table, as stored.
    pub fn embedding(&self) -> &Tensor {
        &self.embed
    }

    /// The output projection (the embedding when they are tied).
    pub fn lm_head(&self) -> &Linear {
        &self.lm_head
    }

    /// The rotary embedding table.
    pub fn rope(&self) -> &RopeTable {
        &self.rope
    }

    fn embed_tokens(&self, tokens: &[u32]) -> Result<Vec<f32>> {
        let dim = self.config.hidden_size;
        let mut x = vec![0f32; tokens.len() * dim];
        for (row, &id) in x.chunks_exact_mut(dim).zip(tokens) {
            if id as usize >= self.config.vocab_size {
                return Err(ModelError::BadToken { id, vocab: self.config.vocab_size });
            }
            tailor_tensor::quant::dequantize_row(self.embed.dtype(), self.embed.row_bytes(id as usize), row)?;
        }
        Ok(x)
    }
}

impl Block {
    /// The linear layer of `proj`.
    fn linear(&self, proj: Proj) -> &Linear {
        [&self.q, &self.k, &self.v, &self.o, &self.gate, &self.up, &self.down][proj.index()]
    }
}

/// A timed greedy run ([`Llama::greedy`], or the device decoder's).
#[derive(Debug, Clone)]
pub struct GreedyRun {
    /// Seconds of the prefill (logits of its last position included).
    pub prefill_secs: f64,
    /// Seconds of the decode steps.
    pub decode_secs: f64,
    /// The prefill's greedy token, then each step's.
    pub tokens: Vec<u32>,
}

/// A decode batch's sizes: at least one token, a cache per token, and an
/// adapter per token or none at all.
pub(crate) fn check_decode_batch(tokens: usize, caches: usize, adapters: usize) -> Result<()> {
    if tokens == 0 {
        return Err(ModelError::EmptyPrompt);
    }
    if caches != tokens || !(adapters == 0 || adapters == tokens) {
        return Err(ModelError::InvalidParameter(format!(
            "{tokens} tokens for {caches} caches and {adapters} adapters"
        )));
    }
    Ok(())
}

/// A prefill in progress ([`Llama::begin_prefill`]): the activations
/// between layers and how far it got.
pub struct LayeredPrefill {
    x: Vec<f32>,
    scratch: Box<Scratch>,
    start: usize,
    next_layer: usize,
}

/// Buffers [`Llama::forward_decode`] reuses from step to step (a scheduler
/// keeps one), so steady-state decoding neither allocates nor zero-fills.
#[derive(Default)]
pub struct DecodeBuffers {
    scratch: Option<Scratch>,
    logits: Vec<f32>,
}

#[derive(Clone, Copy)]
struct Loader<'a> {
    source: &'a dyn WeightSource,
    config: &'a LlamaConfig,
    dtype: Option<DType>,
    /// Copy unconverted matrices out of a mapped file.
    owned: bool,
}

impl Loader<'_> {
    fn checked(&self, name: &str, expected: &[usize]) -> Result<Tensor> {
        let tensor = self.source.get(name)?;
        if tensor.shape() != expected {
            return Err(ModelError::WrongShape {
                path: self.source.path().to_path_buf(),
                name: name.to_string(),
                expected: expected.to_vec(),
                actual: tensor.shape().to_vec(),
            });
        }
        Ok(tensor)
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>> {
        Ok(self.checked(name, &[len])?.to_f32()?.into_owned())
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Tensor> {
        let tensor = self.checked(name, &[rows, cols])?;
        // Rows that are not whole blocks of the dtype take its fallback
        // (as llama.cpp's quantizer does), not an error.
        let tensor = match self.dtype.map(|dtype| dtype.for_rows_of(cols)) {
            Some(dtype) if dtype != tensor.dtype() => tensor.to_dtype(dtype)?,
            _ if self.owned => tensor.into_owned()?,
            _ => tensor,
        };
        Ok(tensor.prepacked())
    }

    fn linear(&self, name: &str, out: usize, inp: usize, with_bias: bool) -> Result<Linear> {
        let weight = self.matrix(name, out, inp)?;
        let bias = if with_bias { Some(self.vector(&name.replace(".weight", ".bias"), out)?) } else { None };
        Ok(Linear::new(weight, bias))
    }

    fn block(&self, layer: usize) -> Result<Block> {
        let c = self.config;
        let p = layer_prefix(layer);
        let [q, k, v, o, gate, up, down] = Proj::ALL.map(|proj| self.projection(proj, layer));
        Ok(Block {
            attn_norm: self.vector(&format!("{p}.input_layernorm.weight"), c.hidden_size)?,
            q: q?,
            k: k?,
            v: v?,
            o: o?,
            ffn_norm: self.vector(&format!("{p}.post_attention_layernorm.weight"), c.hidden_size)?,
            gate: gate?,
            up: up?,
            down: down?,
        })
    }

    fn projection(&self, proj: Proj, layer: usize) -> Result<Linear> {
        let (out, inp) = proj.shape(self.config);
        let bias = proj.may_have_bias() && self.config.attention_bias;
        self.linear(&format!("{}.weight", proj.module(layer)), out, inp, bias)
    }
}

/// The decoder's current weights by Hugging Face name (to write a trained
/// model out as a folder).
impl WeightSource for Llama {
    fn get(&self, name: &str) -> Result<Tensor> {
        let missing = || ModelError::MissingTensor { path: Path::new("(in memory)").to_path_buf(), name: name.into() };
        let vector = |values: &[f32]| Ok(Tensor::from_f32(values.to_vec(), &[values.len()])?);
        match name {
            "model.embed_tokens.weight" => return Ok(self.embed.clone()),
            "model.norm.weight" => return vector(&self.norm),
            "lm_head.weight" if !self.tied => return Ok(self.lm_head.weight().clone()),
            _ => {}
        }
        let rest = name.strip_prefix("model.layers.").ok_or_else(missing)?;
        let (layer, part) = rest.split_once('.').ok_or_else(missing)?;
        let block = layer.parse::<usize>().ok().and_then(|l| self.blocks.get(l)).ok_or_else(missing)?;
        match part {
            "input_layernorm.weight" => vector(&block.attn_norm),
            "post_attention_layernorm.weight" => vector(&block.ffn_norm),
            _ => {
                let b = block;
                let linears = [&b.q, &b.k, &b.v, &b.o, &b.gate, &b.up, &b.down];
                let named = |p: &Proj| part.strip_prefix(p.hf_path()).is_some_and(|s| s == ".weight" || s == ".bias");
                let (_, linear) = Proj::ALL.into_iter().zip(linears).find(|(p, _)| named(p)).ok_or_else(missing)?;
                match part.ends_with(".bias") {
                    false => Ok(linear.weight().clone()),
                    true => linear.bias().map(vector).ok_or_else(missing)?,
                }
            }
        }
    }

    fn contains(&self, name: &str) -> bool {
        self.get(name).is_ok()
    }

    fn path(&self) -> &Path {
        Path::new("(in memory)")
    }
}
