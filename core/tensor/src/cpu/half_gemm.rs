//! Prefill of f16/bf16 weights on AVX-512: `y = x · Wᵀ` for many tokens,
//! reading each weight row as stored and widening it in registers.
//!
//! The gemm crate needs f32 operands, so half-precision weights used to
//! be dequantized (now by panels) and then packed again inside the crate:
//! on a 1B F16 model that packing and widening took a fifth of the prefill
//! and its AVX2 micro-kernel reached about half the CPU's peak. Here a tile
//! of four weight rows × six tokens keeps 24 accumulators of 16 lanes in
//! registers and walks the rows' inputs 16 at a time: four widened weight
//! vectors and six activation loads feed 24 FMAs, and nothing is copied.
//!
//! Each (row, token) result is one 16-lane FMA chain over the inputs in
//! order, then a fixed reduction of the lanes: it never depends on the
//! tile, the token count or the thread, so a prompt prefilled in pieces
//! gets what one prefill gives. The scalar reference below performs the
//! same operations in the same order, so results are equal bit for bit.
//!
//! bf16 weights on a CPU with AVX-512 BF16 take a second kernel, for
//! decode and prefill alike ([`HalfInputs::Bf16`]): the activations are
//! rounded to bf16 once per call (as llama.cpp and PyTorch do for bf16
//! weights) and `vdpbf16ps` multiplies 32 stored weights with them per
//! instruction, without widening. Its chains are fixed in the same way, so
//! a token's result is the same whatever the token count of the call.

use super::bf16::{bf16_supported, Bf16Rows};
use super::pool::SpinPool;
use crate::DType;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Weight rows per tile.
const ROWS: usize = 4;
/// Tokens per tile.
const TOKENS: usize = 6;
/// Inputs per step (one 512-bit register of f32).
const LANES: usize = 16;
/// How far ahead in a row the `vdpbf16ps` kernel asks for weights (1B
/// bf16 decode, Zen 4, alternating: none 10.7–12.8 tok/s, 1 KiB 11.1–11.9,
/// 4 KiB 11.8–14.0; the prefill gained too, 104 → 119–129).
const PREFETCH_BYTES: usize = 4096;
/// Rows a thread claims at a time.
const CHUNK_ROWS: usize = 16;

/// Whether this CPU runs the kernel (AVX-512 F with F16C), detected once.
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        *SUPPORTED.get_or_init(|| is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("f16c"))
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Whether a `dtype` matrix with rows of `in_dim` inputs fits the kernel.
pub(crate) fn fits(dtype: DType, in_dim: usize) -> bool {
    matches!(dtype, DType::F16 | DType::BF16) && in_dim > 0 && in_dim.is_multiple_of(LANES)
}

/// Whether a `dtype` matrix with rows of `in_dim` inputs takes the
/// `vdpbf16ps` kernel on this CPU (bf16 weights, AVX-512 BF16, rows of
/// whole 32-input steps), at decode as at prefill.
pub(crate) fn takes_bf16_products(dtype: DType, in_dim: usize) -> bool {
    dtype == DType::BF16 && in_dim > 0 && in_dim.is_multiple_of(2 * LANES) && bf16_supported()
}

/// The activations a product reads.
#[derive(Clone, Copy)]
pub(crate) enum HalfInputs<'a> {
    /// f32 rows (the widening kernel).
    F32(&'a [f32]),
    /// Rows rounded to bf16 (the `vdpbf16ps` kernel; bf16 weights only).
    Bf16(&'a Bf16Rows),
}

/// `y[t·rows + o] = Σ_i x[t·in_dim + i] · W[o, i]` for a `rows × in_dim`
/// f16/bf16 matrix `w` (little-endian bytes, row-major) and `tokens` rows
/// of `x`, on the pool: threads claim [`CHUNK_ROWS`] rows at a time.
/// The caller checked [`supported`], [`fits`] (for bf16 inputs
/// [`takes_bf16_products`]) and every length.
pub(crate) fn half_gemm(dtype: DType, w: &[u8], in_dim: usize, x: HalfInputs<'_>, tokens: usize, y: &mut [f32]) {
    let rows = w.len() / (2 * in_dim.max(1));
    let (inputs_fit, products) = match x {
        HalfInputs::F32(x) => (x.len() == tokens * in_dim, false),
        HalfInputs::Bf16(x) => (x.rows() == tokens && x.cols() == in_dim && takes_bf16_products(dtype, in_dim), true),
    };
    assert!(
        supported() && fits(dtype, in_dim) && w.len() == 2 * rows * in_dim && inputs_fit && y.len() == tokens * rows,
        "half_gemm: {dtype:?}, {} weight bytes, inputs for {tokens} tokens of {in_dim}, {} outputs",
        w.len(),
        y.len()
    );
    let out = OutPtr(y.as_mut_ptr());
    let next = AtomicUsize::new(0);
    let job = |_: usize, _: usize| loop {
        let first = next.fetch_add(CHUNK_ROWS, Ordering::Relaxed);
        if first >= rows {
            break;
        }
        for r in (first..(first + CHUNK_ROWS).min(rows)).step_by(ROWS) {
            let count = ROWS.min(rows - r);
            for t in (0..tokens).step_by(TOKENS) {
                let tile = Tile { dtype, w, x, in_dim, rows, first_row: r, first_token: t };
                // SAFETY: AVX-512 F and F16C (and for bf16 inputs AVX-512
                // BF16) were checked (assert above);
                // the tile reads rows r..r+count of w and tokens
                // t..t+TOKENS.min(tokens - t) of x, all inside the checked
                // lengths; it writes y entries of rows r..r+count, which
                // only this thread claimed.
                unsafe {
                    if products {
                        run_tile::<true>(&tile, count, TOKENS.min(tokens - t), &out)
                    } else {
                        run_tile::<false>(&tile, count, TOKENS.min(tokens - t), &out)
                    }
                };
            }
        }
    };
    SpinPool::global().run(&job);
}

/// A raw output pointer shared by the pool's threads (each writes the
/// columns of the rows it claimed).
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint indices (rows claimed once from a counter).
unsafe impl Sync for OutPtr {}

/// One tile's operands: the matrix, the inputs, and where the tile starts.
struct Tile<'a> {
    dtype: DType,
    w: &'a [u8],
    x: HalfInputs<'a>,
    in_dim: usize,
    rows: usize,
    first_row: usize,
    first_token: usize,
}

/// A tile of `r` rows × `t` tokens through the kernel compiled for it
/// (`P`: the `vdpbf16ps` one).
#[cfg(target_arch = "x86_64")]
unsafe fn run_tile<const P: bool>(tile: &Tile, r: usize, t: usize, out: &OutPtr) {
    match r {
        1 => run_tokens::<1, P>(tile, t, out),
        2 => run_tokens::<2, P>(tile, t, out),
        3 => run_tokens::<3, P>(tile, t, out),
        _ => run_tokens::<ROWS, P>(tile, t, out),
    }
}

/// [`run_tile`] for `R` rows.
#[cfg(target_arch = "x86_64")]
unsafe fn run_tokens<const R: usize, const P: bool>(tile: &Tile, t: usize, out: &OutPtr) {
    match t {
        1 => store::<R, 1>(tile, out, tile_sums::<R, 1, P>(tile)),
        2 => store::<R, 2>(tile, out, tile_sums::<R, 2, P>(tile)),
        3 => store::<R, 3>(tile, out, tile_sums::<R, 3, P>(tile)),
        4 => store::<R, 4>(tile, out, tile_sums::<R, 4, P>(tile)),
        5 => store::<R, 5>(tile, out, tile_sums::<R, 5, P>(tile)),
        _ => store::<R, TOKENS>(tile, out, tile_sums::<R, TOKENS, P>(tile)),
    }
}

/// The tile's sums on the kernel `P` picks.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn tile_sums<const R: usize, const T: usize, const P: bool>(tile: &Tile) -> [[f32; T]; R] {
    match tile.x {
        HalfInputs::Bf16(x) if P => bf16_kernel::<R, T>(tile, x),
        HalfInputs::F32(x) => kernel::<R, T>(tile, x),
        HalfInputs::Bf16(_) => unreachable!("bf16 inputs take the vdpbf16ps kernel"),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn run_tile<const P: bool>(_: &Tile, _: usize, _: usize, _: &OutPtr) {
    unreachable!("half_gemm runs only where supported() holds")
}

/// Writes a tile's sums to `y`.
unsafe fn store<const R: usize, const T: usize>(tile: &Tile, out: &OutPtr, sums: [[f32; T]; R]) {
    for (i, row) in sums.iter().enumerate() {
        for (j, &value) in row.iter().enumerate() {
            *out.0.add((tile.first_token + j) * tile.rows + tile.first_row + i) = value;
        }
    }
}

/// The tile's `R × T` sums: per step, `R` widened weight vectors and `T`
/// activation vectors, `R·T` FMAs; then each accumulator's lanes reduced.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,f16c,avx2,fma")]
unsafe fn kernel<const R: usize, const T: usize>(tile: &Tile, x: &[f32]) -> [[f32; T]; R] {
    use std::arch::x86_64::*;
    let bf16 = tile.dtype == DType::BF16;
    let w = tile.w.as_ptr().add(2 * tile.first_row * tile.in_dim);
    let x = x.as_ptr().add(tile.first_token * tile.in_dim);
    // By token, then row: acc[j][i] sums row i with token j.
    let mut acc = [[_mm512_setzero_ps(); R]; T];
    for step in 0..tile.in_dim / LANES {
        let at = step * LANES;
        let weights: [__m512; R] = std::array::from_fn(|i| {
            let bits = _mm256_loadu_si256(w.add(2 * (i * tile.in_dim + at)) as *const __m256i);
            if bf16 {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16))
            } else {
                _mm512_cvtph_ps(bits)
            }
        });
        for (j, sums) in acc.iter_mut().enumerate() {
            let input = _mm512_loadu_ps(x.add(j * tile.in_dim + at));
            for (sum, weight) in sums.iter_mut().zip(&weights) {
                *sum = _mm512_fmadd_ps(*weight, input, *sum);
            }
        }
    }
    reduce_tile(acc)
}

/// The tile's `R × T` sums with `vdpbf16ps`: per step of 32 inputs, `R`
/// weight vectors loaded as stored and `T` rounded activation vectors,
/// `R·T` products of pairs into 16-lane chains; then each chain's lanes
/// reduced as in [`kernel`].
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn bf16_kernel<const R: usize, const T: usize>(tile: &Tile, x: &Bf16Rows) -> [[f32; T]; R] {
    use std::arch::x86_64::*;
    let w = tile.w.as_ptr().add(2 * tile.first_row * tile.in_dim);
    let pairs = tile.in_dim / 2;
    let x = x.words().as_ptr().add(tile.first_token * pairs);
    let mut acc = [[_mm512_setzero_ps(); R]; T];
    for step in 0..tile.in_dim / (2 * LANES) {
        // __m512i and __m512bh are both 64-byte vectors: the transmutes
        // reinterpret bits only. Weight element 2k, 2k+1 and activation
        // word k (its two values) meet in lane k, as stored.
        let weights: [__m512bh; R] = std::array::from_fn(|i| {
            let at = w.add(2 * (i * tile.in_dim + 2 * LANES * step));
            // Decode streams the rows from memory: a hint 1 KiB ahead (into
            // the next rows at their ends); never faults.
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES) as *const i8);
            std::mem::transmute(_mm512_loadu_si512(at.cast()))
        });
        for (j, sums) in acc.iter_mut().enumerate() {
            let input: __m512bh = std::mem::transmute(_mm512_loadu_si512(x.add(j * pairs + LANES * step).cast()));
            for (sum, weight) in sums.iter_mut().zip(&weights) {
                *sum = _mm512_dpbf16_ps(*sum, *weight, input);
            }
        }
    }
    reduce_tile(acc)
}

/// Every accumulator of a tile (by token, then row) reduced in the order
/// of the reference's `reduce_lanes`, returned by row, then token; sixteen
/// accumulators at a time in registers ([`reduce_sixteen`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn reduce_tile<const R: usize, const T: usize>(acc: [[std::arch::x86_64::__m512; R]; T]) -> [[f32; T]; R] {
    use std::arch::x86_64::*;
    const SLOTS: usize = 2 * LANES;
    const { assert!(ROWS * TOKENS <= SLOTS) };
    let mut all = [_mm512_setzero_ps(); SLOTS];
    for (j, sums) in acc.iter().enumerate() {
        for (i, sum) in sums.iter().enumerate() {
            all[j * R + i] = *sum;
        }
    }
    let mut totals = [0f32; SLOTS];
    for (group, out) in all.chunks_exact(LANES).zip(totals.chunks_exact_mut(LANES)).take((R * T).div_ceil(LANES)) {
        let group: &[__m512; LANES] = group.try_into().expect("chunks of LANES");
        _mm512_storeu_ps(out.as_mut_ptr(), reduce_sixteen(group));
    }
    std::array::from_fn(|i| std::array::from_fn(|j| totals[sixteen_slot(j * R + i)]))
}

/// Where [`reduce_sixteen`] leaves accumulator `k`'s sum (group by group).
#[cfg(target_arch = "x86_64")]
fn sixteen_slot(k: usize) -> usize {
    let (group, k) = (k / LANES, k % LANES);
    group * LANES + 4 * (k % 4) + k / 4
}

/// Sixteen accumulators' lane sums in one register (accumulator k at
/// [`sixteen_slot`]`(k)`), each added as the reference's `reduce_lanes`
/// does: halves pairwise, 16 → 8 → 4 → 2 → 1. Every step pairs two registers so each
/// addition serves two accumulators or more: 45 instructions instead of
/// 16 stores and 240 scalar additions.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn reduce_sixteen(acc: &[std::arch::x86_64::__m512; LANES]) -> std::arch::x86_64::__m512 {
    use std::arch::x86_64::*;
    // 16 → 8: [a0..8 + a8..16, b0..8 + b8..16] for accumulators a, b.
    let eights: [__m512; 8] = std::array::from_fn(|p| {
        let (a, b) = (acc[2 * p], acc[2 * p + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x44>(a, b), _mm512_shuffle_f32x4::<0xEE>(a, b))
    });
    // 8 → 4: each 128-bit lane one accumulator's first four plus its last four.
    let fours: [__m512; 4] = std::array::from_fn(|p| {
        let (a, b) = (eights[2 * p], eights[2 * p + 1]);
        _mm512_add_ps(_mm512_shuffle_f32x4::<0x88>(a, b), _mm512_shuffle_f32x4::<0xDD>(a, b))
    });
    // 4 → 2, within lanes: lane k of pair p holds accumulators 8p+k and 8p+4+k.
    let twos: [__m512; 2] = std::array::from_fn(|p| {
        let (a, b) = (fours[2 * p], fours[2 * p + 1]);
        _mm512_add_ps(_mm512_shuffle_ps::<0x44>(a, b), _mm512_shuffle_ps::<0xEE>(a, b))
    });
    // 2 → 1: lane k holds accumulators k, 4+k, 8+k, 12+k.
    _mm512_add_ps(_mm512_shuffle_ps::<0x88>(twos[0], twos[1]), _mm512_shuffle_ps::<0xDD>(twos[0], twos[1]))
}

/// The lanes' sum in the kernels' fixed order: halves added pairwise,
/// 16 → 8 → 4 → 2 → 1 (the reference's form of [`reduce_sixteen`]).
#[cfg(test)]
fn reduce_lanes(lanes: &[f32; LANES]) -> f32 {
    let mut v = *lanes;
    let mut width = LANES / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

/// The reference of one (row, token) sum: 16 running FMA sums over the
/// inputs in steps of 16, reduced as the kernel does (the tests hold the
/// kernel to it; CPUs without AVX-512 take the panel gemm instead).
#[cfg(test)]
fn half_dot_reference(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    for (i, &input) in x.iter().enumerate() {
        let bits = u16::from_le_bytes([row[2 * i], row[2 * i + 1]]);
        let weight = match dtype {
            DType::BF16 => f32::from_bits((bits as u32) << 16),
            _ => half::f16::from_bits(bits).to_f32(),
        };
        lanes[i % LANES] = weight.mul_add(input, lanes[i % LANES]);
    }
    reduce_lanes(&lanes)
}

#[cfg(test)]
mod tests {
    use super::super::test_values::uniform;
    use super::*;

    fn half_bytes(dtype: DType, values: &[f32]) -> Vec<u8> {
        values
            .iter()
            .flat_map(|&v| match dtype {
                DType::BF16 => half::bf16::from_f32(v).to_le_bytes(),
                _ => half::f16::from_f32(v).to_le_bytes(),
            })
            .collect()
    }

    /// Every tile shape (rows and tokens not multiples of the tile), each
    /// result equal to the reference bit for bit, and each token's result
    /// the same whatever the token count of the call.
    #[test]
    fn every_result_equals_the_reference_whatever_the_token_count() {
        if !supported() {
            eprintln!("half_gemm: this CPU lacks AVX-512 F; the kernel was not run");
            return;
        }
        let mut next = uniform(7u64);
        for dtype in [DType::F16, DType::BF16] {
            for (rows, in_dim, tokens) in [(1, 16, 1), (7, 48, 13), (19, 160, 8), (33, 64, 20)] {
                let w = half_bytes(dtype, &(0..rows * in_dim).map(|_| next()).collect::<Vec<_>>());
                let x: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
                let mut y = vec![0f32; tokens * rows];
                half_gemm(dtype, &w, in_dim, HalfInputs::F32(&x), tokens, &mut y);
                for t in 0..tokens {
                    let input = &x[t * in_dim..(t + 1) * in_dim];
                    let mut alone = vec![0f32; rows];
                    half_gemm(dtype, &w, in_dim, HalfInputs::F32(input), 1, &mut alone);
                    for o in 0..rows {
                        let want = half_dot_reference(dtype, &w[2 * o * in_dim..2 * (o + 1) * in_dim], input);
                        let what = format!("{dtype:?} {rows}x{in_dim}, token {t} of {tokens}, row {o}");
                        assert_eq!(y[t * rows + o].to_bits(), want.to_bits(), "{what}");
                        assert_eq!(alone[o].to_bits(), want.to_bits(), "{what}, alone");
                    }
                }
            }
        }
    }

    /// The `vdpbf16ps` kernel: every tile shape, each token's result the
    /// same bits whatever the token count of the call, and each within
    /// f32 rounding of the exact product of the rounded operands.
    #[test]
    fn bf16_products_give_each_token_its_solo_result() {
        if !(supported() && bf16_supported()) {
            eprintln!("half_gemm: this CPU lacks AVX-512 BF16; the vdpbf16ps kernel was not run");
            return;
        }
        let mut next = uniform(11u64);
        for (rows, in_dim, tokens) in [(1, 32, 1), (7, 96, 13), (19, 160, 8), (33, 64, 20)] {
            let w = half_bytes(DType::BF16, &(0..rows * in_dim).map(|_| next()).collect::<Vec<_>>());
            let x: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
            let mut inputs = Bf16Rows::new();
            inputs.fill(&x, in_dim);
            let mut y = vec![0f32; tokens * rows];
            half_gemm(DType::BF16, &w, in_dim, HalfInputs::Bf16(&inputs), tokens, &mut y);
            for t in 0..tokens {
                let mut one = Bf16Rows::new();
                one.fill(&x[t * in_dim..(t + 1) * in_dim], in_dim);
                let mut alone = vec![0f32; rows];
                half_gemm(DType::BF16, &w, in_dim, HalfInputs::Bf16(&one), 1, &mut alone);
                let rounded = one.row_f32(0);
                for o in 0..rows {
                    let what = format!("{rows}x{in_dim}, token {t} of {tokens}, row {o}");
                    assert_eq!(y[t * rows + o].to_bits(), alone[o].to_bits(), "{what}");
                    let weights = &w[2 * o * in_dim..2 * (o + 1) * in_dim];
                    let (exact, scale) = (0..in_dim).fold((0f64, 0f64), |(sum, scale), i| {
                        let bits = u16::from_le_bytes([weights[2 * i], weights[2 * i + 1]]);
                        let product = half::bf16::from_bits(bits).to_f64() * rounded[i] as f64;
                        (sum + product, scale + product.abs())
                    });
                    assert!((alone[o] as f64 - exact).abs() <= 1e-6 * scale, "{what}: {} vs {exact}", alone[o]);
                }
            }
        }
    }
}
