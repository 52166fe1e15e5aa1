//! AVX2 dot products for the formats on the hot path of decoding.
//!
//! Each block's 4-bit (or 8-bit) weights are widened to 32 bytes and
//! multiplied with the 32 i8 activations by `maddubs` (u8 × i8 → i16 pairs),
//! reduced to i32 by `madd`, and accumulated in f32 with one FMA per block.
//! Formats without a SIMD path here fall back to the scalar code.

use super::{scalar, BlockQ8};
use crate::DType;

/// True when the CPU has AVX2, FMA and F16C.
pub(super) fn is_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

pub(super) fn vec_dot(dtype: DType, row: &[u8], acts: &[BlockQ8]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_supported() {
            // SAFETY: the CPU features these functions are compiled for were
            // just detected, and each function only reads `row` and `acts`
            // within the block counts implied by `acts.len()`, which the
            // caller matched to `row.len()`.
            unsafe {
                match dtype {
                    DType::Q4_1 => return x86::dot_q4_1(row, acts),
                    DType::Q4_0 => return x86::dot_q4_0(row, acts),
                    DType::Q8_0 => return x86::dot_q8_0(row, acts),
                    _ => {}
                }
            }
        }
    }
    scalar::vec_dot(dtype, row, acts)
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    use super::BlockQ8;
    use std::arch::x86_64::*;

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn f16_to_f32(lo: u8, hi: u8) -> f32 {
        let bits = u16::from_le_bytes([lo, hi]) as i32;
        _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits)))
    }

    /// Loads 16 bytes of packed nibbles as 32 bytes: low nibbles, then high.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn unpack_nibbles(ptr: *const u8) -> __m256i {
        let packed = _mm_loadu_si128(ptr as *const __m128i);
        let mask = _mm_set1_epi8(0x0F);
        let lo = _mm_and_si128(packed, mask);
        let hi = _mm_and_si128(_mm_srli_epi16(packed, 4), mask);
        _mm256_set_m128i(hi, lo)
    }

    /// Sum of u8 × i8 products over 32 lanes, as 8 f32 partial sums.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_u8_i8(w: __m256i, a: &BlockQ8) -> __m256 {
        let act = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        let pairs = _mm256_maddubs_epi16(w, act);
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn hsum(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        let s = _mm_add_ss(s, _mm_movehdup_ps(s));
        _mm_cvtss_f32(s)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_1(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        for (i, a) in acts.iter().enumerate() {
            let b = row.as_ptr().add(20 * i);
            let d = f16_to_f32(*b, *b.add(1));
            let m = f16_to_f32(*b.add(2), *b.add(3));
            let w = unpack_nibbles(b.add(4));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_u8_i8(w, a), acc);
            mins += m * a.s;
        }
        hsum(acc) + mins
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_0(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        let mut offsets = 0f32;
        for (i, a) in acts.iter().enumerate() {
            let b = row.as_ptr().add(18 * i);
            let d = f16_to_f32(*b, *b.add(1));
            let w = unpack_nibbles(b.add(2));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_u8_i8(w, a), acc);
            offsets += d * 8.0 * a.s;
        }
        hsum(acc) - offsets
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let mut acc = _mm256_setzero_ps();
        for (i, a) in acts.iter().enumerate() {
            let b = row.as_ptr().add(34 * i);
            let d = f16_to_f32(*b, *b.add(1));
            let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
            let act = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
            // maddubs needs an unsigned left operand: move the sign of w onto a.
            let abs_w = _mm256_sign_epi8(w, w);
            let signed_a = _mm256_sign_epi8(act, w);
            let pairs = _mm256_maddubs_epi16(abs_w, signed_a);
            let sums = _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)));
            acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), sums, acc);
        }
        hsum(acc)
    }
}
