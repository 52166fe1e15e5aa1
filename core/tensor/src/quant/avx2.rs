//! AVX2 dot products for the formats on the hot path of decoding.
//!
//! Each block's 4-bit (or 8-bit) weights are widened to 32 bytes and
//! multiplied with the 32 i8 activations by `maddubs` (u8 × i8 → i16 pairs),
//! reduced to i32 by `madd`, and accumulated in f32 with one FMA per block
//! (per 32-element sub-block for the k-quants). q5's fifth bits are spread
//! from their 32-bit word onto the bytes by a shuffle and a compare; q6_k's
//! two 16-element halves take their own scales in the i16 → i32 step, and
//! so do q2_k's and q3_k's. iq4's indices become their table values by one
//! byte shuffle.

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
                    DType::Q5_0 => return x86::dot_q5_0(row, acts),
                    DType::Q5_1 => return x86::dot_q5_1(row, acts),
                    DType::Q4K => return x86::dot_q4_k(row, acts),
                    DType::Q6K => return x86::dot_q6_k(row, acts),
                    DType::Q2K => return x86::dot_q2_k(row, acts),
                    DType::Q3K => return x86::dot_q3_k(row, acts),
                    DType::Q5K => return x86::dot_q5_k(row, acts),
                    DType::IQ4NL => return x86::dot_iq4_nl(row, acts),
                    DType::IQ4XS => return x86::dot_iq4_xs(row, acts),
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

    /// The f16 at `b` as f32, from the table of every f16 (see
    /// `quant::f16_table`). F16C's one-lane `vcvtph2ps` let the compiler
    /// merge its input into whatever register it liked (`vpinsrw`), here
    /// the running sum of the offsets, which chained every block to the one
    /// before; a load has no such dependency.
    #[inline(always)]
    unsafe fn f16_to_f32(table: &[f32; 1 << 16], b: *const u8) -> f32 {
        table[u16::from_le((b as *const u16).read_unaligned()) as usize]
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

    /// Σ w·a of one block whose weights `w` are signed bytes: the sign
    /// moves onto the activations so `maddubs` gets an unsigned left side.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_i8_i8(w: __m256i, a: &BlockQ8) -> __m256 {
        let act = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        let pairs = _mm256_maddubs_epi16(_mm256_sign_epi8(w, w), _mm256_sign_epi8(act, w));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, _mm256_set1_epi16(1)))
    }

    /// One block of a 32-element format, ready to accumulate: the integer
    /// dot as 8 f32 lanes, its scale, and the scalar term (offset·Σa).
    struct BlockTerms {
        dots: __m256,
        scale: f32,
        extra: f32,
    }

    /// Σ over blocks of `scale · dots + extra`, with two independent chains
    /// of accumulators (even and odd blocks), so one block's FMA does not
    /// wait for the previous block's.
    macro_rules! sum_blocks {
        ($row:expr, $acts:expr, $size:expr, |$b:ident, $a:ident| $terms:expr) => {{
            let (mut even, mut odd) = (_mm256_setzero_ps(), _mm256_setzero_ps());
            let (mut even_extra, mut odd_extra) = (0f32, 0f32);
            let mut i = 0;
            while i + 2 <= $acts.len() {
                let ($b, $a) = ($row.as_ptr().add($size * i), &$acts[i]);
                let first: BlockTerms = $terms;
                let ($b, $a) = ($row.as_ptr().add($size * (i + 1)), &$acts[i + 1]);
                let second: BlockTerms = $terms;
                even = _mm256_fmadd_ps(_mm256_set1_ps(first.scale), first.dots, even);
                odd = _mm256_fmadd_ps(_mm256_set1_ps(second.scale), second.dots, odd);
                even_extra += first.extra;
                odd_extra += second.extra;
                i += 2;
            }
            if i < $acts.len() {
                let ($b, $a) = ($row.as_ptr().add($size * i), &$acts[i]);
                let last: BlockTerms = $terms;
                even = _mm256_fmadd_ps(_mm256_set1_ps(last.scale), last.dots, even);
                even_extra += last.extra;
            }
            hsum(_mm256_add_ps(even, odd)) + (even_extra + odd_extra)
        }};
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_1(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        sum_blocks!(row, acts, 20, |b, a| {
            let d = f16_to_f32(table, b);
            let m = f16_to_f32(table, b.add(2));
            BlockTerms { dots: dot_u8_i8(unpack_nibbles(b.add(4)), a), scale: d * a.d, extra: m * a.s }
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_0(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let eight = _mm256_set1_epi8(8);
        sum_blocks!(row, acts, 18, |b, a| {
            let d = f16_to_f32(table, b);
            // q − 8 as signed bytes: no offset term to accumulate.
            let w = _mm256_sub_epi8(unpack_nibbles(b.add(2)), eight);
            BlockTerms { dots: dot_i8_i8(w, a), scale: d * a.d, extra: 0.0 }
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q8_0(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        sum_blocks!(row, acts, 34, |b, a| {
            let d = f16_to_f32(table, b);
            let w = _mm256_loadu_si256(b.add(2) as *const __m256i);
            BlockTerms { dots: dot_i8_i8(w, a), scale: d * a.d, extra: 0.0 }
        })
    }

    /// 0x10 in each byte whose bit of `qh` is set (byte j ↔ bit j).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn fifth_bits(qh: u32) -> __m256i {
        // Byte j takes byte j / 8 of qh, then keeps bit j % 8 of it.
        let spread = _mm256_shuffle_epi8(
            _mm256_set1_epi32(qh as i32),
            _mm256_set_epi64x(0x0303030303030303, 0x0202020202020202, 0x0101010101010101, 0),
        );
        let bit = _mm256_set1_epi64x(0x8040201008040201u64 as i64);
        let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
        _mm256_and_si256(set, _mm256_set1_epi8(0x10))
    }

    /// The 32 five-bit quants of a q5 block: nibbles at `qs`, high bits at `qh`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q5_quants(qh: *const u8, qs: *const u8) -> __m256i {
        let high = u32::from_le_bytes([*qh, *qh.add(1), *qh.add(2), *qh.add(3)]);
        _mm256_or_si256(unpack_nibbles(qs), fifth_bits(high))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q5_0(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let sixteen = _mm256_set1_epi8(16);
        sum_blocks!(row, acts, 22, |b, a| {
            let d = f16_to_f32(table, b);
            // q − 16 as signed bytes: no offset term to accumulate.
            let w = _mm256_sub_epi8(q5_quants(b.add(2), b.add(6)), sixteen);
            BlockTerms { dots: dot_i8_i8(w, a), scale: d * a.d, extra: 0.0 }
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q5_1(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        sum_blocks!(row, acts, 24, |b, a| {
            let d = f16_to_f32(table, b);
            let m = f16_to_f32(table, b.add(2));
            BlockTerms { dots: dot_u8_i8(q5_quants(b.add(4), b.add(8)), a), scale: d * a.d, extra: m * a.s }
        })
    }

    /// The 6-bit scale and min of sub-block `j` of a q4_k block (as
    /// `formats::q4_k_scale_min`, on a raw pointer to the 12 scale bytes).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn q4_k_scale_min(scales: *const u8, j: usize) -> (f32, f32) {
        let at = |k: usize| *scales.add(k);
        let (sc, m) = if j < 4 {
            (at(j) & 63, at(j + 4) & 63)
        } else {
            ((at(j + 4) & 0x0F) | ((at(j - 4) >> 6) << 4), (at(j + 4) >> 4) | ((at(j) >> 6) << 4))
        };
        (sc as f32, m as f32)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q4_k(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        let low = _mm256_set1_epi8(0x0F);
        for (i, sub) in acts.chunks_exact(8).enumerate() {
            let b = row.as_ptr().add(144 * i);
            let (d, dmin) = (f16_to_f32(table, b), f16_to_f32(table, b.add(2)));
            for chunk in 0..4 {
                let qs = _mm256_loadu_si256(b.add(16 + 32 * chunk) as *const __m256i);
                let halves = [_mm256_and_si256(qs, low), _mm256_and_si256(_mm256_srli_epi16(qs, 4), low)];
                for (half, w) in halves.into_iter().enumerate() {
                    let j = 2 * chunk + half;
                    let (sc, m) = q4_k_scale_min(b.add(4), j);
                    let a = &sub[j];
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc * a.d), dot_u8_i8(w, a), acc);
                    mins += dmin * m * a.s;
                }
            }
        }
        hsum(acc) - mins
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q6_k(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let mut acc = _mm256_setzero_ps();
        let (low, two) = (_mm256_set1_epi8(0x0F), _mm256_set1_epi8(3));
        for (i, sub) in acts.chunks_exact(8).enumerate() {
            let b = row.as_ptr().add(210 * i);
            let d = f16_to_f32(table, b.add(208));
            for (j, a) in sub.iter().enumerate() {
                // Sub-block j: half j / 4 of the block, group j % 4 (see formats::q6_k_position).
                let (half, group) = (j / 4, j % 4);
                let ql = _mm256_loadu_si256(b.add(64 * half + 32 * (group % 2)) as *const __m256i);
                let ql = if group >= 2 { _mm256_srli_epi16(ql, 4) } else { ql };
                let qh = _mm256_loadu_si256(b.add(128 + 32 * half) as *const __m256i);
                let qh = _mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * group as i32));
                let q = _mm256_or_si256(_mm256_and_si256(ql, low), _mm256_slli_epi16(_mm256_and_si256(qh, two), 4));
                let scales = [*b.add(192 + 2 * j) as i8 as i16, *b.add(192 + 2 * j + 1) as i8 as i16];
                let sums = dot_halves(q, 32, a, scales);
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), sums, acc);
            }
        }
        hsum(acc)
    }

    /// Σ (q − offset)·a of one 32-element act block as 8 f32 lanes, where
    /// `q` are unsigned bytes and each 16-element half of the block has its
    /// own integer scale (q6_k, q3_k; q2_k with offset 0).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dot_halves(q: __m256i, offset: i8, a: &BlockQ8, scales: [i16; 2]) -> __m256 {
        let act = _mm256_loadu_si256(a.qs.as_ptr() as *const __m256i);
        // Pair sums in i16: |Σ| ≤ 2·63·127 + 2·32·127 < 2¹⁵ for q6_k, less for the others.
        let mut pairs = _mm256_maddubs_epi16(q, act);
        if offset != 0 {
            pairs = _mm256_sub_epi16(pairs, _mm256_maddubs_epi16(_mm256_set1_epi8(offset), act));
        }
        let scales = _mm256_set_m128i(_mm_set1_epi16(scales[1]), _mm_set1_epi16(scales[0]));
        _mm256_cvtepi32_ps(_mm256_madd_epi16(pairs, scales))
    }

    /// Bits `shift..shift + width` of every byte of `v`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn bits(v: __m256i, shift: usize, mask: u8) -> __m256i {
        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift as i32)), _mm256_set1_epi8(mask as i8))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q2_k(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        for (i, sub) in acts.chunks_exact(8).enumerate() {
            let b = row.as_ptr().add(84 * i);
            let (d, dmin) = (f16_to_f32(table, b.add(80)), f16_to_f32(table, b.add(82)));
            for n in 0..2 {
                let qs = _mm256_loadu_si256(b.add(16 + 32 * n) as *const __m256i);
                for j in 0..4 {
                    // Act block 4n + j: bits 2j..2j+2 of the 32 bytes; its halves
                    // are sub-blocks 8n + 2j and 8n + 2j + 1.
                    let (k, a) = (4 * n + j, &sub[4 * n + j]);
                    let (lo, hi) = (*b.add(2 * k), *b.add(2 * k + 1));
                    let scales = [(lo & 0x0F) as i16, (hi & 0x0F) as i16];
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_halves(bits(qs, 2 * j, 3), 0, a, scales), acc);
                    let min_sum = (lo >> 4) as f32 * a.half_sums[0] as f32 + (hi >> 4) as f32 * a.half_sums[1] as f32;
                    mins += dmin * a.d * min_sum;
                }
            }
        }
        hsum(acc) - mins
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q3_k(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let mut acc = _mm256_setzero_ps();
        for (i, sub) in acts.chunks_exact(8).enumerate() {
            let block = &row[110 * i..110 * i + 110];
            let b = block.as_ptr();
            let d = f16_to_f32(table, b.add(108));
            let scales = super::super::k_quants::q3_k_scales(block);
            let hmask = _mm256_loadu_si256(b as *const __m256i);
            for n in 0..2 {
                let qs = _mm256_loadu_si256(b.add(32 + 32 * n) as *const __m256i);
                for j in 0..4 {
                    // Low bits 2j..2j+2, high bit 4n + j of the mask: q + 4 in 0..8.
                    let (k, a) = (4 * n + j, &sub[4 * n + j]);
                    let q = _mm256_or_si256(bits(qs, 2 * j, 3), _mm256_slli_epi16(bits(hmask, k, 1), 2));
                    let halves = [scales[2 * k] as i16, scales[2 * k + 1] as i16];
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * a.d), dot_halves(q, 4, a, halves), acc);
                }
            }
        }
        hsum(acc)
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_q5_k(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let mut acc = _mm256_setzero_ps();
        let mut mins = 0f32;
        for (i, sub) in acts.chunks_exact(8).enumerate() {
            let b = row.as_ptr().add(176 * i);
            let (d, dmin) = (f16_to_f32(table, b), f16_to_f32(table, b.add(2)));
            let qh = _mm256_loadu_si256(b.add(16) as *const __m256i);
            for chunk in 0..4 {
                let qs = _mm256_loadu_si256(b.add(48 + 32 * chunk) as *const __m256i);
                for half in 0..2 {
                    // Sub-block j: nibbles of chunk j / 2, fifth bits at bit j of qh.
                    let j = 2 * chunk + half;
                    let w = _mm256_or_si256(bits(qs, 4 * half, 0x0F), _mm256_slli_epi16(bits(qh, j, 1), 4));
                    let (sc, m) = q4_k_scale_min(b.add(4), j);
                    let a = &sub[j];
                    acc = _mm256_fmadd_ps(_mm256_set1_ps(d * sc * a.d), dot_u8_i8(w, a), acc);
                    mins += dmin * m * a.s;
                }
            }
        }
        hsum(acc) - mins
    }

    /// ggml's iq4 table in both 128-bit lanes, for `shuffle_epi8`.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn iq4_table() -> __m256i {
        _mm256_broadcastsi128_si256(_mm_loadu_si128(super::super::IQ4_VALUES.as_ptr() as *const __m128i))
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_iq4_nl(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let values = iq4_table();
        sum_blocks!(row, acts, 18, |b, a| {
            let d = f16_to_f32(table, b);
            let w = _mm256_shuffle_epi8(values, unpack_nibbles(b.add(2)));
            BlockTerms { dots: dot_i8_i8(w, a), scale: d * a.d, extra: 0.0 }
        })
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) unsafe fn dot_iq4_xs(row: &[u8], acts: &[BlockQ8]) -> f32 {
        let table = super::super::f16_table();
        let values = iq4_table();
        let mut acc = _mm256_setzero_ps();
        for (i, sub) in acts.chunks_exact(8).enumerate() {
            let block = &row[136 * i..136 * i + 136];
            let d = f16_to_f32(table, block.as_ptr());
            for (k, a) in sub.iter().enumerate() {
                let w = _mm256_shuffle_epi8(values, unpack_nibbles(block.as_ptr().add(8 + 16 * k)));
                let scale = super::super::iq4::iq4_xs_scale(block, k) as f32;
                acc = _mm256_fmadd_ps(_mm256_set1_ps(d * scale * a.d), dot_i8_i8(w, a), acc);
            }
        }
        hsum(acc)
    }
}
