//! Block layouts of each format, written out once for dequantization and
//! quantization. The layouts follow ggml's `block_*` structs byte for byte.

use super::f16_at;
use super::iq4::{dequant_iq4_nl, dequant_iq4_xs, quant_iq4_nl, quant_iq4_xs};
use super::k_quants::{dequant_q2_k, dequant_q3_k, dequant_q5_k, quant_q2_k, quant_q3_k, quant_q5_k};
use super::k_search::{fit_scale_min, fit_symmetric, nearest, round_to_stored, signed_max, MinSearch};
use crate::{DType, Result, TensorError};
use half::f16;

/// Dequantizes `out.len()` elements of `dtype` from `bytes`.
pub fn dequantize_row(dtype: DType, bytes: &[u8], out: &mut [f32]) -> Result<()> {
    let needed = dtype.bytes_for(out.len())?;
    if bytes.len() != needed {
        return Err(TensorError::Incompatible {
            op: "dequantize_row",
            detail: format!("{} elements of {dtype} need {needed} bytes, got {}", out.len(), bytes.len()),
        });
    }
    let (block, size) = (dtype.block_size(), dtype.type_size());
    let blocks = bytes.chunks_exact(size).zip(out.chunks_exact_mut(block));
    match dtype {
        DType::F32 => blocks.for_each(|(b, y)| y[0] = f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        // Exact either way; eight at a time where the CPU allows.
        DType::F16 | DType::BF16 => crate::cpu::half_dot::widen_half_row(dtype, bytes, out),
        DType::Q8_0 => blocks.for_each(|(b, y)| dequant_q8_0(b, y)),
        DType::Q4_0 => blocks.for_each(|(b, y)| dequant_q4_0(b, y)),
        DType::Q4_1 => blocks.for_each(|(b, y)| dequant_q4_1(b, y)),
        DType::Q5_0 => blocks.for_each(|(b, y)| dequant_q5_0(b, y)),
        DType::Q5_1 => blocks.for_each(|(b, y)| dequant_q5_1(b, y)),
        DType::Q4K => blocks.for_each(|(b, y)| dequant_q4_k(b, y)),
        DType::Q6K => blocks.for_each(|(b, y)| dequant_q6_k(b, y)),
        DType::Q2K => blocks.for_each(|(b, y)| dequant_q2_k(b, y)),
        DType::Q3K => blocks.for_each(|(b, y)| dequant_q3_k(b, y)),
        DType::Q5K => blocks.for_each(|(b, y)| dequant_q5_k(b, y)),
        DType::IQ4NL => blocks.for_each(|(b, y)| dequant_iq4_nl(b, y)),
        DType::IQ4XS => blocks.for_each(|(b, y)| dequant_iq4_xs(b, y)),
        DType::NF4 => blocks.for_each(|(b, y)| dequant_nf4(b, y)),
        DType::NF4DQ => blocks.for_each(|(b, y)| dequant_nf4_dq(b, y)),
    }
    Ok(())
}

/// Quantizes `x` into `dtype` blocks appended to `out`.
pub fn quantize_row(dtype: DType, x: &[f32], out: &mut Vec<u8>) -> Result<()> {
    let block = dtype.block_size();
    dtype.bytes_for(x.len())?;
    for chunk in x.chunks_exact(block) {
        match dtype {
            DType::F32 => out.extend_from_slice(&chunk[0].to_le_bytes()),
            DType::F16 => out.extend_from_slice(&f16::from_f32(chunk[0]).to_le_bytes()),
            DType::BF16 => out.extend_from_slice(&half::bf16::from_f32(chunk[0]).to_le_bytes()),
            DType::Q8_0 => quant_q8_0(chunk, out),
            DType::Q4_0 => quant_q4_0(chunk, out),
            DType::Q4_1 => quant_q4_1(chunk, out),
            DType::Q5_0 => quant_q5_0(chunk, out),
            DType::Q5_1 => quant_q5_1(chunk, out),
            DType::Q4K => quant_q4_k(chunk, out),
            DType::Q6K => quant_q6_k(chunk, out),
            DType::Q2K => quant_q2_k(chunk, out),
            DType::Q3K => quant_q3_k(chunk, out),
            DType::Q5K => quant_q5_k(chunk, out),
            DType::IQ4NL => quant_iq4_nl(chunk, out),
            DType::IQ4XS => quant_iq4_xs(chunk, out),
            DType::NF4 => quant_nf4(chunk, out),
            DType::NF4DQ => quant_nf4_dq(chunk, out),
        }
    }
    Ok(())
}

// ---- nf4: f32 absmax | 4-bit codebook indices [64], two per byte, low nibble first ----

/// QLoRA's NormalFloat levels: quantiles of N(0, 1) scaled to [-1, 1],
/// with an exact zero (Dettmers et al. 2023, as bitsandbytes tabulates them).
pub const NF4_LEVELS: [f32; 16] = [
    -1.0,
    -0.696_192_8,
    -0.525_073_05,
    -0.394_917_5,
    -0.284_441_38,
    -0.184_773_43,
    -0.091_050_036,
    0.0,
    0.079_580_3,
    0.160_930_2,
    0.246_112_3,
    0.337_915_24,
    0.440_709_83,
    0.562_617,
    0.722_956_84,
    1.0,
];

fn dequant_nf4(b: &[u8], y: &mut [f32]) {
    let absmax = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
    nf4_values(absmax, &b[4..36], y);
}

/// Writes the 64 values whose codebook indices are `nibbles`, scaled by
/// `absmax`.
fn nf4_values(absmax: f32, nibbles: &[u8], y: &mut [f32]) {
    for (pair, byte) in y.chunks_exact_mut(2).zip(nibbles) {
        pair[0] = NF4_LEVELS[(byte & 0x0f) as usize] * absmax;
        pair[1] = NF4_LEVELS[(byte >> 4) as usize] * absmax;
    }
}

/// The nearest level to `x` (in units of the block's absmax).
fn nf4_index(x: f32) -> u8 {
    // Midpoints between neighbouring levels split the line into 16 bins.
    let mut index = 0u8;
    for pair in NF4_LEVELS.windows(2) {
        if x > (pair[0] + pair[1]) / 2.0 {
            index += 1;
        }
    }
    index
}

fn quant_nf4(x: &[f32], out: &mut Vec<u8>) {
    let absmax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    out.extend_from_slice(&absmax.to_le_bytes());
    push_nf4_nibbles(x, absmax, out);
}

/// Appends the codebook indices of `x` in units of `scale` (≥ the block's
/// absmax, so every value falls within the codebook), two per byte.
fn push_nf4_nibbles(x: &[f32], scale: f32, out: &mut Vec<u8>) {
    let inverse = if scale > 0.0 { 1.0 / scale } else { 0.0 };
    for pair in x.chunks_exact(2) {
        out.push(nf4_index(pair[0] * inverse) | (nf4_index(pair[1] * inverse) << 4));
    }
}

// ---- nf4_dq: u8 scale code | 4-bit codebook indices [64] ----
//
// QLoRA's double quantization stores each block's absmax in 8 bits instead
// of 32. bitsandbytes does it with a second blockwise quantization of the
// absmax values (256 per block, each with an f32 constant); here the byte
// is a fixed logarithmic code, so every 33-byte block stands alone (any row
// length that is whole 64-element blocks) at the same 4.125 bits per
// weight: code c > 0 stands for 2^((c − 191) / 16), sixteen steps per
// octave from 2^-11.9 to 2^4; code 0 for an all-zero block. The code is
// rounded up, so the block's values stay within the codebook's ±1 (an
// absmax above 16, far outside trained projection weights, saturates).

/// 2^(i/16) for i in 0..16, as f32: one octave of scale codes.
const OCTAVE_STEPS: [f32; 16] = [
    1.0,
    1.0442737,
    1.0905077,
    1.1387886,
    1.1892071,
    1.2418578,
    1.2968396,
    1.3542556,
    std::f32::consts::SQRT_2,
    1.4768262,
    1.5422108,
    1.6104903,
    1.6817929,
    1.7562522,
    1.8340081,
    1.9152066,
];

/// The exponent, in sixteenths of an octave, of scale code 1.
const NF4_DQ_CODE_BIAS: i32 = 191;

/// The scale that an nf4_dq code stands for (exact: a table entry times a
/// power of two built from its bits).
pub(crate) fn nf4_dq_scale(code: u8) -> f32 {
    if code == 0 {
        return 0.0;
    }
    let sixteenths = code as i32 - NF4_DQ_CODE_BIAS;
    let octave = sixteenths.div_euclid(16);
    let power_of_two = f32::from_bits(((127 + octave) as u32) << 23);
    OCTAVE_STEPS[sixteenths.rem_euclid(16) as usize] * power_of_two
}

/// The smallest code whose scale is at least `absmax` (255 where none is).
fn nf4_dq_code(absmax: f32) -> u8 {
    if absmax <= 0.0 {
        return 0;
    }
    // log2 gives the neighbourhood; the exact scales settle the rounding.
    let guess = (16.0 * absmax.log2()).ceil() as i32 + NF4_DQ_CODE_BIAS;
    let mut code = guess.clamp(1, 255) as u8;
    while code > 1 && nf4_dq_scale(code - 1) >= absmax {
        code -= 1;
    }
    while code < 255 && nf4_dq_scale(code) < absmax {
        code += 1;
    }
    code
}

fn dequant_nf4_dq(b: &[u8], y: &mut [f32]) {
    nf4_values(nf4_dq_scale(b[0]), &b[1..33], y);
}

fn quant_nf4_dq(x: &[f32], out: &mut Vec<u8>) {
    let code = nf4_dq_code(x.iter().fold(0f32, |m, v| m.max(v.abs())));
    out.push(code);
    push_nf4_nibbles(x, nf4_dq_scale(code), out);
}

// ---- q8_0: f16 d | i8 qs[32] ----

fn dequant_q8_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (v, q) in y.iter_mut().zip(&b[2..34]) {
        *v = d * (*q as i8) as f32;
    }
}

fn quant_q8_0(x: &[f32], out: &mut Vec<u8>) {
    let amax = x.iter().fold(0f32, |m, v| m.max(v.abs()));
    let d = amax / 127.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend(x.iter().map(|v| (v * id).round() as i8 as u8));
}

// ---- q4_0: f16 d | u8 qs[16]; element j in low nibble, j+16 in high ----

fn dequant_q4_0(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 0);
    for (j, q) in b[2..18].iter().enumerate() {
        y[j] = d * ((q & 0x0F) as i32 - 8) as f32;
        y[j + 16] = d * ((q >> 4) as i32 - 8) as f32;
    }
}

fn quant_q4_0(x: &[f32], out: &mut Vec<u8>) {
    let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -8.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    let q = |v: f32| ((v * id + 8.5) as i32).clamp(0, 15) as u8;
    out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

// ---- q4_1: f16 d | f16 m | u8 qs[16] ----

fn dequant_q4_1(b: &[u8], y: &mut [f32]) {
    let (d, m) = (f16_at(b, 0), f16_at(b, 2));
    for (j, q) in b[4..20].iter().enumerate() {
        y[j] = d * (q & 0x0F) as f32 + m;
        y[j + 16] = d * (q >> 4) as f32 + m;
    }
}

fn quant_q4_1(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 15.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    let q = |v: f32| (((v - min) * id + 0.5) as i32).clamp(0, 15) as u8;
    out.extend((0..16).map(|j| q(x[j]) | (q(x[j + 16]) << 4)));
}

// ---- q5_0: f16 d | u32 qh | u8 qs[16]; element j: low nibble of qs[j % 16]
// (j < 16) or its high nibble (j >= 16), fifth bit j of qh ----

/// The 5-bit quant (0..32) of element `j` of a q5 block whose high bits
/// are `qh` and low nibbles `qs`.
pub(crate) fn q5_quant(qh: u32, qs: &[u8], j: usize) -> u8 {
    let low = if j < 16 { qs[j] & 0x0F } else { qs[j - 16] >> 4 };
    low | ((((qh >> j) & 1) as u8) << 4)
}

/// The high bits of a q5 block, at `offset`.
pub(crate) fn q5_high_bits(b: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([b[offset], b[offset + 1], b[offset + 2], b[offset + 3]])
}

fn dequant_q5_0(b: &[u8], y: &mut [f32]) {
    let (d, qh) = (f16_at(b, 0), q5_high_bits(b, 2));
    for (j, v) in y.iter_mut().enumerate() {
        *v = d * (q5_quant(qh, &b[6..22], j) as i32 - 16) as f32;
    }
}

/// Appends the high bits and nibbles of 32 five-bit quants.
fn push_q5(q: &[u8; 32], out: &mut Vec<u8>) {
    let qh = q.iter().enumerate().fold(0u32, |bits, (j, &v)| bits | (((v >> 4) as u32 & 1) << j));
    out.extend_from_slice(&qh.to_le_bytes());
    out.extend((0..16).map(|j| (q[j] & 0x0F) | ((q[j + 16] & 0x0F) << 4)));
}

fn quant_q5_0(x: &[f32], out: &mut Vec<u8>) {
    // As ggml: the element of largest magnitude maps to -16 exactly.
    let max = x.iter().fold(0f32, |m, &v| if v.abs() > m.abs() { v } else { m });
    let d = max / -16.0;
    let id = if d != 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    let q: [u8; 32] = std::array::from_fn(|j| ((x[j] * id + 16.5) as i32).clamp(0, 31) as u8);
    push_q5(&q, out);
}

// ---- q5_1: f16 d | f16 m | u32 qh | u8 qs[16] (as q5_0, value d·q + m) ----

fn dequant_q5_1(b: &[u8], y: &mut [f32]) {
    let (d, m, qh) = (f16_at(b, 0), f16_at(b, 2), q5_high_bits(b, 4));
    for (j, v) in y.iter_mut().enumerate() {
        *v = d * q5_quant(qh, &b[8..24], j) as f32 + m;
    }
}

fn quant_q5_1(x: &[f32], out: &mut Vec<u8>) {
    let min = x.iter().copied().fold(f32::INFINITY, f32::min);
    let max = x.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let d = (max - min) / 31.0;
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    out.extend_from_slice(&f16::from_f32(d).to_le_bytes());
    out.extend_from_slice(&f16::from_f32(min).to_le_bytes());
    let q: [u8; 32] = std::array::from_fn(|j| (((x[j] - min) * id + 0.5) as i32).clamp(0, 31) as u8);
    push_q5(&q, out);
}

// ---- q4_k: f16 d | f16 dmin | u8 scales[12] | u8 qs[128] ----

/// The 6-bit scale and min of sub-block `j` (0..8) of a q4_k block.
pub(crate) fn q4_k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        let sc = (scales[j + 4] & 0x0F) | ((scales[j - 4] >> 6) << 4);
        let m = (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4);
        (sc, m)
    }
}

fn dequant_q4_k(b: &[u8], y: &mut [f32]) {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let scales = &b[4..16];
    for chunk in 0..4 {
        let qs = &b[16 + 32 * chunk..16 + 32 * chunk + 32];
        let (sc_lo, m_lo) = q4_k_scale_min(scales, 2 * chunk);
        let (sc_hi, m_hi) = q4_k_scale_min(scales, 2 * chunk + 1);
        let out = &mut y[64 * chunk..64 * chunk + 64];
        for (l, q) in qs.iter().enumerate() {
            out[l] = d * sc_lo as f32 * (q & 0x0F) as f32 - dmin * m_lo as f32;
            out[l + 32] = d * sc_hi as f32 * (q >> 4) as f32 - dmin * m_hi as f32;
        }
    }
}

/// A 256-element block quantized as q4_k and q5_k share it: per 32-element
/// sub-block a 6-bit scale and min (of the block's f16 `d` and `dmin`),
/// and each element's quant in `0..=max_q`.
pub(super) struct KBlock {
    /// The block's scale of scales, as stored.
    pub d: f16,
    /// The block's scale of mins, as stored.
    pub dmin: f16,
    /// The eight 6-bit scales and mins packed as GGUF's 12 bytes.
    pub scales: [u8; 12],
    /// Each element's quant.
    pub quants: [u8; 256],
}

/// Quantizes 256 values to [`KBlock`] as llama.cpp's reference quantizer
/// does: each 32-element sub-block's scale and min searched over the
/// candidates of `search` (weights `rms + |x|`), the scales and mins then
/// rounded to 6 bits of the largest, and each element re-rounded to its
/// sub-block's stored scale and min.
pub(super) fn quantize_k_block(x: &[f32], search: MinSearch) -> KBlock {
    let mut quants = [0u8; 256];
    let (mut sub_scale, mut sub_min) = ([0f32; 8], [0f32; 8]);
    let mut weights = [0f32; 32];
    for (j, sub) in x.chunks_exact(32).enumerate() {
        let mut sum_x2 = 0f32;
        for v in sub {
            sum_x2 += v * v;
        }
        let rms = (sum_x2 / 32.0).sqrt();
        for (w, v) in weights.iter_mut().zip(sub) {
            *w = rms + v.abs();
        }
        (sub_scale[j], sub_min[j]) = fit_scale_min(sub, &weights, search, &mut quants[32 * j..32 * j + 32]);
    }
    let max_scale = sub_scale.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = sub_min.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inverse = |max: f32| if max > 0.0 { 63.0 / max } else { 0.0 };
    let (inv_scale, inv_min) = (inverse(max_scale), inverse(max_min));
    let sc: [u8; 8] = std::array::from_fn(|j| (nearest(inv_scale * sub_scale[j]) as u8).min(63));
    let mn: [u8; 8] = std::array::from_fn(|j| (nearest(inv_min * sub_min[j]) as u8).min(63));
    let mut scales = [0u8; 12];
    for k in 0..4 {
        scales[k] = sc[k] | ((sc[k + 4] >> 4) << 6);
        scales[k + 4] = mn[k] | ((mn[k + 4] >> 4) << 6);
        scales[k + 8] = (sc[k + 4] & 0x0F) | ((mn[k + 4] & 0x0F) << 4);
    }
    let (d16, dmin16) = (f16::from_f32(max_scale / 63.0), f16::from_f32(max_min / 63.0));
    let (d, dmin) = (d16.to_f32(), dmin16.to_f32());
    round_to_stored(x, &mut quants, 32, (search.levels, 0), |j| (d * sc[j] as f32, dmin * mn[j] as f32));
    KBlock { d: d16, dmin: dmin16, scales, quants }
}

fn quant_q4_k(x: &[f32], out: &mut Vec<u8>) {
    let search = MinSearch { levels: 15, first: -1.0, step: 0.1, steps: 20, absolute: false };
    let block = quantize_k_block(x, search);
    out.extend_from_slice(&block.d.to_le_bytes());
    out.extend_from_slice(&block.dmin.to_le_bytes());
    out.extend_from_slice(&block.scales);
    let q = &block.quants;
    for chunk in 0..4 {
        out.extend((0..32).map(|l| q[64 * chunk + l] | (q[64 * chunk + 32 + l] << 4)));
    }
}

// ---- q6_k: u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d ----

/// Position of element `e` (0..256) of a q6_k block: (ql byte, shift, qh byte, qh shift).
fn q6_k_position(e: usize) -> (usize, u32, usize, u32) {
    let (half, r) = (e / 128, e % 128);
    let (group, l) = (r / 32, r % 32);
    let ql = 64 * half + l + if group % 2 == 1 { 32 } else { 0 };
    let ql_shift = if group >= 2 { 4 } else { 0 };
    (ql, ql_shift, 128 + 32 * half + l, 2 * group as u32)
}

/// The 6-bit quant (offset by 32) of element `e` of a q6_k block.
pub(crate) fn q6_k_quant(b: &[u8], e: usize) -> i32 {
    let (ql, ql_shift, qh, qh_shift) = q6_k_position(e);
    let lo = (b[ql] >> ql_shift) & 0x0F;
    let hi = (b[qh] >> qh_shift) & 3;
    (lo | (hi << 4)) as i32 - 32
}

/// All 256 quants of a q6_k block, offset by 32 (0..63): [`q6_k_quant`]
/// for every element, walked in storage order.
pub(crate) fn q6_k_quants(b: &[u8]) -> [u8; 256] {
    let mut out = [0u8; 256];
    for half in 0..2 {
        for l in 0..32 {
            let high = b[128 + 32 * half + l];
            for group in 0..4 {
                let low = (b[64 * half + l + 32 * (group % 2)] >> (4 * (group / 2))) & 0x0F;
                out[128 * half + 32 * group + l] = low | ((high >> (2 * group)) & 3) << 4;
            }
        }
    }
    out
}

fn dequant_q6_k(b: &[u8], y: &mut [f32]) {
    let d = f16_at(b, 208);
    for (e, v) in y.iter_mut().enumerate() {
        let sc = b[192 + e / 16] as i8;
        *v = d * sc as f32 * q6_k_quant(b, e) as f32;
    }
}

/// As llama.cpp's reference quantizer: each 16-element sub-block's scale
/// searched ([`fit_symmetric`]), the scales rounded to 8 bits of the
/// largest in magnitude (stored as −128), and each element re-rounded to
/// its sub-block's stored scale.
fn quant_q6_k(x: &[f32], out: &mut Vec<u8>) {
    let mut quants = [0u8; 256];
    let sub_scale: [f32; 16] =
        std::array::from_fn(|j| fit_symmetric(&x[16 * j..16 * j + 16], 32, &mut quants[16 * j..]));
    let (max_scale, max_abs) = signed_max(&sub_scale);
    let mut block = [0u8; 210];
    if max_abs < 1e-15 {
        out.extend_from_slice(&block);
        return;
    }
    let iscale = -128.0 / max_scale;
    let d16 = f16::from_f32(1.0 / iscale);
    let d = d16.to_f32();
    let sc: [i8; 16] = std::array::from_fn(|j| nearest(iscale * sub_scale[j]).min(127) as i8);
    round_to_stored(x, &mut quants, 16, (63, 32), |j| (d * sc[j] as f32, 0.0));
    for (e, &u) in quants.iter().enumerate() {
        let (ql, ql_shift, qh, qh_shift) = q6_k_position(e);
        block[ql] |= (u & 0x0F) << ql_shift;
        block[qh] |= (u >> 4) << qh_shift;
    }
    for (j, s) in sc.iter().enumerate() {
        block[192 + j] = *s as u8;
    }
    block[208..210].copy_from_slice(&d16.to_le_bytes());
    out.extend_from_slice(&block);
}

#[cfg(test)]
mod tests {
    use super::{nf4_dq_code, nf4_dq_scale};

    #[test]
    fn nf4_dq_codes_are_sixteen_exact_steps_per_octave_and_round_up() {
        assert_eq!((nf4_dq_scale(0), nf4_dq_scale(191), nf4_dq_scale(255)), (0.0, 1.0, 16.0));
        for code in 1..=255u8 {
            let scale = nf4_dq_scale(code);
            let exact = 2f64.powf((code as f64 - 191.0) / 16.0);
            assert!((scale as f64 / exact - 1.0).abs() < 1e-7, "code {code}: {scale} vs {exact}");
            if code > 16 {
                assert_eq!(scale, 2.0 * nf4_dq_scale(code - 16), "code {code}");
            }
            // A code's own scale maps back to it; a hair above, to the next.
            assert_eq!(nf4_dq_code(scale), code);
            if code < 255 {
                assert_eq!(nf4_dq_code(scale * (1.0 + 1e-6)), code + 1);
            }
        }
        assert_eq!(nf4_dq_code(1e-9), 1);
        assert_eq!(nf4_dq_code(100.0), 255);
    }
}
