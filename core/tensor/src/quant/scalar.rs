//! Portable dot products of quantized weight rows with [`BlockQ8`]
//! activations: the reference the SIMD paths are tested against.

use super::formats::{q4_k_scale_min, q5_high_bits, q5_quant, q6_k_quant};
use super::iq4::{iq4_value, iq4_xs_scale};
use super::k_quants::{q2_k_quant, q2_k_scale_min, q3_k_quant, q3_k_scales, q5_k_quant};
use super::{f16_at, BlockQ8, QK};
use crate::DType;

pub(super) fn vec_dot(dtype: DType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    match dtype {
        DType::Q8_0 => row.chunks_exact(34).zip(acts).map(|(b, a)| dot_q8_0(b, a)).sum(),
        DType::Q4_0 => row.chunks_exact(18).zip(acts).map(|(b, a)| dot_q4_0(b, a)).sum(),
        DType::Q4_1 => row.chunks_exact(20).zip(acts).map(|(b, a)| dot_q4_1(b, a)).sum(),
        DType::Q5_0 => row.chunks_exact(22).zip(acts).map(|(b, a)| dot_q5_0(b, a)).sum(),
        DType::Q5_1 => row.chunks_exact(24).zip(acts).map(|(b, a)| dot_q5_1(b, a)).sum(),
        DType::Q4K => row.chunks_exact(144).zip(acts.chunks_exact(8)).map(|(b, a)| dot_q4_k(b, a)).sum(),
        DType::Q6K => row.chunks_exact(210).zip(acts.chunks_exact(8)).map(|(b, a)| dot_q6_k(b, a)).sum(),
        DType::Q2K => row.chunks_exact(84).zip(acts.chunks_exact(8)).map(|(b, a)| dot_q2_k(b, a)).sum(),
        DType::Q3K => row.chunks_exact(110).zip(acts.chunks_exact(8)).map(|(b, a)| dot_q3_k(b, a)).sum(),
        DType::Q5K => row.chunks_exact(176).zip(acts.chunks_exact(8)).map(|(b, a)| dot_q5_k(b, a)).sum(),
        DType::IQ4NL => row.chunks_exact(18).zip(acts).map(|(b, a)| dot_iq4_nl(b, a)).sum(),
        DType::IQ4XS => row.chunks_exact(136).zip(acts.chunks_exact(8)).map(|(b, a)| dot_iq4_xs(b, a)).sum(),
        DType::F32 | DType::F16 | DType::BF16 | DType::NF4 | DType::NF4DQ => {
            unreachable!("vec_dot is only called for quantized weights")
        }
    }
}

fn isum(w: impl Iterator<Item = i32>, a: &[i8]) -> i32 {
    w.zip(a).map(|(w, &a)| w * a as i32).sum()
}

fn dot_q8_0(b: &[u8], a: &BlockQ8) -> f32 {
    let s = isum(b[2..34].iter().map(|&q| q as i8 as i32), &a.qs);
    f16_at(b, 0) * a.d * s as f32
}

fn nibbles(qs: &[u8]) -> impl Iterator<Item = i32> + '_ {
    qs.iter().map(|q| (q & 0x0F) as i32).chain(qs.iter().map(|q| (q >> 4) as i32))
}

fn dot_q4_0(b: &[u8], a: &BlockQ8) -> f32 {
    let s = isum(nibbles(&b[2..18]), &a.qs);
    f16_at(b, 0) * (a.d * s as f32 - 8.0 * a.s)
}

fn dot_q4_1(b: &[u8], a: &BlockQ8) -> f32 {
    let s = isum(nibbles(&b[4..20]), &a.qs);
    f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.s
}

fn q5_sum(qh: u32, qs: &[u8], a: &BlockQ8) -> i32 {
    isum((0..QK).map(|j| q5_quant(qh, qs, j) as i32), &a.qs)
}

fn dot_q5_0(b: &[u8], a: &BlockQ8) -> f32 {
    let s = q5_sum(q5_high_bits(b, 2), &b[6..22], a);
    f16_at(b, 0) * (a.d * s as f32 - 16.0 * a.s)
}

fn dot_q5_1(b: &[u8], a: &BlockQ8) -> f32 {
    let s = q5_sum(q5_high_bits(b, 4), &b[8..24], a);
    f16_at(b, 0) * a.d * s as f32 + f16_at(b, 2) * a.s
}

fn dot_q4_k(b: &[u8], acts: &[BlockQ8]) -> f32 {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let mut total = 0f32;
    for (j, a) in acts.iter().enumerate() {
        let (sc, m) = q4_k_scale_min(&b[4..16], j);
        let qs = &b[16 + 32 * (j / 2)..16 + 32 * (j / 2) + 32];
        let shift = if j % 2 == 0 { 0 } else { 4 };
        let s = isum(qs.iter().map(|q| ((q >> shift) & 0x0F) as i32), &a.qs);
        total += d * sc as f32 * a.d * s as f32 - dmin * m as f32 * a.s;
    }
    total
}

fn dot_q6_k(b: &[u8], acts: &[BlockQ8]) -> f32 {
    let d = f16_at(b, 208);
    let mut total = 0f32;
    for (j, a) in acts.iter().enumerate() {
        for half in 0..2 {
            let sc = b[192 + 2 * j + half] as i8 as f32;
            let base = QK * j + 16 * half;
            let s: i32 = (0..16).map(|l| q6_k_quant(b, base + l) * a.qs[16 * half + l] as i32).sum();
            total += d * sc * a.d * s as f32;
        }
    }
    total
}

/// Σ q·a over the 16 elements of half `half` of act block `j` of a
/// 256-element block whose quant of element `e` is `quant(e)`.
fn half_sum(quant: impl Fn(usize) -> i32, a: &BlockQ8, j: usize, half: usize) -> i32 {
    (0..16).map(|l| quant(QK * j + 16 * half + l) * a.qs[16 * half + l] as i32).sum()
}

fn dot_q2_k(b: &[u8], acts: &[BlockQ8]) -> f32 {
    let (d, dmin) = (f16_at(b, 80), f16_at(b, 82));
    let mut total = 0f32;
    for (j, a) in acts.iter().enumerate() {
        for half in 0..2 {
            let (sc, m) = q2_k_scale_min(b, 2 * j + half);
            let s = half_sum(|e| q2_k_quant(b, e), a, j, half);
            total += d * sc as f32 * a.d * s as f32 - dmin * m as f32 * a.d * a.half_sums[half] as f32;
        }
    }
    total
}

fn dot_q3_k(b: &[u8], acts: &[BlockQ8]) -> f32 {
    let d = f16_at(b, 108);
    let scales = q3_k_scales(b);
    let mut total = 0f32;
    for (j, a) in acts.iter().enumerate() {
        for half in 0..2 {
            let s = half_sum(|e| q3_k_quant(b, e), a, j, half);
            total += d * scales[2 * j + half] as f32 * a.d * s as f32;
        }
    }
    total
}

fn dot_q5_k(b: &[u8], acts: &[BlockQ8]) -> f32 {
    let (d, dmin) = (f16_at(b, 0), f16_at(b, 2));
    let mut total = 0f32;
    for (j, a) in acts.iter().enumerate() {
        let (sc, m) = q4_k_scale_min(&b[4..16], j);
        let s = isum((0..QK).map(|l| q5_k_quant(b, QK * j + l)), &a.qs);
        total += d * sc as f32 * a.d * s as f32 - dmin * m as f32 * a.s;
    }
    total
}

fn dot_iq4_nl(b: &[u8], a: &BlockQ8) -> f32 {
    let s = isum((0..QK).map(|j| iq4_value(&b[2..18], j)), &a.qs);
    f16_at(b, 0) * a.d * s as f32
}

fn dot_iq4_xs(b: &[u8], acts: &[BlockQ8]) -> f32 {
    let d = f16_at(b, 0);
    let mut total = 0f32;
    for (i, a) in acts.iter().enumerate() {
        let qs = &b[8 + 16 * i..24 + 16 * i];
        let s = isum((0..QK).map(|j| iq4_value(qs, j)), &a.qs);
        total += d * iq4_xs_scale(b, i) as f32 * a.d * s as f32;
    }
    total
}
