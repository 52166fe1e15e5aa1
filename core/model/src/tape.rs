//! What a training forward keeps for the backward, per decoder layer.
//!
//! Training runs the serving decoder itself ([`crate::Llama::run_layer`]),
//! not a copy of it: the same functions and kernels, handed a tape to fill.
//! The tape holds each op's inputs that its backward needs; anything cheap
//! to recompute (attention probabilities, SiLU·mul) is recomputed instead.

/// One layer's kept activations, `tokens` rows each.
#[derive(Debug, Default, Clone)]
pub struct LayerTape {
    /// The residual stream entering the layer (input of the attention norm).
    pub attn_in: Vec<f32>,
    /// The attention norm's output: the input of q, k and v.
    pub attn_normed: Vec<f32>,
    /// Queries after RoPE.
    pub q: Vec<f32>,
    /// Keys after RoPE.
    pub k: Vec<f32>,
    /// Values.
    pub v: Vec<f32>,
    /// Attention's output: the input of o.
    pub attn: Vec<f32>,
    /// The residual stream after attention (input of the MLP norm).
    pub mlp_in: Vec<f32>,
    /// The MLP norm's output: the input of gate and up.
    pub mlp_normed: Vec<f32>,
    /// Gate projection before SiLU.
    pub gate: Vec<f32>,
    /// Up projection.
    pub up: Vec<f32>,
}

impl LayerTape {
    /// Keeps the attention half's activations (reusing the tape's buffers).
    pub(crate) fn keep_attention(&mut self, x: &[f32], normed: &[f32], q: &[f32], k: &[f32], v: &[f32], attn: &[f32]) {
        for (kept, values) in [
            (&mut self.attn_in, x),
            (&mut self.attn_normed, normed),
            (&mut self.q, q),
            (&mut self.k, k),
            (&mut self.v, v),
            (&mut self.attn, attn),
        ] {
            keep(kept, values);
        }
    }

    /// Keeps the MLP half's activations.
    pub(crate) fn keep_mlp(&mut self, x: &[f32], normed: &[f32], gate: &[f32], up: &[f32]) {
        for (kept, values) in
            [(&mut self.mlp_in, x), (&mut self.mlp_normed, normed), (&mut self.gate, gate), (&mut self.up, up)]
        {
            keep(kept, values);
        }
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        let buffers = [
            &self.attn_in,
            &self.attn_normed,
            &self.q,
            &self.k,
            &self.v,
            &self.attn,
            &self.mlp_in,
            &self.mlp_normed,
            &self.gate,
            &self.up,
        ];
        buffers.iter().map(|b| b.len() * std::mem::size_of::<f32>()).sum()
    }
}

fn keep(kept: &mut Vec<f32>, values: &[f32]) {
    kept.clear();
    kept.extend_from_slice(values);
}
