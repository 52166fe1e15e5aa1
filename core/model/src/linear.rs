//! A linear layer `y = x·Wᵀ + b` whose weight is dense or block-quantized.
//! Adapters (LoRA) wrap this type rather than forking the model.

use crate::error::Result;
use tailor_tensor::cpu::{linear, linear_many, linear_many_decode, linear_many_gemm, LinearScratch};
use tailor_tensor::{DType, Tensor};

/// A kernel computing several linears of one input (`linear_many` and kin).
type ManyKernel = fn(&[f32], usize, &mut [(&Tensor, &mut [f32])], &mut LinearScratch) -> tailor_tensor::Result<()>;

/// A linear layer.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
}

impl Linear {
    /// A layer from a `[out, in]` weight and an optional bias of `out` values.
    pub fn new(weight: Tensor, bias: Option<Vec<f32>>) -> Linear {
        Linear { weight, bias }
    }

    /// Output features.
    pub fn out_features(&self) -> usize {
        self.weight.row_count()
    }

    /// Input features.
    pub fn in_features(&self) -> usize {
        self.weight.row_len()
    }

    /// The weight.
    pub fn weight(&self) -> &Tensor {
        &self.weight
    }

    /// Storage dtype of the weight.
    pub fn dtype(&self) -> DType {
        self.weight.dtype()
    }

    /// `y = x·Wᵀ + b` for `tokens` rows of `x`.
    pub fn forward(&self, x: &[f32], tokens: usize, y: &mut [f32], scratch: &mut LinearScratch) -> Result<()> {
        linear(x, tokens, &self.weight, y, scratch)?;
        self.add_bias(y);
        Ok(())
    }

    /// Several layers applied to the same input in one parallel pass.
    pub fn forward_many(
        x: &[f32],
        tokens: usize,
        layers: &mut [(&Linear, &mut [f32])],
        scratch: &mut LinearScratch,
    ) -> Result<()> {
        Linear::run_many(linear_many, x, tokens, layers, scratch)
    }

    /// [`Linear::forward_many`] on the gemm path for any token count (see
    /// `tailor_tensor::cpu::linear_many_gemm`): the path a long prompt's
    /// prefill takes, forced, so a prompt can be prefilled in pieces.
    pub fn forward_many_gemm(
        x: &[f32],
        tokens: usize,
        layers: &mut [(&Linear, &mut [f32])],
        scratch: &mut LinearScratch,
    ) -> Result<()> {
        Linear::run_many(linear_many_gemm, x, tokens, layers, scratch)
    }

    /// [`Linear::forward_many`] for a decode batch: row `t` of `x` is one
    /// token of sequence `t`, and gets exactly what it would get alone.
    pub fn forward_many_decode(
        x: &[f32],
        tokens: usize,
        layers: &mut [(&Linear, &mut [f32])],
        scratch: &mut LinearScratch,
    ) -> Result<()> {
        Linear::run_many(linear_many_decode, x, tokens, layers, scratch)
    }

    /// Runs one of tailor-tensor's multi-output kernels over the layers'
    /// weights, then adds their biases.
    fn run_many(
        kernel: ManyKernel,
        x: &[f32],
        tokens: usize,
        layers: &mut [(&Linear, &mut [f32])],
        scratch: &mut LinearScratch,
    ) -> Result<()> {
        let mut outputs: Vec<(&Tensor, &mut [f32])> = layers.iter_mut().map(|(l, y)| (&l.weight, &mut **y)).collect();
        kernel(x, tokens, &mut outputs, scratch)?;
        for (layer, y) in layers.iter_mut() {
            layer.add_bias(y);
        }
        Ok(())
    }

    fn add_bias(&self, y: &mut [f32]) {
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
    }
}
