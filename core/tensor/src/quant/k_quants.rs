//! The k-quants beside q4_k and q6_k: q2_k, q3_k and q5_k, the types of
//! llama.cpp's Q2_K, Q3_K_* and Q5_K_* files. Layouts follow ggml's
//! `block_q2_K`, `block_q3_K` and `block_q5_K` byte for byte; each format's
//! quant of element `e` is written out once here and used by the
//! dequantizer and the scalar dot products.
//!
//! The quantizers are tailor's own, simpler than llama.cpp's (no search of
//! scales): they round each sub-block's range onto its levels, so their
//! error is somewhat larger than llama.cpp's on the same input; files that
//! llama.cpp wrote load and run exactly as stored.

use super::f16_at;
use super::formats::{q4_k_scale_min, quantize_k_block};
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

pub(super) fn quant_q2_k(x: &[f32], out: &mut Vec<u8>) {
    // Each 16-element sub-block spans [min(0, lo), hi] in three steps.
    let ranges: Vec<(f32, f32)> = x
        .chunks_exact(16)
        .map(|s| {
            let lo = s.iter().copied().fold(0f32, f32::min);
            let hi = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
            ((hi - lo) / 3.0, -lo)
        })
        .collect();
    let d16 = f16::from_f32(ranges.iter().fold(0f32, |m, r| m.max(r.0)) / 15.0);
    let dmin16 = f16::from_f32(ranges.iter().fold(0f32, |m, r| m.max(r.1)) / 15.0);
    let (d, dmin) = (d16.to_f32(), dmin16.to_f32());
    let to4 = |v: f32, s: f32| if s > 0.0 { ((v / s).round() as i32).clamp(0, 15) as u8 } else { 0 };
    let mut block = [0u8; 84];
    for (i, &(step, min)) in ranges.iter().enumerate() {
        block[i] = to4(step, d) | (to4(min, dmin) << 4);
    }
    for (e, &v) in x.iter().enumerate() {
        let (sc, m) = q2_k_scale_min(&block, e / 16);
        let step = d * sc as f32;
        let q = if step > 0.0 { (((v + dmin * m as f32) / step).round() as i32).clamp(0, 3) } else { 0 };
        let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
        block[16 + 32 * n + l] |= (q as u8) << (2 * j);
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

pub(super) fn quant_q3_k(x: &[f32], out: &mut Vec<u8>) {
    // As q4_0 per 16-element sub-block: the element of largest magnitude
    // maps to −4; the sub-block steps share 6 bits of the largest.
    let steps: Vec<f32> = x.chunks_exact(16).map(|s| signed_absmax(s) / -4.0).collect();
    let d16 = f16::from_f32(signed_absmax(&steps) / -32.0);
    let d = d16.to_f32();
    let scales: Vec<i32> =
        steps.iter().map(|&s| if d != 0.0 { ((s / d).round() as i32).clamp(-32, 31) } else { 0 }).collect();
    let mut block = [0u8; 110];
    for (i, &sc) in scales.iter().enumerate() {
        let stored = (sc + 32) as u8;
        block[96 + i % 8] |= (stored & 0x0F) << (4 * (i / 8));
        block[104 + i % 4] |= (stored >> 4) << (2 * (i / 4));
    }
    for (e, &v) in x.iter().enumerate() {
        let step = d * scales[e / 16] as f32;
        let q = if step != 0.0 { ((v / step).round() as i32).clamp(-4, 3) } else { 0 };
        let stored = (q + 4) as u8;
        let (n, j, l) = (e / 128, (e % 128) / 32, e % 32);
        block[32 + 32 * n + l] |= (stored & 3) << (2 * j);
        block[l] |= (stored >> 2) << (4 * n + j);
    }
    block[108..110].copy_from_slice(&d16.to_le_bytes());
    out.extend_from_slice(&block);
}

/// The value of largest magnitude, with its sign.
pub(super) fn signed_absmax(x: &[f32]) -> f32 {
    x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m })
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
    let block = quantize_k_block(x, 31);
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
