//! Linear layers: `y = x · Wᵀ` for dense and block-quantized `W`.
//!
//! Decoding (one token) is a matrix-vector product and memory bound: weights
//! stay quantized and activations are quantized to 8 bits. Prefill (many
//! tokens) is compute bound: each quantized matrix is dequantized once into a
//! scratch buffer and multiplied with the `gemm` crate.

use crate::quant::{dequantize_row, quantize_activations, supports_dot, vec_dot, BlockQ8, DotImpl};
use crate::{DType, Result, Tensor, TensorError};
use rayon::prelude::*;

/// Below this many tokens a quantized linear uses integer dot products;
/// at or above it, dequantize + gemm.
pub const QUANT_GEMM_MIN_TOKENS: usize = 8;

/// Reusable buffers for [`linear`], so steady-state decoding allocates nothing.
#[derive(Default)]
pub struct LinearScratch {
    acts: Vec<BlockQ8>,
    dense: Vec<f32>,
}

/// `y[t, o] = Σ_i x[t, i] · W[o, i]` for `tokens` rows of `x`.
///
/// `w` is `[out, in]`; `x` holds `tokens × in` values and `y` `tokens × out`.
pub fn linear(
    x: &[f32],
    tokens: usize,
    w: &Tensor,
    y: &mut [f32],
    scratch: &mut LinearScratch,
) -> Result<()> {
    let (out_dim, in_dim) = (w.row_count(), w.row_len());
    if w.shape().len() != 2 || x.len() != tokens * in_dim || y.len() != tokens * out_dim {
        return Err(TensorError::Incompatible {
            op: "linear",
            detail: format!(
                "x has {} values for {tokens} tokens, weight is {:?}, y has {} values",
                x.len(),
                w.shape(),
                y.len()
            ),
        });
    }
    let dtype = w.dtype();
    if dtype == DType::F32 {
        let weights = w.to_f32()?;
        if tokens == 1 {
            matvec_f32(&weights, in_dim, x, y);
        } else {
            gemm_f32(x, tokens, in_dim, &weights, out_dim, y);
        }
        return Ok(());
    }
    if supports_dot(dtype) && tokens < QUANT_GEMM_MIN_TOKENS {
        for (x_row, y_row) in x.chunks_exact(in_dim).zip(y.chunks_exact_mut(out_dim)) {
            quantized_matvec(w, x_row, y_row, &mut scratch.acts)?;
        }
        return Ok(());
    }
    dequantize_into(w, &mut scratch.dense)?;
    gemm_f32(x, tokens, in_dim, &scratch.dense, out_dim, y);
    Ok(())
}

/// Rows of output handled by one rayon task.
fn rows_per_task(rows: usize) -> usize {
    let tasks = rayon::current_num_threads() * 4;
    rows.div_ceil(tasks).max(16)
}

fn quantized_matvec(w: &Tensor, x: &[f32], y: &mut [f32], acts: &mut Vec<BlockQ8>) -> Result<()> {
    quantize_activations(x, acts)?;
    let imp = DotImpl::detect();
    let dtype = w.dtype();
    let acts: &[BlockQ8] = acts;
    let chunk = rows_per_task(y.len());
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        for (r, out) in ys.iter_mut().enumerate() {
            *out = vec_dot(dtype, w.row_bytes(c * chunk + r), acts, imp);
        }
    });
    Ok(())
}

fn dequantize_into(w: &Tensor, dense: &mut Vec<f32>) -> Result<()> {
    let in_dim = w.row_len();
    dense.resize(w.elem_count(), 0.0);
    let dtype = w.dtype();
    dense
        .par_chunks_mut(in_dim * 16)
        .enumerate()
        .try_for_each(|(c, rows)| {
            for (r, out) in rows.chunks_exact_mut(in_dim).enumerate() {
                dequantize_row(dtype, w.row_bytes(c * 16 + r), out)?;
            }
            Ok(())
        })
}

/// `y = W · x` for a dense row-major `W` with rows of `in_dim` values.
pub fn matvec_f32(w: &[f32], in_dim: usize, x: &[f32], y: &mut [f32]) {
    let chunk = rows_per_task(y.len());
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        for (r, out) in ys.iter_mut().enumerate() {
            let row = c * chunk + r;
            *out = dot_f32(&w[row * in_dim..(row + 1) * in_dim], x);
        }
    });
}

/// Dot product with eight independent accumulators (vectorises well).
fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0f32; 8];
    let (a8, b8) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a8
        .remainder()
        .iter()
        .zip(b8.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in a8.zip(b8) {
        for i in 0..8 {
            acc[i] = x[i].mul_add(y[i], acc[i]);
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// `y[m × n] = x[m × k] · W[n × k]ᵀ` with the gemm crate on rayon's pool.
pub fn gemm_f32(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && y.len() >= m * n,
        "gemm_f32: buffers smaller than m={m} n={n} k={k}"
    );
    let threads = rayon::current_num_threads();
    let parallelism = if threads > 1 {
        gemm::Parallelism::Rayon(threads)
    } else {
        gemm::Parallelism::None
    };
    // SAFETY: the assert above guarantees every index the strides reach is in
    // bounds: x is m×k row-major (row stride k), w is n×k row-major read as a
    // k×n matrix (column stride k), y is m×n row-major. `y` is exclusively
    // borrowed, and read_dst=false means its old contents are not read.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            false,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            0.0,
            1.0,
            false,
            false,
            false,
            parallelism,
        );
    }
}
