//! The decoder layer's ops on the CPU ([`LayerOps`] for
//! `layer::run_layer`): where attention finds keys and values (a cache, a
//! decode batch's caches, or training's packed sequences), which kernels
//! the linears take, and what training keeps for its backward.

use super::{Block, Llama};
use crate::config::LlamaConfig;
use crate::error::Result;
use crate::kv_cache::KvCache;
use crate::layer::{run_layer, LayerActs, LayerOps, Norm};
use crate::linear::Linear;
use crate::lora::{add_deltas, Adapted, LoraScratch, RowAdapters};
use crate::names::Proj;
use crate::tape::LayerTape;
use tailor_tensor::cpu::{add_in_place, causal_attention, decode_attention, rms_norm, silu_mul, LinearScratch};

impl Llama {
    /// Runs layer `layer` on `x` through the layer's ops on the CPU.
    pub(super) fn run_block(
        &self,
        layer: usize,
        x: &mut [f32],
        context: Context<'_, '_>,
        s: &mut Scratch,
        tape: Option<&mut LayerTape>,
    ) -> Result<()> {
        let Scratch { tokens, pass, adapters, acts, linear, lora } = s;
        let mut ops = CpuLayer {
            model: self,
            layer,
            block: &self.blocks[layer],
            context,
            tokens: *tokens,
            pass: *pass,
            adapters,
            linear,
            lora,
            tape,
        };
        run_layer(&mut ops, x, acts)
    }
}

/// One layer's ops on the CPU: the layer's weights, where its attention
/// finds keys and values, the kernels its linears take, and (training)
/// the tape that keeps what its backward needs.
struct CpuLayer<'a, 'c, 'd> {
    model: &'a Llama,
    layer: usize,
    block: &'a Block,
    context: Context<'c, 'd>,
    tokens: usize,
    pass: LinearPass,
    adapters: &'a RowAdapters,
    linear: &'a mut LinearScratch,
    lora: &'a mut LoraScratch,
    tape: Option<&'a mut LayerTape>,
}

impl LayerOps for CpuLayer<'_, '_, '_> {
    type Rows = [f32];
    type Buffer = Vec<f32>;

    fn norm(&mut self, norm: Norm, x: &[f32], out: &mut [f32]) -> Result<()> {
        let weight = match norm {
            Norm::Attention => &self.block.attn_norm,
            Norm::Mlp => &self.block.ffn_norm,
        };
        rms_norm(x, weight, self.model.config.rms_norm_eps as f32, out);
        Ok(())
    }

    fn project(&mut self, input: &[f32], outputs: &mut [(Proj, &mut [f32])]) -> Result<()> {
        let block = self.block;
        let mut projections: Vec<(Proj, &Linear, &mut [f32])> =
            outputs.iter_mut().map(|(proj, y)| (*proj, block.linear(*proj), &mut **y)).collect();
        let (tokens, layer, adapters) = (self.tokens, self.layer, self.adapters);
        self.pass.run_adapted(input, tokens, layer, &mut projections, adapters, self.linear, self.lora)
    }

    fn attend(&mut self, q: &mut [f32], k: &mut [f32], v: &[f32], out: &mut [f32]) -> Result<()> {
        let (cfg, rope, layer) = (&self.model.config, &self.model.rope, self.layer);
        let (heads, kv_heads, shape) = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.attention_shape());
        let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
        match &mut self.context {
            Context::Cache { cache, start } => {
                rope.apply(q, heads, *start);
                rope.apply(k, kv_heads, *start);
                cache.append(layer, k, v);
                let (keys, values) = cache.layer(layer);
                causal_attention(q, keys, values, *start, shape, out);
            }
            Context::Packed(lengths) => {
                let mut row = 0;
                for &len in lengths.iter() {
                    let (q_rows, kv_rows) = (row * q_dim..(row + len) * q_dim, row * kv_dim..(row + len) * kv_dim);
                    rope.apply(&mut q[q_rows.clone()], heads, 0);
                    rope.apply(&mut k[kv_rows.clone()], kv_heads, 0);
                    causal_attention(&q[q_rows.clone()], &k[kv_rows.clone()], &v[kv_rows], 0, shape, &mut out[q_rows]);
                    row += len;
                }
            }
            Context::Decode(caches) => {
                for (i, cache) in caches.iter_mut().enumerate() {
                    let position = cache.len();
                    rope.apply(&mut q[i * q_dim..(i + 1) * q_dim], heads, position);
                    rope.apply(&mut k[i * kv_dim..(i + 1) * kv_dim], kv_heads, position);
                    cache.append(layer, &k[i * kv_dim..(i + 1) * kv_dim], &v[i * kv_dim..(i + 1) * kv_dim]);
                }
                let sequences: Vec<(&[f32], &[f32])> = caches.iter().map(|c| c.layer(layer)).collect();
                decode_attention(q, &sequences, shape, out);
            }
        }
        Ok(())
    }

    fn silu_mul(&mut self, gate: &mut [f32], up: &[f32]) -> Result<()> {
        silu_mul(gate, up);
        Ok(())
    }

    fn add(&mut self, x: &mut [f32], delta: &[f32]) -> Result<()> {
        add_in_place(x, delta);
        Ok(())
    }

    fn after_attention(&mut self, x: &[f32], a: &LayerActs<Vec<f32>>) {
        if let Some(tape) = self.tape.as_deref_mut() {
            tape.keep_attention(x, &a.normed, &a.q, &a.k, &a.v, &a.attn);
        }
    }

    fn after_gate_up(&mut self, x: &[f32], a: &LayerActs<Vec<f32>>) {
        if let Some(tape) = self.tape.as_deref_mut() {
            tape.keep_mlp(x, &a.normed, &a.gate, &a.up);
        }
    }
}

/// Where a forward pass's attention finds keys and values.
pub(super) enum Context<'c, 'd> {
    /// After what the cache holds, from position `start` (serving): the
    /// new keys and values are appended to it.
    Cache { cache: &'c mut KvCache, start: usize },
    /// Sequences packed back to back, each from position 0, attending
    /// only within itself (training; no cache).
    Packed(&'c [usize]),
    /// A decode batch: row `i` follows what `caches[i]` holds, and its key
    /// and value are appended there.
    Decode(&'c mut [&'d mut KvCache]),
}

/// Which kernels a forward pass's linears run.
#[derive(Debug, Clone, Copy)]
pub(super) enum LinearPass {
    /// A prefill: the usual path by token count.
    Prefill,
    /// A prefill with the prefill kernels forced (see [`Llama::extend`]).
    PrefillExact,
    /// A decode step: one row per sequence, each as it would be alone.
    Decode,
    /// The training forward (`run_layer`): no prefill to agree with.
    Train,
}

impl LinearPass {
    fn run(
        self,
        x: &[f32],
        tokens: usize,
        layers: &mut [(&Linear, &mut [f32])],
        scratch: &mut LinearScratch,
    ) -> Result<()> {
        match self {
            LinearPass::Prefill => Linear::forward_many(x, tokens, layers, scratch),
            LinearPass::PrefillExact => Linear::forward_many_prefill(x, tokens, layers, scratch),
            LinearPass::Decode => Linear::forward_many_decode(x, tokens, layers, scratch),
            LinearPass::Train => Linear::forward_many_train(x, tokens, layers, scratch),
        }
    }

    /// The base projections of `layer` on `x` (one pass over their
    /// weights), then each row's adapter delta, computed on the rows that
    /// share an adapter.
    #[allow(clippy::too_many_arguments)]
    fn run_adapted(
        self,
        x: &[f32],
        tokens: usize,
        layer: usize,
        projections: &mut [(Proj, &Linear, &mut [f32])],
        adapters: &RowAdapters,
        scratch: &mut LinearScratch,
        lora: &mut LoraScratch,
    ) -> Result<()> {
        let mut base: Vec<(&Linear, &mut [f32])> = projections.iter_mut().map(|(_, l, y)| (*l, &mut **y)).collect();
        self.run(x, tokens, &mut base, scratch)?;
        if adapters.is_base() {
            return Ok(());
        }
        let mut outputs: Vec<Adapted<'_>> =
            projections.iter_mut().map(|(proj, linear, y)| Adapted { proj: *proj, bias: linear.bias(), y }).collect();
        add_deltas(adapters, layer, x, tokens, &mut outputs, lora)
    }
}

/// Activations of one forward pass.
pub(super) struct Scratch {
    pub(super) tokens: usize,
    /// The kernels its linears run.
    pub(super) pass: LinearPass,
    /// The adapter of each row.
    pub(super) adapters: RowAdapters,
    pub(super) acts: LayerActs<Vec<f32>>,
    pub(super) linear: LinearScratch,
    pub(super) lora: LoraScratch,
}

impl Scratch {
    pub(super) fn new(cfg: &LlamaConfig, n: usize) -> Scratch {
        let mut scratch = Scratch {
            tokens: n,
            pass: LinearPass::Prefill,
            adapters: RowAdapters::Base,
            acts: LayerActs::default(),
            linear: LinearScratch::default(),
            lora: LoraScratch::default(),
        };
        scratch.resize(cfg, n);
        scratch
    }

    /// Fits the buffers to `n` tokens, keeping their allocations.
    pub(super) fn resize(&mut self, cfg: &LlamaConfig, n: usize) {
        self.tokens = n;
        let widths = LayerActs::widths(cfg).into_array();
        for (buffer, width) in self.acts.each_mut().into_iter().zip(widths) {
            buffer.resize(n * width, 0.0);
        }
    }
}
