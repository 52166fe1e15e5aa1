//! GGUF block-quantized formats: layouts, (de)quantization and dot products.
//!
//! Weights stay in their block format; activations are quantized to 8 bits in
//! blocks of 32 ([`BlockQ8`]) so a matvec becomes integer dot products, as
//! llama.cpp does (with one scale per 256-element super block for the
//! k-quants, as its `q8_K`). Every format has a scalar path (the
//! reference) and, where it matters for speed, an AVX2 path chosen at
//! run time.

mod avx2;
mod formats;
pub mod interleaved;
mod iq4;
mod k_quants;
mod k_search;
pub mod layout;
pub mod packed;
mod scalar;

pub use formats::{dequantize_row, quantize_row, NF4_LEVELS};
pub use iq4::IQ4_VALUES;

use crate::{DType, Result, TensorError};

/// Elements per activation block.
pub const QK: usize = 32;

#[cfg(test)]
mod tests {
    #[test]
    fn f16_widening_is_exact_for_every_value() {
        for bits in 0..=u16::MAX {
            let want = half::f16::from_bits(bits).to_f32();
            let got = super::f16_bits_to_f32(bits);
            assert!(got.to_bits() == want.to_bits() || (got.is_nan() && want.is_nan()), "{bits:#06x}: {got} vs {want}");
        }
    }
}

/// One block of 32 activations quantized to i8 with a shared scale.
#[derive(Debug, Clone, Copy, Default)]
#[repr(C)]
pub struct BlockQ8 {
    /// Scale: value = d * q.
    pub d: f32,
    /// d times the sum of the quants (used for formats with an offset or min).
    pub s: f32,
    /// The quants.
    pub qs: [i8; QK],
    /// The sums of the first and of the last 16 quants (q6_k's kernel
    /// subtracts its `32·Σ a` per half-block from these, once per token
    /// rather than once per group of weight rows).
    pub half_sums: [i16; 2],
    /// `−32 ·` [`BlockQ8::half_sums`] as i32: the offset term of weights
    /// stored as `q + 32` (q6_k, and q3_k in the two-group kernel), where a
    /// chain of `vpdpbusd` starts with one broadcast load, no multiply.
    pub offset_sums: [i32; 2],
    /// `−128 · Σ a` over the block: the offset term of weights stored as
    /// `q + 128` (iq4_xs's table values in the two-group kernel).
    pub offset_sum: i32,
}

/// Quantizes a row of activations (length a multiple of 32) to [`BlockQ8`]s,
/// each block with its own scale.
pub fn quantize_activations(x: &[f32], out: &mut Vec<BlockQ8>) -> Result<()> {
    quantize_activations_over(x, QK, out)
}

/// Elements of a super block: the span over which
/// [`quantize_activations_for`] shares one scale for the formats that
/// need it ([`shares_act_scales`]).
pub const QK_K: usize = 256;

/// True for the formats whose interleaved kernels take activations with
/// one scale per 256-element super block, as llama.cpp's `q8_K` has: the
/// k-quants and iq4_xs. Each sums a super block's scaled sub-blocks (q6_k,
/// q3_k, q2_k: each 16-element half's exact integer sum times `d·sc`;
/// q4_k, q5_k, iq4_xs: each 32-element sub-block's) in f32 and multiplies
/// by the activations' scale once per token and super block, where a
/// scale per 32 elements took a multiply per token and block.
pub fn shares_act_scales(dtype: DType) -> bool {
    matches!(dtype, DType::Q6K | DType::Q3K | DType::Q2K | DType::Q4K | DType::Q5K | DType::IQ4XS)
}

/// [`quantize_activations`] as a matrix of type `dtype` needs it: one
/// scale per [`QK_K`] elements (the blocks of each super block share it)
/// where [`shares_act_scales`], else per block. Every kernel takes the
/// shared form too (its blocks are ordinary blocks that happen to share
/// `d`).
pub fn quantize_activations_for(dtype: DType, x: &[f32], out: &mut Vec<BlockQ8>) -> Result<()> {
    quantize_activations_over(x, act_span(dtype), out)
}

/// The values that share one activation scale for a matrix of type
/// `dtype` ([`quantize_activations_for`]).
pub(crate) fn act_span(dtype: DType) -> usize {
    if shares_act_scales(dtype) {
        QK_K
    } else {
        QK
    }
}

/// True when every super block of `acts` (a whole number of them) has one
/// scale in all of its blocks, as the kernels of [`shares_act_scales`]
/// formats require.
pub fn scales_shared(acts: &[BlockQ8]) -> bool {
    let per_super = QK_K / QK;
    acts.len().is_multiple_of(per_super)
        && acts.chunks_exact(per_super).all(|sub| sub.iter().all(|a| a.d.to_bits() == sub[0].d.to_bits()))
}

/// Quantizes `x` block by block, each run of `span` elements (32 or 256)
/// sharing the scale `amax / 127` of the whole run.
fn quantize_activations_over(x: &[f32], span: usize, out: &mut Vec<BlockQ8>) -> Result<()> {
    if !x.len().is_multiple_of(span) {
        return Err(TensorError::BadBlockLength { dtype: DType::Q8_0, block: span, len: x.len() });
    }
    out.clear();
    out.resize(x.len() / QK, BlockQ8::default());
    quantize_runs(x, span, out);
    Ok(())
}

/// The blocks of `x` (a whole number of `span`s) into `out`, one per 32.
pub(crate) fn quantize_runs(x: &[f32], span: usize, out: &mut [BlockQ8]) {
    for (run, blocks) in x.chunks_exact(span).zip(out.chunks_exact_mut(span / QK)) {
        #[cfg(target_arch = "x86_64")]
        {
            if crate::cpu::has_avx2_fma() {
                // SAFETY: the features these functions are compiled for were just detected.
                unsafe {
                    let d = abs_max_avx2(run) / 127.0;
                    for (block, values) in blocks.iter_mut().zip(run.chunks_exact(QK)) {
                        *block = quantize_block_avx2(values, d);
                    }
                }
                continue;
            }
        }
        let d = run.iter().fold(0f32, |m, v| m.max(v.abs())) / 127.0;
        for (block, values) in blocks.iter_mut().zip(run.chunks_exact(QK)) {
            *block = quantize_activation_block(values, d);
        }
    }
}

/// The largest |x| of `x` (a whole number of 32-element blocks), in AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn abs_max_avx2(x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let sign = _mm256_set1_ps(-0.0);
    let mut m = _mm256_setzero_ps();
    for block in x.chunks_exact(8) {
        m = _mm256_max_ps(m, _mm256_andnot_ps(sign, _mm256_loadu_ps(block.as_ptr())));
    }
    let m = _mm_max_ps(_mm256_castps256_ps128(m), _mm256_extractf128_ps::<1>(m));
    let m = _mm_max_ps(m, _mm_movehl_ps(m, m));
    _mm_cvtss_f32(_mm_max_ss(m, _mm_movehdup_ps(m)))
}

/// [`quantize_activation_block`] in AVX2: the same operations in the same
/// order (`1 / d`, multiply, round half to even, integer sum), so the
/// results are identical.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_block_avx2(block: &[f32], d: f32) -> BlockQ8 {
    use std::arch::x86_64::*;
    let v: [__m256; 4] = std::array::from_fn(|i| _mm256_loadu_ps(block.as_ptr().add(8 * i)));
    let id = _mm256_set1_ps(if d > 0.0 { 1.0 / d } else { 0.0 });
    const NEAREST: i32 = _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC;
    let q = v.map(|r| _mm256_cvtps_epi32(_mm256_round_ps::<NEAREST>(_mm256_mul_ps(r, id))));
    let sum = _mm256_add_epi32(_mm256_add_epi32(q[0], q[1]), _mm256_add_epi32(q[2], q[3]));
    let sum = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256::<1>(sum));
    let sum = _mm_add_epi32(sum, _mm_shuffle_epi32::<0b01_00_11_10>(sum));
    let sum = _mm_cvtsi128_si32(_mm_add_epi32(sum, _mm_shuffle_epi32::<0b10_11_00_01>(sum)));
    // Narrow to bytes (values are within ±127); the packs interleave
    // 128-bit lanes, which the final permute puts back in order.
    let words = [_mm256_packs_epi32(q[0], q[1]), _mm256_packs_epi32(q[2], q[3])];
    let bytes = _mm256_packs_epi16(words[0], words[1]);
    let ordered = _mm256_permutevar8x32_epi32(bytes, _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    let mut qs = [0i8; QK];
    _mm256_storeu_si256(qs.as_mut_ptr() as *mut __m256i, ordered);
    block_q8(d, sum, qs)
}

/// One block of `x` quantized at scale `d` (the block's own `amax / 127`,
/// or its super block's).
#[inline(always)]
fn quantize_activation_block(x: &[f32], d: f32) -> BlockQ8 {
    let id = if d > 0.0 { 1.0 / d } else { 0.0 };
    let mut qs = [0i8; QK];
    let mut sum = 0i32;
    for (q, v) in qs.iter_mut().zip(x) {
        // Ties to even, as llama.cpp's SIMD quantizers round (and it vectorizes).
        *q = (v * id).round_ties_even() as i8;
        sum += *q as i32;
    }
    block_q8(d, sum, qs)
}

/// A quantized block with the sums its kernels take.
#[inline(always)]
fn block_q8(d: f32, sum: i32, qs: [i8; QK]) -> BlockQ8 {
    let half_sums = half_sums(&qs);
    BlockQ8 {
        d,
        s: d * sum as f32,
        qs,
        half_sums,
        offset_sums: half_sums.map(|h| -32 * h as i32),
        offset_sum: -128 * sum,
    }
}

/// The sums of the two 16-quant halves of a block (each within ±2032).
#[inline(always)]
fn half_sums(qs: &[i8; QK]) -> [i16; 2] {
    let sum = |half: &[i8]| half.iter().map(|&q| q as i16).sum::<i16>();
    [sum(&qs[..QK / 2]), sum(&qs[QK / 2..])]
}

/// Which implementation of the quantized dot product to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DotImpl {
    /// Portable scalar code (the reference).
    Scalar,
    /// AVX2 + FMA + F16C, detected at run time.
    Avx2,
}

impl DotImpl {
    /// The fastest implementation this CPU supports.
    pub fn detect() -> DotImpl {
        if avx2::is_supported() {
            DotImpl::Avx2
        } else {
            DotImpl::Scalar
        }
    }
}

/// Dot product of one quantized weight row with quantized activations.
///
/// `row` holds `acts.len() * 32` elements of `dtype`. The kernels read raw
/// memory by block counts, so this is checked on every call (one compare
/// per row): a dtype without a dot product ([`supports_dot`]) or lengths
/// that disagree panic here, before any read.
pub fn vec_dot(dtype: DType, row: &[u8], acts: &[BlockQ8], imp: DotImpl) -> f32 {
    assert!(supports_dot(dtype), "vec_dot: {dtype:?} weights have no quantized dot product");
    let elements = acts.len() * QK;
    assert!(
        elements.is_multiple_of(dtype.block_size()) && row.len() == elements / dtype.block_size() * dtype.type_size(),
        "vec_dot: a {dtype:?} row of {} bytes does not match {} activation blocks",
        row.len(),
        acts.len()
    );
    match imp {
        DotImpl::Avx2 => avx2::vec_dot(dtype, row, acts),
        DotImpl::Scalar => scalar::vec_dot(dtype, row, acts),
    }
}

/// True when `vec_dot` supports weights of this dtype.
pub fn supports_dot(dtype: DType) -> bool {
    dtype.is_gguf_block()
}

/// An f16 (as bits) widened to f32 exactly, without F16C: the magnitude's
/// bits moved into f32 position, then scaled by 2¹¹² (exact; f16
/// subnormals become normal f32), the sign put back. Infinities and NaNs
/// take the slow path.
#[inline(always)]
pub(crate) fn f16_bits_to_f32(bits: u16) -> f32 {
    if bits & 0x7c00 == 0x7c00 {
        return f16_special_to_f32(bits);
    }
    const TWO_POW_112: f32 = f32::from_bits((127 + 112) << 23);
    let magnitude = f32::from_bits(((bits & 0x7fff) as u32) << 13) * TWO_POW_112;
    f32::from_bits(magnitude.to_bits() | ((bits as u32 & 0x8000) << 16))
}

/// Every f16 widened to f32, indexed by its bits (256 KiB, built once):
/// the SIMD dot products read their per-block scales from it, one load
/// each, which measured faster than both F16C's one-lane convert and
/// [`f16_bits_to_f32`]'s integer steps (q8_0 rows: 12.7 → 17.9 GB/s per
/// thread on Zen 4).
pub(crate) fn f16_table() -> &'static [f32; 1 << 16] {
    static TABLE: std::sync::OnceLock<Box<[f32; 1 << 16]>> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| {
        let mut table = Box::new([0f32; 1 << 16]);
        for (bits, value) in table.iter_mut().enumerate() {
            *value = f16_bits_to_f32(bits as u16);
        }
        table
    })
}

/// Infinities and NaNs, out of the hot loops.
#[cold]
#[inline(never)]
fn f16_special_to_f32(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

pub(crate) fn f16_at(bytes: &[u8], offset: usize) -> f32 {
    half::f16::from_le_bytes([bytes[offset], bytes[offset + 1]]).to_f32()
}
