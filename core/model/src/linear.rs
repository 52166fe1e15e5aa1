//! A linear layer `y = x·Wᵀ + b` whose weight is dense or block-quantized.
//! Adapters (LoRA) wrap this type rather than forking the model.

use crate::error::{ModelError, Result};
use tailor_tensor::cpu::{
    gemm_bf16, linear, linear_many, linear_many_decode, linear_many_prefill, linear_many_train, Bf16Out, Bf16Rows,
    Bf16Weights, Epilogue, LinearScratch,
};
use tailor_tensor::{DType, Tensor};

/// A kernel computing several linears of one input (`linear_many` and kin).
type ManyKernel = fn(&[f32], usize, &mut [(&Tensor, &mut [f32])], &mut LinearScratch) -> tailor_tensor::Result<()>;

/// A linear layer.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Tensor,
    bias: Option<Vec<f32>>,
    /// The weight rounded to bf16 for [`Linear::forward_bf16`], when asked.
    bf16: Option<Bf16Weights>,
}

impl Linear {
    /// A layer from a `[out, in]` weight and an optional bias of `out` values.
    pub fn new(weight: Tensor, bias: Option<Vec<f32>>) -> Linear {
        Linear { weight, bias, bf16: None }
    }

    /// Also keeps the weight rounded to bf16, so [`Linear::forward_bf16`]
    /// can run (for compute-bound layers that tolerate 8-bit mantissas).
    pub fn with_bf16_weights(mut self) -> Result<Linear> {
        let values = self.weight.to_f32()?;
        self.bf16 = Some(Bf16Weights::pack(&values, self.out_features(), self.in_features()));
        Ok(self)
    }

    /// `y = x·Wᵀ + b`, then GELU if `gelu`, with bf16 operands and f32
    /// sums (see `tailor_tensor::cpu::gemm_bf16`); the layer must have been
    /// built [`Linear::with_bf16_weights`].
    pub fn forward_bf16(&self, x: &Bf16Rows, gelu: bool, y: Bf16Out<'_>) -> Result<()> {
        let Some(weights) = &self.bf16 else {
            return Err(ModelError::InvalidParameter("forward_bf16 on a layer without bf16 weights".into()));
        };
        if x.cols() != self.in_features() {
            return Err(ModelError::InvalidParameter(format!(
                "input of {} features for a layer of {}",
                x.cols(),
                self.in_features()
            )));
        }
        if let Bf16Out::F32(values) = &y {
            if values.len() != x.rows() * self.out_features() {
                return Err(ModelError::InvalidParameter(format!(
                    "output of {} values for {} rows of {}",
                    values.len(),
                    x.rows(),
                    self.out_features()
                )));
            }
        }
        gemm_bf16(x, weights, Epilogue { bias: self.bias.as_deref(), gelu }, y);
        Ok(())
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

    /// The weight as mutable f32 (full fine-tuning): converted to owned f32
    /// on first use; a bf16 copy is dropped (it would go stale).
    pub fn weight_f32_mut(&mut self) -> Result<&mut [f32]> {
        self.bf16 = None;
        Ok(self.weight.f32_mut()?)
    }

    /// The bias, if the layer has one.
    pub fn bias(&self) -> Option<&[f32]> {
        self.bias.as_deref()
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

    /// [`Linear::forward_many`] on the prefill paths for any token count
    /// (see `tailor_tensor::cpu::linear_many_prefill`): the path a long
    /// prompt's prefill takes, forced, so a prompt can be prefilled in pieces.
    pub fn forward_many_prefill(
        x: &[f32],
        tokens: usize,
        layers: &mut [(&Linear, &mut [f32])],
        scratch: &mut LinearScratch,
    ) -> Result<()> {
        Linear::run_many(linear_many_prefill, x, tokens, layers, scratch)
    }

    /// [`Linear::forward_many`] for the training forward (see
    /// `tailor_tensor::cpu::linear_many_train`): results need not equal a
    /// prefill's bit for bit, so bf16 weights may take a faster kernel.
    pub fn forward_many_train(
        x: &[f32],
        tokens: usize,
        layers: &mut [(&Linear, &mut [f32])],
        scratch: &mut LinearScratch,
    ) -> Result<()> {
        Linear::run_many(linear_many_train, x, tokens, layers, scratch)
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
