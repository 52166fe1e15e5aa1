//! iq4_nl and iq4_xs: 4-bit indices into one fixed non-linear table of
//! sixteen i8 values (denser near zero, where weights are), as ggml's
//! `block_iq4_nl` (32 elements, one f16 scale) and `block_iq4_xs` (256
//! elements, a 6-bit scale per 32 of them) lay them out. Index pairing is
//! q4_0's: byte `j` of a 32-element run holds element `j` in its low
//! nibble and `j + 16` in its high one.
//!
//! The quantizers are llama.cpp's (`quantize_row_iq4_nl_impl`, no
//! importance matrix), writing its bytes for the same input: each
//! 32-element sub-block's scale is the best least-squares fit (weights
//! `x²`) over fifteen candidates around `−127 / max`, then every element
//! takes the table value nearest it at the stored scale.

use super::f16_at;
use super::k_search::{nearest, signed_max};
use half::f16;

/// The table both formats index (ggml's `kvalues_iq4nl`).
pub const IQ4_VALUES: [i8; 16] = [-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113];

/// The table value of element `j` (0..32) of a 16-byte run of indices.
pub(crate) fn iq4_value(qs: &[u8], j: usize) -> i32 {
    let index = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
    IQ4_VALUES[index as usize] as i32
}

/// The signed scale (−32..=31) of 32-element sub-block `i` of an iq4_xs
/// block: four low bits from `scales_l`, two high bits from `scales_h`.
pub(crate) fn iq4_xs_scale(b: &[u8], i: usize) -> i32 {
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    let low = (b[4 + i / 2] >> (4 * (i % 2))) & 0x0F;
    let high = ((scales_h >> (2 * i)) & 3) as u8;
    (low | (high << 4)) as i32 - 32
}

// ---- iq4_nl: f16 d | u8 qs[16] ----

pub(super) fn dequant_iq4_nl(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, v) in y.iter_mut().enumerate() {
        *v = d * iq4_value(&b[2..18], j) as f32;
    }
}

pub(super) fn quant_iq4_nl(x: &[f32], out: &mut Vec<u8>) {
    let d = fit_scale(x);
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    push_indices(x, inverse, out);
}

// ---- iq4_xs: f16 d | u16 scales_h | u8 scales_l[4] | u8 qs[128] ----

pub(super) fn dequant_iq4_xs(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (i, sub) in y.chunks_exact_mut(32).enumerate() {
        let step = d * iq4_xs_scale(b, i) as f32;
        let qs = &b[8 + 16 * i..24 + 16 * i];
        for (j, v) in sub.iter_mut().enumerate() {
            *v = step * iq4_value(qs, j) as f32;
        }
    }
}

/// Each sub-block's scale fitted, then rounded to 6 signed bits of the
/// block's `d` (the largest in magnitude stored as −32); each element
/// rounded at its sub-block's rounded scale (in f32, before `d`'s f16
/// rounding, as llama.cpp does).
pub(super) fn quant_iq4_xs(x: &[f32], out: &mut Vec<u8>) {
    let scales: Vec<f32> = x.chunks_exact(32).map(fit_scale).collect();
    let (max_scale, _) = signed_max(&scales);
    let d = -max_scale / 32.0;
    let inverse = if d != 0.0 { 1.0 / d } else { 0.0 };
    let mut block = [0u8; 136];
    block[0..2].copy_from_slice(&f16::from_f32(d).to_le_bytes());
    let mut scales_h = 0u16;
    let mut quants = Vec::with_capacity(128);
    for (i, (sub, &scale)) in x.chunks_exact(32).zip(&scales).enumerate() {
        let level = nearest(inverse * scale).clamp(-32, 31);
        let step = d * level as f32;
        push_indices(sub, if step != 0.0 { 1.0 / step } else { 0.0 }, &mut quants);
        let stored = (level + 32) as u8;
        block[4 + i / 2] |= (stored & 0x0F) << (4 * (i % 2));
        scales_h |= ((stored >> 4) as u16) << (2 * i);
    }
    block[2..4].copy_from_slice(&scales_h.to_le_bytes());
    block[8..].copy_from_slice(&quants);
    out.extend_from_slice(&block);
}

/// The scale of a 32-element sub-block: of the roundings to the table at
/// `−127 / max` and at fifteen steps around it, the least-squares scale
/// (weights `x²`) of the one that fits best (0 for an all-zero sub-block).
fn fit_scale(x: &[f32]) -> f32 {
    let (max, amax) = signed_max(x);
    if amax < 1e-15 {
        return 0.0;
    }
    // Σ x²·q·x and Σ x²·q² of the rounding at `inverse` per unit.
    let sums = |inverse: f32| {
        let (mut sum_qx, mut sum_q2) = (0f32, 0f32);
        for &v in x {
            let q = IQ4_VALUES[nearest_index(inverse * v)] as f32;
            let w = v * v;
            sum_qx += w * q * v;
            sum_q2 += w * q * q;
        }
        (sum_qx, sum_q2)
    };
    let first = IQ4_VALUES[0];
    let (sum_qx, sum_q2) = sums(1.0 / (-max / first as f32));
    let mut scale = sum_qx / sum_q2;
    let mut best = scale * sum_qx;
    for offset in -7..=7 {
        let (sum_qx, sum_q2) = sums((offset + first as i32) as f32 / max);
        if sum_q2 > 0.0 && sum_qx * sum_qx > best * sum_q2 {
            scale = sum_qx / sum_q2;
            best = scale * sum_qx;
        }
    }
    scale
}

/// The index of the table value nearest `target` (the higher of two at
/// equal distance).
fn nearest_index(target: f32) -> usize {
    let value = |i: usize| IQ4_VALUES[i] as f32;
    if target <= value(0) {
        return 0;
    }
    if target >= value(15) {
        return 15;
    }
    let (mut low, mut high) = (0, 15);
    while high - low > 1 {
        let mid = (low + high) / 2;
        if target < value(mid) {
            high = mid;
        } else {
            low = mid;
        }
    }
    if target - value(high - 1) < value(high) - target {
        high - 1
    } else {
        high
    }
}

/// Appends the table indices of `x` at `inverse` per unit, 32 at a time:
/// element `j` in the low nibble of byte `j % 16` (`j < 16`) or its high
/// nibble.
fn push_indices(x: &[f32], inverse: f32, out: &mut Vec<u8>) {
    for run in x.chunks_exact(32) {
        let index = |j: usize| nearest_index(inverse * run[j]) as u8;
        out.extend((0..16).map(|j| index(j) | (index(j + 16) << 4)));
    }
}
