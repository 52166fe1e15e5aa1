//! Element-wise and row-wise kernels: RMSNorm, RoPE, softmax, SiLU.

/// RMSNorm of each row of `x` (rows of `weight.len()` values) into `out`:
/// `out = x / sqrt(mean(x²) + eps) · weight`, accumulated in f32 as
/// transformers does.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, dst) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((d, v), w) in dst.iter_mut().zip(row).zip(weight) {
            *d = w * (v * inv);
        }
    }
}

/// `x += y` element-wise.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `gate = silu(gate) · up`, the SwiGLU of a Llama MLP.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    for (g, u) in gate.iter_mut().zip(up) {
        *g = *g / (1.0 + (-*g).exp()) * u;
    }
}

/// Numerically stable softmax of `x` in place.
pub fn softmax_in_place(x: &mut [f32]) {
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let mut sum = 0f32;
    for v in x.iter_mut() {
        *v = (*v - max).exp();
        sum += *v;
    }
    let inv = 1.0 / sum;
    x.iter_mut().for_each(|v| *v *= inv);
}

/// Rotary position embedding tables in the Hugging Face layout: each head
/// vector is split in halves `(x₁, x₂)` rotated as
/// `(x₁cos − x₂sin, x₂cos + x₁sin)`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    head_dim: usize,
    positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// A table for `head_dim` covering positions `0..positions`, from the
    /// inverse frequencies (`head_dim / 2` of them). Angles are `pos · f` in
    /// f32, as transformers computes them.
    pub fn new(head_dim: usize, inv_freq: &[f32], positions: usize) -> RopeTable {
        assert_eq!(inv_freq.len() * 2, head_dim, "rope: need head_dim/2 inverse frequencies");
        let angles = || (0..positions).flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f));
        RopeTable { head_dim, positions, cos: angles().map(f32::cos).collect(), sin: angles().map(f32::sin).collect() }
    }

    /// The standard inverse frequencies `1 / base^(2i/d)`, computed in f32.
    pub fn default_inv_freq(head_dim: usize, base: f32) -> Vec<f32> {
        (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect()
    }

    /// Positions the table covers.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Rotates `x` = `[tokens, n_heads · head_dim]` whose first token sits at
    /// position `start`. Panics if `start + tokens` exceeds [`Self::positions`];
    /// callers bound sequences by the context length first.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, start: usize) {
        let (dim, half) = (self.head_dim, self.head_dim / 2);
        let tokens = x.len() / (n_heads * dim);
        assert!(start + tokens <= self.positions, "rope: position {} past table of {}", start + tokens, self.positions);
        for (t, token) in x.chunks_exact_mut(n_heads * dim).enumerate() {
            let cos = &self.cos[(start + t) * half..(start + t + 1) * half];
            let sin = &self.sin[(start + t) * half..(start + t + 1) * half];
            for head in token.chunks_exact_mut(dim) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b) = (x1[i], x2[i]);
                    x1[i] = a * cos[i] - b * sin[i];
                    x2[i] = b * cos[i] + a * sin[i];
                }
            }
        }
    }
}
