//! The f16 product kernel: f16 weights times activations rounded to f16,
//! multiplied and summed in f16 by `vfmadd231ph` (AVX-512 FP16), each f16
//! sum taking one pass's 16 products before the f32 sums take it; and the
//! widening kernel's rerun for tokens whose f16 sums overflow. Split from
//! `half_gemm` so that file keeps the tile walk and the widening kernels;
//! the module header there says when this kernel is chosen and what it
//! measured.

use super::{avx512_supported, half_gemm_on, HalfInputs, HalfKernel, LANES};
#[cfg(target_arch = "x86_64")]
use super::{finish_pass, load_sums, Avx512Sums, Tile};
#[cfg(all(doc, target_arch = "x86_64"))]
use super::{kernel, pack_token_tiles, AVX512_PASS};
use crate::DType;
#[cfg(target_arch = "x86_64")]
use std::ops::Range;

/// Whether this CPU multiplies in f16 (AVX-512 FP16, with the AVX-512
/// tiles).
pub(super) fn fp16_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static FP16: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *FP16.get_or_init(|| {
            avx512_supported() && is_x86_feature_detected!("avx512bw") && is_x86_feature_detected!("avx512fp16")
        })
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a `dtype` matrix with rows of `in_dim` inputs takes the f16
/// product kernel on this CPU (f16 weights, AVX-512 FP16, rows of whole
/// 32-input steps), at decode as at prefill.
pub(crate) fn takes_f16_products(dtype: DType, in_dim: usize) -> bool {
    dtype == DType::F16 && in_dim > 0 && in_dim.is_multiple_of(2 * LANES) && fp16_supported()
}

/// Whether this CPU stores a bf16 matrix with rows of `in_dim` inputs as
/// f16 at load ([`bf16_into_f16`]), so that it takes the f16 product
/// kernel instead of `vdpbf16ps`: where AVX-512 FP16 is present,
/// `vfmadd231ph` does 32 products per instruction at an FMA's rate and
/// `vdpbf16ps` 32 at half of it (1B BF16 prefill, Sapphire Rapids, 2
/// threads: 92–95 → 135 tok/s), and f16 activations carry
/// three more mantissa bits than bf16 ones.
pub(crate) fn stores_bf16_as_f16(in_dim: usize) -> bool {
    takes_f16_products(DType::F16, in_dim)
}

/// Converts little-endian bf16 values (`from`) to little-endian f16
/// (`to`, as long), rounding to nearest even; `false` (and `to` partly
/// written) if a value is not finite in f16: a NaN, an infinity, or a
/// magnitude past 65,504. Every bf16 value of magnitude 2⁻¹⁷ (7.6e-6) or
/// more that f16 can hold converts exactly (bf16 carries 8 significant
/// bits, f16 11, down to its subnormal step of 2⁻²⁴); smaller ones move
/// by at most 2⁻²⁵.
pub(crate) fn bf16_into_f16(from: &[u8], to: &mut [u8]) -> bool {
    use half::slice::HalfFloatSliceExt;
    const STEP: usize = 1024;
    let (mut wide, mut halves) = ([0f32; STEP], [half::f16::ZERO; STEP]);
    let mut finite = true;
    for (from, to) in from.chunks(2 * STEP).zip(to.chunks_mut(2 * STEP)) {
        let count = from.len() / 2;
        for (w, b) in wide.iter_mut().zip(from.chunks_exact(2)) {
            *w = f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16);
        }
        halves[..count].convert_from_f32_slice(&wide[..count]);
        for (h, out) in halves.iter().zip(to.chunks_exact_mut(2)) {
            let bits = h.to_bits();
            finite &= bits & 0x7c00 != 0x7c00;
            out.copy_from_slice(&bits.to_le_bytes());
        }
    }
    finite
}

/// `values` rounded to f16 (to nearest, ties to even), as bits.
pub(super) fn f16_bits(values: &[f32]) -> Vec<u16> {
    use half::slice::HalfFloatSliceExt;
    let mut halves = vec![half::f16::ZERO; values.len()];
    halves.convert_from_f32_slice(values);
    halves.iter().map(|h| h.to_bits()).collect()
}

/// The f16 product kernel's results for tokens whose f16 sums overflowed
/// (an input or a partial sum past f16's ±65,504: any non-finite output
/// while the token's inputs are finite) recomputed token by token with the
/// widening kernel, so a token's result never depends on the others in
/// the call.
pub(super) fn widen_where_f16_overflowed(dtype: DType, w: &[u8], in_dim: usize, x: &[f32], y: &mut [f32]) {
    let rows = w.len() / (2 * in_dim);
    for (input, out) in x.chunks_exact(in_dim).zip(y.chunks_exact_mut(rows)) {
        if out.iter().all(|v| v.is_finite()) || !input.iter().all(|v| v.is_finite()) {
            continue;
        }
        half_gemm_on(HalfKernel::Avx512, dtype, w, in_dim, HalfInputs::F32(input), 1, out);
    }
}

/// The tile's `R × T` sums with `vfmadd231ph` over `inputs` (whole steps
/// of 32, at most one pass of [`AVX512_PASS`]): per step, `R` weight
/// vectors loaded as stored and `T` f16 activation vectors (packed by
/// [`pack_token_tiles`]), `R·T` FMAs in f16 into 32-lane chains that start
/// at zero each pass, so each f16 sum takes at most 16 products (llama.cpp
/// sums f16 dot products in f16 over whole rows where the CPU has f16
/// arithmetic: on ARM). At the pass's end each chain's low 16 lanes and
/// then its high 16 are widened and added to the tile's f32 sums, which
/// are kept in `sums` between passes as in [`kernel`]; after the `last`
/// pass, each chain's lanes reduced as there.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512fp16")]
pub(super) unsafe fn f16_kernel<const R: usize, const T: usize>(
    tile: &Tile,
    x: &[u16],
    inputs: Range<usize>,
    last: bool,
    sums: &mut Avx512Sums,
) -> Option<[[f32; T]; R]> {
    use std::arch::x86_64::*;
    let mut w: [*const u8; R] =
        std::array::from_fn(|i| tile.w.as_ptr().add(2 * ((tile.first_row + i) * tile.in_dim + inputs.start)));
    let mut x = x.as_ptr().add(tile.first_token * tile.in_dim + inputs.start * T);
    let mut chains = [[_mm512_setzero_ph(); R]; T];
    for _ in 0..inputs.len() / (2 * LANES) {
        // __m512i and __m512h are both 64-byte vectors: the casts
        // reinterpret bits only.
        let weights: [__m512h; R] = std::array::from_fn(|i| _mm512_castsi512_ph(_mm512_loadu_si512(w[i].cast())));
        for (j, chains) in chains.iter_mut().enumerate() {
            let input = _mm512_castsi512_ph(_mm512_loadu_si512(x.add(2 * LANES * j).cast()));
            for (chain, weight) in chains.iter_mut().zip(&weights) {
                *chain = _mm512_fmadd_ph(*weight, input, *chain);
            }
        }
        w = w.map(|row| row.add(4 * LANES));
        x = x.add(2 * LANES * T);
    }
    let mut acc = load_sums::<R, T>(sums);
    for (sums, chains) in acc.iter_mut().zip(&chains) {
        for (sum, chain) in sums.iter_mut().zip(chains) {
            let bits = _mm512_castph_si512(*chain);
            let low = _mm512_cvtph_ps(_mm512_castsi512_si256(bits));
            let high = _mm512_cvtph_ps(_mm512_extracti64x4_epi64::<1>(bits));
            *sum = _mm512_add_ps(_mm512_add_ps(*sum, low), high);
        }
    }
    finish_pass(acc, last, sums)
}
