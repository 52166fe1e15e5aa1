//! One decoder layer, written once over the ops of a device (DESIGN §8):
//! the CPU decoder ([`crate::Llama`]: prefill, decode batches, the training
//! forward) and the device decoder (`crate::device`, feature `cuda`) both
//! run [`run_layer`], each implementing [`LayerOps`] with its own buffers
//! and kernels. What differs by device or by mode (which kernels a linear
//! takes, where keys and values live, what training keeps) is inside the
//! ops; the order of the ops, and so the model, is here alone.

use crate::config::LlamaConfig;
use crate::error::Result;
use crate::names::Proj;
use std::borrow::{Borrow, BorrowMut};

/// Which of a layer's two norms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Norm {
    /// Before attention (`input_layernorm`).
    Attention,
    /// Before the MLP (`post_attention_layernorm`).
    Mlp,
}

/// The ops of one decoder layer on one device, bound to that layer's
/// weights and to where its attention finds keys and values. Every
/// activation is rows of f32, one row per token.
pub(crate) trait LayerOps {
    /// Activations as the ops take them (`[f32]` on the CPU, a device
    /// buffer on a GPU).
    type Rows: ?Sized;
    /// An owned buffer of such rows.
    type Buffer: BorrowMut<Self::Rows>;

    /// `out = RMSNorm(x)` with the layer's `norm` weight.
    fn norm(&mut self, norm: Norm, x: &Self::Rows, out: &mut Self::Rows) -> Result<()>;

    /// The layer's projections of `input`, each into its output (one pass
    /// over their weights where the device can), bias and each row's
    /// adapter delta included.
    fn project(&mut self, input: &Self::Rows, outputs: &mut [(Proj, &mut Self::Rows)]) -> Result<()>;

    /// Rotates `q` and `k` to their positions, stores `k` and `v` where
    /// later tokens will find them, and writes causal GQA attention into
    /// `out`.
    fn attend(&mut self, q: &mut Self::Rows, k: &mut Self::Rows, v: &Self::Rows, out: &mut Self::Rows) -> Result<()>;

    /// `gate = silu(gate) · up`.
    fn silu_mul(&mut self, gate: &mut Self::Rows, up: &Self::Rows) -> Result<()>;

    /// The residual stream takes a block's output: `x += delta`.
    fn add(&mut self, x: &mut Self::Rows, delta: &Self::Rows) -> Result<()>;

    /// After attention, before its output projection: what training keeps
    /// (nothing by default).
    fn after_attention(&mut self, _x: &Self::Rows, _acts: &LayerActs<Self::Buffer>) {}

    /// After the gate and up projections, before SiLU: what training keeps
    /// (nothing by default).
    fn after_gate_up(&mut self, _x: &Self::Rows, _acts: &LayerActs<Self::Buffer>) {}
}

/// A layer's intermediate activations, reused from layer to layer.
#[derive(Default)]
pub(crate) struct LayerActs<B> {
    /// The normed input of the attention or the MLP block.
    pub normed: B,
    /// Queries.
    pub q: B,
    /// Keys.
    pub k: B,
    /// Values.
    pub v: B,
    /// Attention's output, before `o_proj`.
    pub attn: B,
    /// A block's output, before the residual addition.
    pub out: B,
    /// The gate projection, then SiLU(gate)·up.
    pub gate: B,
    /// The up projection.
    pub up: B,
}

impl LayerActs<usize> {
    /// Each activation's width (f32 values per token) in `config`'s model.
    pub fn widths(config: &LlamaConfig) -> LayerActs<usize> {
        let (hidden, q, kv, ffn) = (config.hidden_size, config.q_dim(), config.kv_dim(), config.intermediate_size);
        LayerActs { normed: hidden, q, k: kv, v: kv, attn: q, out: hidden, gate: ffn, up: ffn }
    }
}

impl<T> LayerActs<T> {
    /// The eight activations, in field order.
    pub fn into_array(self) -> [T; 8] {
        let LayerActs { normed, q, k, v, attn, out, gate, up } = self;
        [normed, q, k, v, attn, out, gate, up]
    }

    /// The eight activations, mutable, in field order.
    pub fn each_mut(&mut self) -> [&mut T; 8] {
        let LayerActs { normed, q, k, v, attn, out, gate, up } = self;
        [normed, q, k, v, attn, out, gate, up]
    }

    /// Each activation made from this one's value by `make` (the device
    /// allocates its buffers so).
    #[cfg(feature = "cuda")]
    pub fn try_map<B, E>(
        self,
        mut make: impl FnMut(T) -> std::result::Result<B, E>,
    ) -> std::result::Result<LayerActs<B>, E> {
        let [normed, q, k, v, attn, out, gate, up] = self.into_array();
        Ok(LayerActs {
            normed: make(normed)?,
            q: make(q)?,
            k: make(k)?,
            v: make(v)?,
            attn: make(attn)?,
            out: make(out)?,
            gate: make(gate)?,
            up: make(up)?,
        })
    }
}

/// Runs one decoder layer on the residual stream `x`: attention, then the
/// SwiGLU MLP, each pre-normed and added back to `x`.
pub(crate) fn run_layer<O: LayerOps>(ops: &mut O, x: &mut O::Rows, a: &mut LayerActs<O::Buffer>) -> Result<()> {
    ops.norm(Norm::Attention, x, a.normed.borrow_mut())?;
    let qkv = &mut [(Proj::Q, a.q.borrow_mut()), (Proj::K, a.k.borrow_mut()), (Proj::V, a.v.borrow_mut())];
    ops.project(a.normed.borrow(), qkv)?;
    ops.attend(a.q.borrow_mut(), a.k.borrow_mut(), a.v.borrow(), a.attn.borrow_mut())?;
    ops.after_attention(x, a);
    ops.project(a.attn.borrow(), &mut [(Proj::O, a.out.borrow_mut())])?;
    ops.add(x, a.out.borrow())?;

    ops.norm(Norm::Mlp, x, a.normed.borrow_mut())?;
    ops.project(a.normed.borrow(), &mut [(Proj::Gate, a.gate.borrow_mut()), (Proj::Up, a.up.borrow_mut())])?;
    ops.after_gate_up(x, a);
    ops.silu_mul(a.gate.borrow_mut(), a.up.borrow())?;
    ops.project(a.gate.borrow(), &mut [(Proj::Down, a.out.borrow_mut())])?;
    ops.add(x, a.out.borrow())
}
