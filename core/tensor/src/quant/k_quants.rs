//! The k-quants beside q4_k and q6_k: q2_k, q3_k and q5_k, the types of
//! llama.cpp's Q2_K, Q3_K_* and Q5_K_* files. Layouts follow ggml's
//! `block_q2_K`, `block_q3_K` and `block_q5_K` byte for byte; each format's
//! quant of element `e` is written out once here and used by the
//! dequantizer and the scalar dot products.
//!
//! The quantizers are llama.cpp's reference ones (no importance matrix):
//! each sub-block's scale searched as `k_search` does, then the block's
//! scales rounded and every element re-rounded to them, writing the bytes
//! llama.cpp's quantize tool writes for the same input.

use super::f16_at;
use super::formats::{q4_k_scale_min, quantize_k_block};
use super::k_search::{fit_by_moves, fit_scale_min, nearest, round_to_stored, signed_max, MinSearch};
use half::f16;

/// Elements per k-quant block.
const QK_K: usize = 256;

// ---- q2_k: u8 scales[16] | u8 qs[64] | f16 d | f16 dmin ----
// Element e: n = e / 128, j = (e % 128) / 32, l = e % 32; the quant is
// bits 2j..2j+2 of qs[32n + l]; sub-block e / 16 has scale (low nibble)
// and min (high nibble) in scales[e / 16].

/// The 2-bit quant (0..=3) of element `e` of a q2_k block.
pub(crate) fn q2_k_quant(b: &[u8], e: usize) -> i32 {
    let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
    ((b[16 + 32 * n + l] >> (2 * j)) & 3) as i32
}

/// The 4-bit scale and min of 16-element sub-block `i` of a q2_k block.
pub(crate) fn q2_k_scale_min(b: &[u8], i: usize) -> (i32, i32) {
    ((b[i] & 0x0F) as i32, (b[i] >> 4) as i32)
}

pub(super) fn dequant_q2_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    for (e, v) in y.iter_mut().enumerate() {
        let (sc, m) = q2_k_scale_min(b, e / 16);
        *v = d * sc as f32 * q2_k_quant(b, e) as f32 - dmin * m as f32;
    }
}

/// Each 16-element sub-block's scale and min searched (weights `|x|`,
/// absolute errors), both rounded to 4 bits of their largest, then each
/// element re-rounded to its sub-block's stored pair.
pub(super) fn quant_q2_k(x: &[f32], out: &mut Vec<u8>) {
    let search = MinSearch { levels: 3, first: -0.5, step: 0.1, steps: 15, absolute: true };
    let mut quants = [0u8; 256];
    let (mut sub_scale, mut sub_min) = ([0f32; 16], [0f32; 16]);
    for (j, sub) in x.chunks_exact(16).enumerate() {
        let weights: [f32; 16] = std::array::from_fn(|i| sub[i].abs());
        (sub_scale[j], sub_min[j]) = fit_scale_min(sub, &weights, search, &mut quants[16 * j..16 * j + 16]);
    }
    let max_scale = sub_scale.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = sub_min.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let mut block = [0u8; 84];
    let d16 = if max_scale > 0.0 { f16::from_f32(max_scale / 15.0) } else { f16::ZERO };
    let dmin16 = if max_min > 0.0 { f16::from_f32(max_min / 15.0) } else { f16::ZERO };
    for j in 0..16 {
        let scale = if max_scale > 0.0 { nearest(15.0 / max_scale * sub_scale[j]) as u8 } else { 0 };
        let min = if max_min > 0.0 { nearest(15.0 / max_min * sub_min[j]) as u8 } else { 0 };
        block[j] = scale | (min << 4);
    }
    let (d, dmin) = (d16.to_f32(), dmin16.to_f32());
    round_to_stored(x, &mut quants, 16, (3, 0), |j| {
        let (sc, m) = q2_k_scale_min(&block, j);
        (d * sc as f32, dmin * m as f32)
    });
    for (e, &q) in quants.iter().enumerate() {
        let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
        block[16 + 32 * n + l] |= q << (2 * j);
    }
    block[80..82].copy_from_slice(&d16.to_le_bytes());
    block[82..84].copy_from_slice(&dmin16.to_le_bytes());
    out.extend_from_slice(&block);
}

// ---- q3_k: u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d ----
// Element e: n = e / 128, j = (e % 128) / 32, l = e % 32; the low two
// bits are bits 2j..2j+2 of qs[32n + l], the high bit is bit 4n + j of
// hmask[l], and the quant is low − 4 when that bit is clear (−4..=3).
// Sub-block e / 16 has a 6-bit scale, stored as scale + 32.

/// The signed 3-bit quant (−4..=3) of element `e` of a q3_k block.
pub(crate) fn q3_k_quant(b: &[u8], e: usize) -> i32 {
    let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
    let low = ((b[32 + 32 * n + l] >> (2 * j)) & 3) as i32;
    let high = (b[l] >> (4 * n + j)) & 1;
    if high == 1 {
        low
    } else {
        low - 4
    }
}

/// The sixteen signed scales (−32..=31) of a q3_k block: sub-block `i`
/// keeps its low nibble in byte `i % 8` (high nibble for `i ≥ 8`) and its
/// top two bits in byte `8 + i % 4` at bit `2 · (i / 4)`.
pub(crate) fn q3_k_scales(b: &[u8]) -> [i8; 16] {
    let scales = &b[96..108];
    std::array::from_fn(|i| {
        let low = (scales[i % 8] >> (4 * (i / 8))) & 0x0F;
        let high = (scales[8 + i % 4] >> (2 * (i / 4))) & 3;
        (low | (high << 4)) as i8 - 32
    })
}

pub(super) fn dequant_q3_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 108);
    let scales = q3_k_scales(b);
    for (e, v) in y.iter_mut().enumerate() {
        *v = d * scales[e / 16] as f32 * q3_k_quant(b, e) as f32;
    }
}

/// Each 16-element sub-block's scale searched ([`fit_by_moves`]), the
/// scales rounded to 6 signed bits of the largest in magnitude (stored as
/// −32), then each element re-rounded to its sub-block's stored scale.
pub(super) fn quant_q3_k(x: &[f32], out: &mut Vec<u8>) {
    let mut quants = [0u8; 256];
    let sub_scale: [f32; 16] = std::array::from_fn(|j| fit_by_moves(&x[16 * j..16 * j + 16], 4, &mut quants[16 * j..]));
    let (max_scale, _) = signed_max(&sub_scale);
    let mut block = [0u8; 110];
    let mut d16 = f16::ZERO;
    if max_scale != 0.0 {
        let iscale = -32.0 / max_scale;
        for (i, &s) in sub_scale.iter().enumerate() {
            let stored = ((nearest(iscale * s) as i8).clamp(-32, 31) + 32) as u8;
            block[96 + i % 8] |= (stored & 0x0F) << (4 * (i / 8));
            block[104 + i % 4] |= (stored >> 4) << (2 * (i / 4));
        }
        d16 = f16::from_f32(1.0 / iscale);
    }
    let d = d16.to_f32();
    block[108..110].copy_from_slice(&d16.to_le_bytes());
    let scales = q3_k_scales(&block);
    round_to_stored(x, &mut quants, 16, (7, 4), |j| (d * scales[j] as f32, 0.0));
    for (e, &stored) in quants.iter().enumerate() {
        let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
        block[32 + 32 * n + l] |= (stored & 3) << (2 * j);
        block[l] |= (stored >> 2) << (4 * n + j);
    }
    out.extend_from_slice(&block);
}

// ---- q5_k: f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128] ----
// As q4_k (sub-block 2c in the low nibbles of qs[32c..32c + 32], 2c + 1
// in the high ones) plus the fifth bit of element e in bit e / 32 of
// qh[e % 32].

/// The 5-bit quant (0..=31) of element `e` of a q5_k block.
pub(crate) fn q5_k_quant(b: &[u8], e: usize) -> i32 {
    let (chunk, r) = (e / 64, e % 64);
    let byte = b[48 + 32 * chunk + r % 32];
    let low = if r < 32 { byte & 0x0F } else { byte >> 4 };
    let high = (b[16 + e % 32] >> (e / 32)) & 1;
    (low | (high << 4)) as i32
}

pub(super) fn dequant_q5_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    for (e, v) in y.iter_mut().enumerate() {
        let (sc, m) = q4_k_scale_min(&b[4..16], e / 32);
        *v = d * sc as f32 * q5_k_quant(b, e) as f32 - dmin * m as f32;
    }
}

pub(super) fn quant_q5_k(x: &[f32], out: &mut Vec<u8>) {
    let search = MinSearch { levels: 31, first: -0.5, step: 0.1, steps: 15, absolute: false };
    let block = quantize_k_block(x, search);
    out.extend_from_slice(&block.d.to_le_bytes());
    out.extend_from_slice(&block.dmin.to_le_bytes());
    out.extend_from_slice(&block.scales);
    let q = &block.quants;
    let mut high = [0u8; 32];
    for (e, &v) in q.iter().enumerate() {
        high[e % 32] |= (v >> 4) << (e / 32);
    }
    out.extend_from_slice(&high);
    for chunk in 0..QK_K / 64 {
        out.extend((0..32).map(|l| (q[64 * chunk + l] & 0x0F) | ((q[64 * chunk + 32 + l] & 0x0F) << 4)));
    }
}
