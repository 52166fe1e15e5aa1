//! Gradients of one sequence: the serving forward with a tape, then each
//! layer's backward in reverse order, from the loss down to the embedding.
//!
//! A layer's backward mirrors its forward (`Llama::run_layer`):
//! `h = x + o(attn(rope(q(n₁)), rope(k(n₁)), v(n₁)))` with `n₁ = norm₁(x)`,
//! then `y = h + down(silu(gate(n₂))·up(n₂))` with `n₂ = norm₂(h)`. Each
//! linear passes its output gradient back through the frozen base weight
//! (`dx += dy·W`) and, when adapted, through LoRA (`dA`, `dB`, `dx`).

use crate::error::{Result, TrainError};
use crate::lora::{LoraModule, LoraParams};
use tailor_model::linear::Linear;
use tailor_model::lora::LoraDropout;
use tailor_model::names::Proj;
use tailor_model::{ActiveAdapter, LayerTape, Llama};
use tailor_tensor::cpu::{
    causal_attention_backward, linear_backward_input, linear_backward_weight, rms_norm, rms_norm_backward, silu_mul,
    silu_mul_backward, softmax_cross_entropy, BackwardScratch, LinearScratch, LoraBackward,
};

/// A tokenized training example: `targets[t]` marks the tokens the loss
/// predicts (each from the tokens before it).
#[derive(Debug, Clone, PartialEq)]
pub struct Example {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Which tokens are predicted (the first never is).
    pub targets: Vec<bool>,
}

impl Example {
    /// Tokens the loss is computed on.
    pub fn target_count(&self) -> usize {
        self.targets.iter().skip(1).filter(|&&t| t).count()
    }
}

/// Gradients of every weight (full fine-tuning), f32, shaped as the weights.
#[derive(Debug, Clone)]
pub struct FullGrads {
    /// Per layer.
    pub layers: Vec<LayerGrads>,
    /// The embedding (also the output projection's, when tied).
    pub embed: Vec<f32>,
    /// The final norm.
    pub final_norm: Vec<f32>,
    /// An untied output projection.
    pub lm_head: Option<Vec<f32>>,
}

/// One layer's weight gradients.
#[derive(Debug, Clone)]
pub struct LayerGrads {
    /// The attention norm.
    pub attn_norm: Vec<f32>,
    /// The MLP norm.
    pub mlp_norm: Vec<f32>,
    /// q, k, v, o, gate, up, down (`[out, in]` each, [`Proj`] order).
    pub proj: [Vec<f32>; 7],
}

impl FullGrads {
    /// Zero gradients for every weight of `model`.
    pub fn new(model: &Llama) -> FullGrads {
        let cfg = model.config();
        let (dim, vocab) = (cfg.hidden_size, cfg.vocab_size);
        let layer = || LayerGrads {
            attn_norm: vec![0.0; dim],
            mlp_norm: vec![0.0; dim],
            proj: Proj::ALL.map(|p| {
                let (out, inp) = p.shape(cfg);
                vec![0.0; out * inp]
            }),
        };
        FullGrads {
            layers: (0..cfg.num_hidden_layers).map(|_| layer()).collect(),
            embed: vec![0.0; vocab * dim],
            final_norm: vec![0.0; dim],
            lm_head: (!model.is_tied()).then(|| vec![0.0; vocab * dim]),
        }
    }

    /// Sets every gradient to zero.
    pub fn zero(&mut self) {
        self.named_mut().into_iter().for_each(|(_, g)| g.fill(0.0));
    }

    /// Every gradient by its weight's Hugging Face name.
    pub fn named_mut(&mut self) -> Vec<(String, &mut [f32])> {
        let mut out: Vec<(String, &mut [f32])> = vec![
            ("model.embed_tokens.weight".into(), &mut self.embed[..]),
            ("model.norm.weight".into(), &mut self.final_norm[..]),
        ];
        if let Some(head) = &mut self.lm_head {
            out.push(("lm_head.weight".into(), &mut head[..]));
        }
        for (layer, grads) in self.layers.iter_mut().enumerate() {
            let p = tailor_model::names::layer_prefix(layer);
            out.push((format!("{p}.input_layernorm.weight"), &mut grads.attn_norm[..]));
            out.push((format!("{p}.post_attention_layernorm.weight"), &mut grads.mlp_norm[..]));
            for (proj, g) in Proj::ALL.into_iter().zip(grads.proj.iter_mut()) {
                out.push((format!("{}.weight", proj.module(layer)), &mut g[..]));
            }
        }
        out
    }
}

/// Where a backward pass adds its gradients.
pub enum Sink<'a> {
    /// LoRA weights (the base frozen).
    Lora(&'a mut LoraParams),
    /// Every weight.
    Full(&'a mut FullGrads),
}

/// What the forward keeps for the backward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkpointing {
    /// Every layer's tape (fastest, most memory).
    Off,
    /// Only each layer's input; its tape is recomputed during the backward
    /// (one more forward per step, activations of one layer at a time).
    Layers,
}

/// Examples packed back to back: one forward over all their tokens, each
/// attending only within itself.
struct Packed {
    tokens: Vec<u32>,
    lengths: Vec<usize>,
    /// Rows whose next token is predicted, and that token.
    predicted: Vec<(usize, u32)>,
}

impl Packed {
    fn new(batch: &[&Example]) -> Result<Packed> {
        let mut packed = Packed { tokens: Vec::new(), lengths: Vec::new(), predicted: Vec::new() };
        for example in batch {
            let n = example.tokens.len();
            if example.targets.len() != n || n == 0 {
                return Err(TrainError::Setting(format!("{n} tokens with {} target flags", example.targets.len())));
            }
            let offset = packed.tokens.len();
            for t in 1..n {
                if example.targets[t] {
                    packed.predicted.push((offset + t - 1, example.tokens[t]));
                }
            }
            packed.tokens.extend_from_slice(&example.tokens);
            packed.lengths.push(n);
        }
        Ok(packed)
    }
}

/// Runs a micro-batch forward and backward (its examples packed into one
/// pass), adding `scale·∂loss/∂θ` to the LoRA gradients, where loss is the
/// summed cross-entropy of their targets. Returns that sum (unscaled).
/// `adapter` must be `lora`'s current weights ([`LoraParams::active`]);
/// `dropout`, the pass's mask on the LoRA inputs (none: no dropout).
pub fn accumulate_gradients(
    model: &Llama,
    lora: &mut LoraParams,
    adapter: &ActiveAdapter,
    dropout: Option<LoraDropout>,
    batch: &[&Example],
    scale: f32,
    checkpointing: Checkpointing,
) -> Result<f64> {
    let forward = Forward { adapter: Some(adapter), dropout, checkpointing };
    backward_pass(model, forward, batch, scale, Sink::Lora(lora))
}

/// [`accumulate_gradients`] for full fine-tuning: the gradient of every
/// weight of `model` is added to `grads`.
pub fn accumulate_full_gradients(
    model: &Llama,
    grads: &mut FullGrads,
    batch: &[&Example],
    scale: f32,
    checkpointing: Checkpointing,
) -> Result<f64> {
    let forward = Forward { adapter: None, dropout: None, checkpointing };
    backward_pass(model, forward, batch, scale, Sink::Full(grads))
}

/// How a backward pass runs its forward.
#[derive(Clone, Copy)]
struct Forward<'a> {
    adapter: Option<&'a ActiveAdapter>,
    dropout: Option<LoraDropout>,
    checkpointing: Checkpointing,
}

fn backward_pass(
    model: &Llama,
    forward: Forward<'_>,
    batch: &[&Example],
    scale: f32,
    mut sink: Sink<'_>,
) -> Result<f64> {
    let packed = Packed::new(batch)?;
    let lengths = &packed.lengths;
    let layers = model.config().num_hidden_layers;
    let Forward { adapter, dropout, checkpointing } = forward;
    let mut x = model.embed(&packed.tokens)?;
    let mut inputs = Vec::new();
    let mut tapes = Vec::new();
    for layer in 0..layers {
        match checkpointing {
            Checkpointing::Layers => {
                inputs.push(x.clone());
                model.run_layer(layer, &mut x, lengths, adapter, dropout, None)?;
            }
            Checkpointing::Off => {
                let mut tape = LayerTape::default();
                model.run_layer(layer, &mut x, lengths, adapter, dropout, Some(&mut tape))?;
                tapes.push(tape);
            }
        }
    }
    let (loss, mut dx) = head_backward(model, &x, &packed.predicted, scale, &mut sink)?;
    for layer in (0..layers).rev() {
        let recomputed;
        let tape = match checkpointing {
            Checkpointing::Off => &tapes[layer],
            Checkpointing::Layers => {
                let mut tape = LayerTape::default();
                let mut input = std::mem::take(&mut inputs[layer]);
                model.run_layer(layer, &mut input, lengths, adapter, dropout, Some(&mut tape))?;
                recomputed = tape;
                &recomputed
            }
        };
        layer_backward(model, layer, tape, lengths, dropout, &mut sink, &mut dx)?;
    }
    if let Sink::Full(grads) = &mut sink {
        let dim = model.config().hidden_size;
        for (row, &token) in dx.chunks_exact(dim).zip(&packed.tokens) {
            let at = token as usize * dim;
            grads.embed[at..at + dim].iter_mut().zip(row).for_each(|(g, d)| *g += d);
        }
    }
    Ok(loss)
}

/// The summed cross-entropy of a batch's targets with `adapter`, forward
/// only (evaluation).
pub fn forward_loss(model: &Llama, adapter: Option<&ActiveAdapter>, batch: &[&Example]) -> Result<f64> {
    let packed = Packed::new(batch)?;
    let mut x = model.embed(&packed.tokens)?;
    for layer in 0..model.config().num_hidden_layers {
        model.run_layer(layer, &mut x, &packed.lengths, adapter, None, None)?;
    }
    packed.predicted.chunks(HEAD_ROWS).map(|chunk| Ok(head_loss(model, &x, chunk, 1.0)?.loss)).sum()
}

/// Predicted positions whose logits are held at once: the head runs on
/// this many rows at a time, so a batch's logits (vocabulary × positions
/// f32, 100 MB for SmolLM2 at 512 positions) are never all in memory.
const HEAD_ROWS: usize = 128;

/// The final norm, lm_head and cross-entropy on the predicted positions
/// only, [`HEAD_ROWS`] at a time: returns the summed loss and the gradient
/// of `scale·loss` with respect to the last layer's output (zero on other
/// positions).
fn head_backward(
    model: &Llama,
    x: &[f32],
    predicted: &[(usize, u32)],
    scale: f32,
    sink: &mut Sink<'_>,
) -> Result<(f64, Vec<f32>)> {
    let cfg = model.config();
    let (dim, eps) = (cfg.hidden_size, cfg.rms_norm_eps as f32);
    let mut dx = vec![0f32; x.len()];
    let mut loss = 0f64;
    for chunk in predicted.chunks(HEAD_ROWS) {
        let HeadPass { positions, rows, normed, logits, loss: chunk_loss } = head_loss(model, x, chunk, scale)?;
        loss += chunk_loss;
        let mut d_normed = vec![0f32; rows.len()];
        let weight = model.lm_head().weight();
        linear_backward_input(&logits, positions.len(), weight, &mut d_normed, &mut Default::default())?;
        let mut d_rows = vec![0f32; rows.len()];
        let final_norm_grad = match sink {
            Sink::Full(grads) => {
                let head = grads.lm_head.as_mut().unwrap_or(&mut grads.embed);
                linear_backward_weight(&logits, &normed, positions.len(), head);
                Some(&mut grads.final_norm[..])
            }
            Sink::Lora(_) => None,
        };
        rms_norm_backward(&rows, model.final_norm_weight(), eps, &d_normed, &mut d_rows, final_norm_grad);
        for (i, &t) in positions.iter().enumerate() {
            dx[t * dim..(t + 1) * dim].copy_from_slice(&d_rows[i * dim..(i + 1) * dim]);
        }
    }
    Ok((loss, dx))
}

/// What the head's forward on some predicted positions leaves for its
/// backward: the positions, their rows of the last layer's output, the
/// normed rows, the logits' gradient (in place of the logits) and the
/// summed loss.
struct HeadPass {
    positions: Vec<usize>,
    rows: Vec<f32>,
    normed: Vec<f32>,
    logits: Vec<f32>,
    loss: f64,
}

/// The head's forward and loss on `predicted` (at most [`HEAD_ROWS`]):
/// the summed cross-entropy of the targets, with `scale·∂loss/∂logits`
/// left in the pass.
fn head_loss(model: &Llama, x: &[f32], predicted: &[(usize, u32)], scale: f32) -> Result<HeadPass> {
    let cfg = model.config();
    let (dim, vocab) = (cfg.hidden_size, cfg.vocab_size);
    let positions: Vec<usize> = predicted.iter().map(|&(row, _)| row).collect();
    let ids: Vec<u32> = predicted.iter().map(|&(_, id)| id).collect();
    let rows: Vec<f32> = positions.iter().flat_map(|&t| x[t * dim..(t + 1) * dim].iter().copied()).collect();
    let mut normed = vec![0f32; rows.len()];
    rms_norm(&rows, model.final_norm_weight(), cfg.rms_norm_eps as f32, &mut normed);
    let mut logits = vec![0f32; positions.len() * vocab];
    let head = &mut [(model.lm_head(), &mut logits[..])];
    Linear::forward_many_train(&normed, positions.len(), head, &mut LinearScratch::default())?;
    let loss = softmax_cross_entropy(&mut logits, vocab, &ids, scale)?;
    Ok(HeadPass { positions, rows, normed, logits, loss })
}

/// One layer's backward: `dx` holds the gradient of the layer's output on
/// entry and of its input on return.
fn layer_backward(
    model: &Llama,
    layer: usize,
    tape: &LayerTape,
    lengths: &[usize],
    dropout: Option<LoraDropout>,
    sink: &mut Sink<'_>,
    dx: &mut [f32],
) -> Result<()> {
    let cfg = model.config();
    let eps = cfg.rms_norm_eps as f32;
    let n = dx.len() / cfg.hidden_size;
    let (attn_norm, mlp_norm) = model.layer_norm_weights(layer);
    let mut grads =
        LinearGrads { model, layer, dropout, sink, tokens: n, scratch: BackwardScratch::default(), low: Vec::new() };

    // MLP half: y = h + down(silu(gate)·up).
    let dy = dx.to_vec();
    let mut act = tape.gate.clone();
    silu_mul(&mut act, &tape.up);
    let mut d_act = vec![0f32; act.len()];
    grads.linear(Proj::Down, &act, &dy, &mut d_act)?;
    let (mut d_gate, mut d_up) = (vec![0f32; act.len()], vec![0f32; act.len()]);
    silu_mul_backward(&tape.gate, &tape.up, &d_act, &mut d_gate, &mut d_up);
    let mut d_normed = vec![0f32; dx.len()];
    grads.linear(Proj::Gate, &tape.mlp_normed, &d_gate, &mut d_normed)?;
    grads.linear(Proj::Up, &tape.mlp_normed, &d_up, &mut d_normed)?;
    rms_norm_backward(&tape.mlp_in, mlp_norm, eps, &d_normed, dx, grads.norm(false));

    // Attention half: h = x + o(attention(q, k, v)).
    let dh = dx.to_vec();
    let mut d_attn = vec![0f32; tape.attn.len()];
    grads.linear(Proj::O, &tape.attn, &dh, &mut d_attn)?;
    let (mut dq, mut dk, mut dv) = (vec![0f32; tape.q.len()], vec![0f32; tape.k.len()], vec![0f32; tape.v.len()]);
    let shape = cfg.attention_shape();
    causal_attention_backward(&tape.q, &tape.k, &tape.v, &d_attn, shape, lengths, &mut dq, &mut dk, &mut dv);
    let (q_dim, kv_dim) = (cfg.q_dim(), cfg.kv_dim());
    let mut row = 0;
    for &len in lengths {
        model.rope().apply_inverse(&mut dq[row * q_dim..(row + len) * q_dim], cfg.num_attention_heads, 0);
        model.rope().apply_inverse(&mut dk[row * kv_dim..(row + len) * kv_dim], cfg.num_key_value_heads, 0);
        row += len;
    }
    let mut d_normed = vec![0f32; dx.len()];
    grads.linear(Proj::Q, &tape.attn_normed, &dq, &mut d_normed)?;
    grads.linear(Proj::K, &tape.attn_normed, &dk, &mut d_normed)?;
    grads.linear(Proj::V, &tape.attn_normed, &dv, &mut d_normed)?;
    rms_norm_backward(&tape.attn_in, attn_norm, eps, &d_normed, dx, grads.norm(true));
    Ok(())
}

/// The backward of one layer's linears: base weight, then LoRA if adapted.
struct LinearGrads<'a, 's> {
    model: &'a Llama,
    layer: usize,
    /// The forward's dropout on the LoRA inputs.
    dropout: Option<LoraDropout>,
    sink: &'a mut Sink<'s>,
    tokens: usize,
    scratch: BackwardScratch,
    low: Vec<f32>,
}

impl LinearGrads<'_, '_> {
    /// For projection `proj` with input `x` and output gradient `dy`:
    /// `dx += dy·W`, plus LoRA's `dA`, `dB` and its share of `dx`, or the
    /// weight's own gradient `dW += dyᵀ·x`.
    fn linear(&mut self, proj: Proj, x: &[f32], dy: &[f32], dx: &mut [f32]) -> Result<()> {
        let weight = self.model.projection(self.layer, proj).weight();
        linear_backward_input(dy, self.tokens, weight, dx, &mut self.scratch)?;
        match &mut *self.sink {
            Sink::Lora(lora) => {
                if let Some(module) = lora.module_mut(self.layer, proj) {
                    let LoraModule { a, b, grad_a, grad_b, rank, scaling, .. } = module;
                    let backward = LoraBackward { a, b, rank: *rank, scaling: *scaling };
                    match self.dropout {
                        None => backward.run(x, dy, self.tokens, grad_a, grad_b, dx, &mut self.low),
                        Some(dropout) => {
                            // x̃ = x ⊙ m/(1−p): A and B see x̃, and x gets m/(1−p) ⊙ ∂loss/∂x̃.
                            let mut dropped = vec![0f32; x.len()];
                            dropout.apply(self.layer, proj, x, &mut dropped);
                            let mut d_dropped = vec![0f32; dx.len()];
                            backward.run(&dropped, dy, self.tokens, grad_a, grad_b, &mut d_dropped, &mut self.low);
                            dropout.apply(self.layer, proj, &d_dropped, &mut dropped);
                            dx.iter_mut().zip(&dropped).for_each(|(d, g)| *d += g);
                        }
                    }
                }
            }
            Sink::Full(grads) => {
                linear_backward_weight(dy, x, self.tokens, &mut grads.layers[self.layer].proj[proj.index()]);
            }
        }
        Ok(())
    }

    /// The attention norm's (or the MLP norm's) weight gradient, when
    /// every weight is trained.
    fn norm(&mut self, attention: bool) -> Option<&mut [f32]> {
        match &mut *self.sink {
            Sink::Full(grads) => {
                let layer = &mut grads.layers[self.layer];
                Some(if attention { &mut layer.attn_norm[..] } else { &mut layer.mlp_norm[..] })
            }
            Sink::Lora(_) => None,
        }
    }
}
