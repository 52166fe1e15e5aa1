//! The AVX2 + F16C tile kernel of [`super`]: three rows × four tokens,
//! each f16/bf16 weight vector widened in registers, the tile's sums kept
//! between passes. Split from `half_gemm` so that file keeps the tile walk
//! and the AVX-512 kernels; the module header there says when this kernel
//! is chosen and what it measured.

#[cfg(target_arch = "x86_64")]
use super::super::half_dot::widen8;
#[cfg(all(doc, target_arch = "x86_64"))]
use super::{kernel, pack_token_tiles};
use super::{store, Avx2Sums, OutPtr, Tile, TileInputs, AVX2_ROWS, AVX2_TOKENS};
use crate::DType;
use std::ops::Range;

/// A tile of `shape` (rows, tokens) through the AVX2 kernel compiled
/// for it, over `inputs`; on the pass that ends the rows, its sums stored.
#[cfg(target_arch = "x86_64")]
pub(super) unsafe fn run_tile_avx2(
    tile: &Tile,
    shape: (usize, usize),
    inputs: Range<usize>,
    sums: &mut Avx2Sums,
    out: &OutPtr,
) {
    match shape.0 {
        1 => run_tokens_avx2::<1>(tile, shape.1, inputs, sums, out),
        2 => run_tokens_avx2::<2>(tile, shape.1, inputs, sums, out),
        _ => run_tokens_avx2::<AVX2_ROWS>(tile, shape.1, inputs, sums, out),
    }
}

/// [`run_tile_avx2`] for `R` rows.
#[cfg(target_arch = "x86_64")]
unsafe fn run_tokens_avx2<const R: usize>(
    tile: &Tile,
    t: usize,
    inputs: Range<usize>,
    sums: &mut Avx2Sums,
    out: &OutPtr,
) {
    match t {
        1 => pass_avx2::<R, 1>(tile, inputs, sums, out),
        2 => pass_avx2::<R, 2>(tile, inputs, sums, out),
        3 => pass_avx2::<R, 3>(tile, inputs, sums, out),
        _ => pass_avx2::<R, AVX2_TOKENS>(tile, inputs, sums, out),
    }
}

/// One pass of an `R × T` tile over `inputs`; after the pass that ends
/// the rows, its sums stored.
#[cfg(target_arch = "x86_64")]
unsafe fn pass_avx2<const R: usize, const T: usize>(
    tile: &Tile,
    inputs: Range<usize>,
    sums: &mut Avx2Sums,
    out: &OutPtr,
) {
    let last = inputs.end == tile.in_dim;
    if let Some(tile_sums) = kernel_avx2::<R, T>(tile, inputs, last, sums) {
        store::<R, T>(tile, out, tile_sums)
    }
}

/// [`kernel`] on AVX2 over `inputs`: per step of 8 inputs, `R` widened
/// weight vectors and `T` activation loads, `R·T` FMAs (12 accumulators,
/// three weight vectors and an input: the 16 registers), the
/// accumulators taken from and left in `sums`; after the `last` pass,
/// returns each accumulator's eight lanes reduced in the reference's order.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn kernel_avx2<const R: usize, const T: usize>(
    tile: &Tile,
    inputs: Range<usize>,
    last: bool,
    sums: &mut Avx2Sums,
) -> Option<[[f32; T]; R]> {
    use std::arch::x86_64::*;
    let TileInputs::F32(x) = tile.x else { unreachable!("bf16 and f16 inputs take their product kernels") };
    let w: [*const u8; R] = std::array::from_fn(|i| tile.w.as_ptr().add(2 * (tile.first_row + i) * tile.in_dim));
    // The tile's inputs as `pack_token_tiles` laid them out: T tokens' 8 inputs per step.
    let x = x.as_ptr().add(tile.first_token * tile.in_dim);
    let mut acc: [[__m256; R]; T] =
        std::array::from_fn(|j| std::array::from_fn(|i| _mm256_loadu_ps(sums.0[j][i].as_ptr())));
    if tile.dtype == DType::BF16 {
        steps_avx2::<R, T, true>(&mut acc, &w, x, inputs);
    } else {
        steps_avx2::<R, T, false>(&mut acc, &w, x, inputs);
    }
    for (j, sums_j) in acc.iter().enumerate() {
        for (i, sum) in sums_j.iter().enumerate() {
            _mm256_storeu_ps(sums.0[j][i].as_mut_ptr(), *sum);
        }
    }
    last.then(|| std::array::from_fn(|i| std::array::from_fn(|j| reduce_eight(acc[j][i]))))
}

/// [`kernel_avx2`]'s FMAs over `inputs` (whole steps of 8), for bf16
/// (`BF16`) or f16 rows `w` (the branch outside the loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
unsafe fn steps_avx2<const R: usize, const T: usize, const BF16: bool>(
    acc: &mut [[std::arch::x86_64::__m256; R]; T],
    w: &[*const u8; R],
    x: *const f32,
    inputs: Range<usize>,
) {
    use std::arch::x86_64::*;
    for at in inputs.step_by(8) {
        let weights: [__m256; R] = std::array::from_fn(|i| widen8::<BF16>(w[i].add(2 * at)));
        let inputs = x.add(at * T);
        for (j, sums) in acc.iter_mut().enumerate() {
            let input = _mm256_loadu_ps(inputs.add(8 * j));
            for (sum, weight) in sums.iter_mut().zip(&weights) {
                *sum = _mm256_fmadd_ps(*weight, input, *sum);
            }
        }
    }
}

/// One accumulator's eight lanes added as the reference's `reduce_lanes`
/// does: halves pairwise, 8 → 4 → 2 → 1.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn reduce_eight(sum: std::arch::x86_64::__m256) -> f32 {
    use std::arch::x86_64::*;
    let fours = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
    let twos = _mm_add_ps(fours, _mm_movehl_ps(fours, fours));
    _mm_cvtss_f32(_mm_add_ss(twos, _mm_shuffle_ps::<1>(twos, twos)))
}

#[cfg(not(target_arch = "x86_64"))]
pub(super) unsafe fn run_tile_avx2(_: &Tile, _: (usize, usize), _: Range<usize>, _: &mut Avx2Sums, _: &OutPtr) {
    unreachable!("half_gemm runs only where supported() holds")
}
