//! A linear layer `y = x·Wᵀ + b` whose weight is dense or block-quantized.
//! Adapters (LoRA) wrap this type rather than forking the model.

use crate::error::Result;
use tailor_tensor::cpu::{linear, LinearScratch};
use tailor_tensor::{DType, Tensor};

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
    pub fn forward(
        &self,
        x: &[f32],
        tokens: usize,
        y: &mut [f32],
        scratch: &mut LinearScratch,
    ) -> Result<()> {
        linear(x, tokens, &self.weight, y, scratch)?;
        if let Some(bias) = &self.bias {
            for row in y.chunks_exact_mut(bias.len()) {
                row.iter_mut().zip(bias).for_each(|(v, b)| *v += b);
            }
        }
        Ok(())
    }
}
