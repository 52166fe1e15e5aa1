//! Causal multi-head attention with grouped-query heads over a KV cache.

use super::softmax_in_place;
use rayon::prelude::*;

/// Head layout of an attention layer.
#[derive(Debug, Clone, Copy)]
pub struct AttentionShape {
    /// Query heads.
    pub n_head: usize,
    /// Key/value heads (divides `n_head`).
    pub n_kv_head: usize,
    /// Values per head.
    pub head_dim: usize,
}

/// Attention for `tokens` queries at positions `start..start + tokens`.
///
/// `q` and `out` are `[tokens, n_head · head_dim]`; `keys` and `values` are
/// `[positions, n_kv_head · head_dim]` and hold at least `start + tokens`
/// positions. Query `t` attends to positions `0..=start + t`.
pub fn causal_attention(
    q: &[f32],
    keys: &[f32],
    values: &[f32],
    start: usize,
    shape: AttentionShape,
    out: &mut [f32],
) {
    let AttentionShape {
        n_head,
        n_kv_head,
        head_dim,
    } = shape;
    let kv_stride = n_kv_head * head_dim;
    let group = n_head / n_kv_head;
    let scale = 1.0 / (head_dim as f32).sqrt();
    out.par_chunks_mut(head_dim)
        .enumerate()
        .for_each(|(index, dst)| {
            let (t, h) = (index / n_head, index % n_head);
            let query = &q[index * head_dim..(index + 1) * head_dim];
            let kv_offset = (h / group) * head_dim;
            let visible = start + t + 1;
            let mut scores: Vec<f32> = (0..visible)
                .map(|p| {
                    let key =
                        &keys[p * kv_stride + kv_offset..p * kv_stride + kv_offset + head_dim];
                    query.iter().zip(key).map(|(a, b)| a * b).sum::<f32>() * scale
                })
                .collect();
            softmax_in_place(&mut scores);
            dst.fill(0.0);
            for (p, w) in scores.iter().enumerate() {
                let value =
                    &values[p * kv_stride + kv_offset..p * kv_stride + kv_offset + head_dim];
                dst.iter_mut().zip(value).for_each(|(d, v)| *d += w * v);
            }
        });
}
