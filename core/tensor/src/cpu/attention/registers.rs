//! The register kernels of a prefill's attention tile (`Head::tile_fixed`):
//! scores of a block of keys transposed so that one register holds a score
//! per position, and weighted sums of values kept in registers, each with
//! exactly the operations of the one-query body (`Head::attend`), so a
//! prefill and a decode agree bit for bit.

use super::{BLOCK, WIDE_BLOCK};

/// [`super::dot_fixed`] of one query with [`BLOCK`] keys at once (`keys_t`,
/// transposed: `[W][BLOCK]`), times `scale`: lane `j` is key `j`'s score
/// with exactly the operations of [`super::dot_fixed`] (partial sum `i` starts at
/// zero and adds `q[i + 32c]·k[i + 32c]` for each chunk `c` in order; then
/// the tree adds `i + 16` into `i`, then `+ 8`, `+ 4`, `+ 2`, `+ 1`),
/// the first two levels per pair of pairs so that eight registers hold
/// the sums.
///
/// # Safety
/// The CPU must have AVX2; `keys_t` must hold `W · BLOCK` values.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn block_scores_avx2<const W: usize>(query: &[f32; W], keys_t: &[f32], scale: f32) -> [f32; BLOCK] {
    use std::arch::x86_64::*;
    const { assert!(W.is_multiple_of(32)) };
    debug_assert!(keys_t.len() >= W * BLOCK);
    let k = keys_t.as_ptr();
    // SAFETY (every leaf): keys_t holds W·BLOCK values.
    let leaf = |i: usize| unsafe { score_leaf::<W>(query, k, i) };
    let mut sums = [_mm256_setzero_ps(); 8];
    for (i, sum) in sums.iter_mut().enumerate() {
        *sum = _mm256_add_ps(_mm256_add_ps(leaf(i), leaf(i + 16)), _mm256_add_ps(leaf(i + 8), leaf(i + 24)));
    }
    for i in 0..4 {
        sums[i] = _mm256_add_ps(sums[i], sums[i + 4]);
    }
    for i in 0..2 {
        sums[i] = _mm256_add_ps(sums[i], sums[i + 2]);
    }
    let dots = _mm256_mul_ps(_mm256_add_ps(sums[0], sums[1]), _mm256_set1_ps(scale));
    let mut out = [0f32; BLOCK];
    // SAFETY: `out` holds BLOCK = 8 floats.
    unsafe { _mm256_storeu_ps(out.as_mut_ptr(), dots) };
    out
}

/// Partial sum `i` of [`super::dot_fixed`] for [`BLOCK`] keys at once: from zero,
/// `+ q[i + 32c] · k[i + 32c]` for each chunk `c` in order (`keys_t` as in
/// [`block_scores_avx2`]). A function, not a closure, so it always inlines.
///
/// # Safety
/// The CPU must have AVX2 (the caller's `target_feature`); `keys_t` must
/// hold `W · BLOCK` values; `i < 32`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn score_leaf<const W: usize>(query: &[f32; W], keys_t: *const f32, i: usize) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    // SAFETY: AVX2 and the bounds by the contract: d < W, so d·BLOCK + 8 ≤ W·BLOCK.
    unsafe {
        let mut sum = _mm256_setzero_ps();
        for c in 0..W / 32 {
            let d = c * 32 + i;
            sum = _mm256_add_ps(sum, _mm256_mul_ps(_mm256_set1_ps(query[d]), _mm256_loadu_ps(keys_t.add(d * BLOCK))));
        }
        sum
    }
}

/// [`block_scores_avx2`] for [`WIDE_BLOCK`] keys in AVX-512 registers
/// (`keys_t` as `[W][WIDE_BLOCK]`): the same operations per lane.
///
/// # Safety
/// The CPU must have AVX-512 F; `keys_t` must hold `W · WIDE_BLOCK` values.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn block_scores_avx512<const W: usize>(
    query: &[f32; W],
    keys_t: &[f32],
    scale: f32,
) -> [f32; WIDE_BLOCK] {
    use std::arch::x86_64::*;
    const { assert!(W.is_multiple_of(32)) };
    debug_assert!(keys_t.len() >= W * WIDE_BLOCK);
    let k = keys_t.as_ptr();
    // SAFETY (every leaf): keys_t holds W·WIDE_BLOCK values.
    let leaf = |i: usize| unsafe { wide_score_leaf::<W>(query, k, i) };
    let mut sums = [_mm512_setzero_ps(); 8];
    for (i, sum) in sums.iter_mut().enumerate() {
        *sum = _mm512_add_ps(_mm512_add_ps(leaf(i), leaf(i + 16)), _mm512_add_ps(leaf(i + 8), leaf(i + 24)));
    }
    for i in 0..4 {
        sums[i] = _mm512_add_ps(sums[i], sums[i + 4]);
    }
    for i in 0..2 {
        sums[i] = _mm512_add_ps(sums[i], sums[i + 2]);
    }
    let dots = _mm512_mul_ps(_mm512_add_ps(sums[0], sums[1]), _mm512_set1_ps(scale));
    let mut out = [0f32; WIDE_BLOCK];
    // SAFETY: `out` holds WIDE_BLOCK = 16 floats.
    unsafe { _mm512_storeu_ps(out.as_mut_ptr(), dots) };
    out
}

/// [`score_leaf`] for [`WIDE_BLOCK`] keys in an AVX-512 register.
///
/// # Safety
/// The CPU must have AVX-512 F (the caller's `target_feature`); `keys_t`
/// must hold `W · WIDE_BLOCK` values; `i < 32`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn wide_score_leaf<const W: usize>(query: &[f32; W], keys_t: *const f32, i: usize) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // SAFETY: AVX-512 F and the bounds by the contract: d < W, so
    // d·WIDE_BLOCK + 16 ≤ W·WIDE_BLOCK.
    unsafe {
        let mut sum = _mm512_setzero_ps();
        for c in 0..W / 32 {
            let d = c * 32 + i;
            sum = _mm512_add_ps(
                sum,
                _mm512_mul_ps(_mm512_set1_ps(query[d]), _mm512_loadu_ps(keys_t.add(d * WIDE_BLOCK))),
            );
        }
        sum
    }
}

/// An 8×8 block of floats transposed: row `k` of the result holds element
/// `k` of every input row.
///
/// # Safety
/// The CPU must have AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn transpose8(r: [std::arch::x86_64::__m256; 8]) -> [std::arch::x86_64::__m256; 8] {
    use std::arch::x86_64::*;
    let t: [__m256; 8] = std::array::from_fn(|i| {
        let (a, b) = (r[i / 2 * 2], r[i / 2 * 2 + 1]);
        if i % 2 == 0 {
            _mm256_unpacklo_ps(a, b)
        } else {
            _mm256_unpackhi_ps(a, b)
        }
    });
    // t[0] = a0 b0 a1 b1 | a4 b4 a5 b5 (rows 0, 1), t[1] = a2 b2 a3 b3 | …
    let u = [
        _mm256_shuffle_ps::<0x44>(t[0], t[2]),
        _mm256_shuffle_ps::<0xEE>(t[0], t[2]),
        _mm256_shuffle_ps::<0x44>(t[1], t[3]),
        _mm256_shuffle_ps::<0xEE>(t[1], t[3]),
        _mm256_shuffle_ps::<0x44>(t[4], t[6]),
        _mm256_shuffle_ps::<0xEE>(t[4], t[6]),
        _mm256_shuffle_ps::<0x44>(t[5], t[7]),
        _mm256_shuffle_ps::<0xEE>(t[5], t[7]),
    ];
    [
        _mm256_permute2f128_ps::<0x20>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x20>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x20>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x20>(u[3], u[7]),
        _mm256_permute2f128_ps::<0x31>(u[0], u[4]),
        _mm256_permute2f128_ps::<0x31>(u[1], u[5]),
        _mm256_permute2f128_ps::<0x31>(u[2], u[6]),
        _mm256_permute2f128_ps::<0x31>(u[3], u[7]),
    ]
}

/// 64 values of each row of a chunk of value rows: the part of them
/// [`weighted_values_avx2`] reads.
#[derive(Clone, Copy)]
pub(super) struct HeadPart<'a> {
    /// Rows of `width` values, back to back.
    pub(super) rows: &'a [f32],
    /// Values per row.
    pub(super) width: usize,
    /// The first of the 64 values within a row.
    pub(super) offset: usize,
}

/// `sum += Σ_p weights[p] · row_p` over the first `weights.len()` rows of
/// `part` (in order) and its 64 values, with [`super::add_scaled`]'s operations
/// per element (a multiply then an add per position), the sums in eight
/// registers.
///
/// # Safety
/// The CPU must have AVX2; `part.rows` must hold `weights.len()` rows and
/// `part.offset + 64 ≤ part.width`; `sum` holds 64.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx2")]
pub(super) unsafe fn weighted_values_avx2(part: HeadPart<'_>, weights: &[f32], sum: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(sum.len() == 64, "weighted_values_avx2: 64 sums");
    // SAFETY (loads and stores of `sum`): r·8 + 8 ≤ 64 = sum.len().
    let mut acc: [__m256; 8] = std::array::from_fn(|r| unsafe { _mm256_loadu_ps(sum.as_ptr().add(r * 8)) });
    for (row, &w) in part.rows.chunks_exact(part.width).zip(weights) {
        let w = _mm256_set1_ps(w);
        let values = row[part.offset..part.offset + 64].as_ptr();
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: r·8 + 8 ≤ 64 values of the slice just bounds-checked.
            *a = _mm256_add_ps(*a, _mm256_mul_ps(w, unsafe { _mm256_loadu_ps(values.add(r * 8)) }));
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: as the loads above.
        unsafe { _mm256_storeu_ps(sum.as_mut_ptr().add(r * 8), *a) };
    }
}

/// [`weighted_values_avx2`] in four 512-bit registers: the same
/// operations per element.
///
/// # Safety
/// As [`weighted_values_avx2`], with AVX-512 F for AVX2.
#[cfg(target_arch = "x86_64")]
#[inline]
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn weighted_values_avx512(part: HeadPart<'_>, weights: &[f32], sum: &mut [f32]) {
    use std::arch::x86_64::*;
    assert!(sum.len() == 64, "weighted_values_avx512: 64 sums");
    // SAFETY (loads and stores of `sum`): r·16 + 16 ≤ 64 = sum.len().
    let mut acc: [__m512; 4] = std::array::from_fn(|r| unsafe { _mm512_loadu_ps(sum.as_ptr().add(r * 16)) });
    for (row, &w) in part.rows.chunks_exact(part.width).zip(weights) {
        let w = _mm512_set1_ps(w);
        let values = row[part.offset..part.offset + 64].as_ptr();
        for (r, a) in acc.iter_mut().enumerate() {
            // SAFETY: r·16 + 16 ≤ 64 values of the slice just bounds-checked.
            *a = _mm512_add_ps(*a, _mm512_mul_ps(w, unsafe { _mm512_loadu_ps(values.add(r * 16)) }));
        }
    }
    for (r, a) in acc.iter().enumerate() {
        // SAFETY: as the loads above.
        unsafe { _mm512_storeu_ps(sum.as_mut_ptr().add(r * 16), *a) };
    }
}
