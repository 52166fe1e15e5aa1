//! Prefill of f16/bf16 weights: `y = x · Wᵀ` for many tokens, reading
//! each weight row as stored and widening it in registers.
//!
//! The gemm crate needs f32 operands, so half-precision weights used to
//! be dequantized (now by panels) and then packed again inside the crate:
//! on a 1B F16 model that packing and widening took a fifth of the prefill
//! and its AVX2 micro-kernel reached about half the CPU's peak. Here a tile
//! of weight rows × tokens keeps its accumulators in registers and walks
//! the rows' inputs one register at a time: on AVX-512, four widened weight
//! vectors and six activation loads feed 24 FMAs of 16 lanes; on AVX2 (16
//! registers of 8 lanes), three weight vectors and four activation loads
//! feed 12. Both copy the tokens' activations once into tile order (rows
//! read in place sit `in_dim · 4` bytes apart, in one L1 set for
//! power-of-two widths: 1B F16 prefill, Sapphire Rapids, 2 threads,
//! alternating builds, 75.0/75.4 → 81.2/82.8 tok/s with the copy). Both
//! go in passes over the inputs, so a tile of tokens' activations stays in
//! the L1 cache while a chunk's rows meet it. The weights are never copied.
//!
//! Each (row, token) result is one FMA chain per lane over the inputs in
//! order, then a fixed reduction of the lanes: it never depends on the
//! tile, the token count or the thread, so a prompt prefilled in pieces
//! gets what one prefill gives. The scalar reference below performs the
//! same operations in the same order (for the lane count of the kernel
//! that ran), so results are equal bit for bit.
//!
//! bf16 weights on a CPU with AVX-512 BF16 take a third kernel, for
//! decode and prefill alike ([`HalfInputs::Bf16`]): the activations are
//! rounded to bf16 once per call (as llama.cpp and PyTorch do for bf16
//! weights) and `vdpbf16ps` multiplies 32 stored weights with them per
//! instruction, without widening. Its chains are fixed in the same way, so
//! a token's result is the same whatever the token count of the call.
//!
//! f16 weights on a CPU with AVX-512 FP16 take a fourth
//! ([`HalfInputs::F16`]), decode and prefill alike: the activations are
//! rounded to f16 once per call (as llama.cpp does for f16 weights) and
//! `vfmadd231ph` multiplies and adds 32 stored weights per instruction in
//! f16, each lane's f16 sum taking the 16 products of one pass before it
//! is added to the f32 sums. `vfmadd231ph` issues as often as a 16-lane
//! f32 FMA and needs no widening, so a tile does twice the products per
//! instruction (1B F16 prefill, Sapphire Rapids, 2 threads, alternating
//! builds: 80.9/82.0 → 103.6/103.0 tok/s; decode 10.8 → 11.4–11.7; then,
//! compiled with AVX-512 VL so that all 24 chains stay in registers, see
//! `cpu::has_avx512`: 110 → 124–132 tok/s against llama.cpp's 81–86). The
//! f16 sums cost precision: the random 1B-shaped test model's logits move
//! 1.1e-3 from f32 against 4.9e-4 widened (bf16: 4.4e-3). A token whose
//! f16 sums overflow (past ±65,504) is recomputed by the widening kernel.
//! On such a CPU a bf16 model's matrices are converted to f16 at load
//! (`Tensor::into_f16`, exact for weights of magnitude 2⁻¹⁷ or more) and
//! take this kernel too: 1B BF16 prefill, Sapphire Rapids, 2 threads,
//! alternating builds: 92–95 → 135 tok/s, decode 11.8–12.2 either way.

use super::bf16::{bf16_supported, Bf16Rows};
use super::pool::SpinPool;
use crate::DType;
use avx2::run_tile_avx2;
#[cfg(target_arch = "x86_64")]
use f16_products::f16_kernel;
pub(crate) use f16_products::{bf16_into_f16, stores_bf16_as_f16, takes_f16_products};
use f16_products::{f16_bits, widen_where_f16_overflowed};
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Inputs per step of the AVX-512 kernels (one 512-bit register of f32).
const LANES: usize = 16;
/// How far ahead in a row the `vdpbf16ps` kernel asks for weights (1B
/// bf16 decode, Zen 4, alternating: none 10.7–12.8 tok/s, 1 KiB 11.1–11.9,
/// 4 KiB 11.8–14.0; the prefill gained too, 104 → 119–129).
const PREFETCH_BYTES: usize = 4096;
/// Rows a thread claims at a time on AVX-512 (a multiple of its tile rows).
const CHUNK_ROWS: usize = 16;
/// Inputs per pass of the AVX-512 kernels over a chunk's rows: a tile of
/// tokens' 512 inputs (12 KiB of f32) stays in the L1 cache while the
/// chunk's four row tiles (16 KiB of weights for the pass) meet it, where
/// walking whole rows read every tile's activations from L2 again (1B F16
/// 128-token prefill, Sapphire Rapids, 2 threads, alternating builds:
/// 77–82 → 84–96 tok/s).
const AVX512_PASS: usize = 512;
/// Rows a thread claims at a time on AVX2: its tiles of tokens meet 48
/// rows per pass (a multiple of its tile rows).
const AVX2_CHUNK_ROWS: usize = 48;
/// Rows per tile of the AVX2 kernel.
const AVX2_ROWS: usize = 3;
/// Tokens per tile of the AVX2 kernel.
const AVX2_TOKENS: usize = 4;

/// The widening kernels, by instruction set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HalfKernel {
    /// AVX-512 F (+F16C): tiles of 4 rows × 6 tokens, 16 lanes.
    Avx512,
    /// AVX2 + FMA + F16C: tiles of 3 rows × 4 tokens, 8 lanes, in passes
    /// of [`AVX2_PASS`] inputs. On an AVX2-only AMD EPYC (Zen 3) the loop
    /// is bound by its loads, not its FMAs (the same loop in C: 26 GMAC/s
    /// on one core with each input loaded once per row, 43 loaded once per
    /// step; 8 G FMA/s with operands in registers), so the tile is the one
    /// with the fewest loads per FMA that fits 16 registers: 7 per 12.
    /// 1B F16 prefill there: 39 tok/s through f32 panels and the gemm
    /// crate, 45 with 2 × 6 tiles over whole rows, 58–60 as it is.
    Avx2,
}

impl HalfKernel {
    /// Weight rows per tile.
    const fn rows(self) -> usize {
        match self {
            HalfKernel::Avx512 => 4,
            HalfKernel::Avx2 => AVX2_ROWS,
        }
    }

    /// Rows a thread claims at a time.
    const fn chunk_rows(self) -> usize {
        match self {
            HalfKernel::Avx512 => CHUNK_ROWS,
            HalfKernel::Avx2 => AVX2_CHUNK_ROWS,
        }
    }

    /// Tokens per tile.
    const fn tokens(self) -> usize {
        match self {
            HalfKernel::Avx512 => 6,
            HalfKernel::Avx2 => AVX2_TOKENS,
        }
    }

    /// Inputs per step: the lanes of one f32 register.
    pub(crate) const fn lanes(self) -> usize {
        match self {
            HalfKernel::Avx512 => LANES,
            HalfKernel::Avx2 => 8,
        }
    }

    /// The kernels this CPU runs, fastest first (tests run each).
    pub(crate) fn available() -> Vec<HalfKernel> {
        #[cfg(target_arch = "x86_64")]
        {
            let f16c = is_x86_feature_detected!("f16c");
            let mut kernels = Vec::new();
            if f16c && super::has_avx512() {
                kernels.push(HalfKernel::Avx512);
            }
            if f16c && is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                kernels.push(HalfKernel::Avx2);
            }
            kernels
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            Vec::new()
        }
    }

    /// The fastest kernel this CPU runs, detected once.
    pub(crate) fn best() -> Option<HalfKernel> {
        static BEST: std::sync::OnceLock<Option<HalfKernel>> = std::sync::OnceLock::new();
        *BEST.get_or_init(|| HalfKernel::available().first().copied())
    }

    /// The name `tailor bench` prints for the prefill path.
    pub(crate) fn describe(kernel: Option<HalfKernel>) -> &'static str {
        match kernel {
            Some(HalfKernel::Avx512) => "avx512 tiles 4x6",
            Some(HalfKernel::Avx2) => "avx2+f16c tiles 3x4",
            None => "f32 panels + gemm",
        }
    }
}

/// Whether this CPU runs a widening kernel (AVX-512 F, or AVX2 + FMA,
/// with F16C).
pub(crate) fn supported() -> bool {
    HalfKernel::best().is_some()
}

/// Whether this CPU has the `vdpbf16ps` kernel's AVX-512 F.
fn avx512_supported() -> bool {
    HalfKernel::best() == Some(HalfKernel::Avx512)
}

/// Whether a `dtype` matrix with rows of `in_dim` inputs fits this CPU's
/// widening kernel.
pub(crate) fn fits(dtype: DType, in_dim: usize) -> bool {
    HalfKernel::best().is_some_and(|kernel| fits_kernel(kernel, dtype, in_dim))
}

/// Whether a `dtype` matrix with rows of `in_dim` inputs takes the
/// AVX-512 tiles at decode too: four rows at a time stream a lone
/// token's weights faster than `half_dot`'s one row at a time (1B F16
/// decode, Sapphire Rapids, 2 threads, alternating builds: 10.1–10.4 →
/// 11.2–11.7 tok/s), and each token gets its solo result, so a decode
/// batch equals its sequences alone.
pub(crate) fn decodes(dtype: DType, in_dim: usize) -> bool {
    avx512_supported() && fits_kernel(HalfKernel::Avx512, dtype, in_dim)
}

/// Whether a `dtype` matrix with rows of `in_dim` inputs fits `kernel`.
fn fits_kernel(kernel: HalfKernel, dtype: DType, in_dim: usize) -> bool {
    matches!(dtype, DType::F16 | DType::BF16) && in_dim > 0 && in_dim.is_multiple_of(kernel.lanes())
}

/// Whether a `dtype` matrix with rows of `in_dim` inputs takes the
/// `vdpbf16ps` kernel on this CPU (bf16 weights, AVX-512 BF16, rows of
/// whole 32-input steps), at decode as at prefill.
pub(crate) fn takes_bf16_products(dtype: DType, in_dim: usize) -> bool {
    dtype == DType::BF16 && in_dim > 0 && in_dim.is_multiple_of(2 * LANES) && avx512_supported() && bf16_supported()
}

/// The activations a product reads.
#[derive(Clone, Copy)]
pub(crate) enum HalfInputs<'a> {
    /// f32 rows (the widening kernels).
    F32(&'a [f32]),
    /// Rows rounded to bf16 (the `vdpbf16ps` kernel; bf16 weights only).
    Bf16(&'a Bf16Rows),
    /// f32 rows to be rounded to f16 and multiplied in f16 (the f16
    /// product kernel; f16 weights only).
    F16(&'a [f32]),
}

/// The activations as a tile reads them (see [`pack_token_tiles`]).
#[derive(Clone, Copy)]
enum TileInputs<'a> {
    /// f32, in tile order (the widening kernels).
    F32(&'a [f32]),
    /// bf16 pairs by row, as rounded (the `vdpbf16ps` kernel).
    Bf16(&'a Bf16Rows),
    /// f16 bits in tile order (the f16 product kernel).
    F16(&'a [u16]),
}

/// Which AVX-512 kernel a tile runs, as its `M` parameter.
mod mode {
    /// f16/bf16 weights widened to f32, f32 FMAs.
    pub(super) const WIDEN: u8 = 0;
    /// bf16 weights and inputs, `vdpbf16ps`.
    pub(super) const BF16_PRODUCTS: u8 = 1;
    /// f16 weights and inputs, `vfmadd231ph`.
    pub(super) const F16_PRODUCTS: u8 = 2;
}

/// `y[t·rows + o] = Σ_i x[t·in_dim + i] · W[o, i]` for a `rows × in_dim`
/// f16/bf16 matrix `w` (little-endian bytes, row-major) and `tokens` rows
/// of `x`, on the pool: threads claim chunks of rows (`chunk_rows`).
/// The caller checked [`fits`] (for bf16 inputs [`takes_bf16_products`])
/// and every length.
pub(crate) fn half_gemm(dtype: DType, w: &[u8], in_dim: usize, x: HalfInputs<'_>, tokens: usize, y: &mut [f32]) {
    let kernel = HalfKernel::best().expect("half_gemm: the caller checked fits()");
    half_gemm_on(kernel, dtype, w, in_dim, x, tokens, y)
}

/// [`half_gemm`] on a chosen widening kernel (tests run every one this
/// CPU has).
fn half_gemm_on(
    kernel: HalfKernel,
    dtype: DType,
    w: &[u8],
    in_dim: usize,
    x: HalfInputs<'_>,
    tokens: usize,
    y: &mut [f32],
) {
    let rows = w.len() / (2 * in_dim.max(1));
    let (inputs_fit, mode) = match x {
        HalfInputs::F32(x) => (x.len() == tokens * in_dim, mode::WIDEN),
        HalfInputs::Bf16(x) => {
            let fit = x.rows() == tokens && x.cols() == in_dim && takes_bf16_products(dtype, in_dim);
            (fit && kernel == HalfKernel::Avx512, mode::BF16_PRODUCTS)
        }
        HalfInputs::F16(x) => {
            let fit = x.len() == tokens * in_dim && takes_f16_products(dtype, in_dim);
            (fit && kernel == HalfKernel::Avx512, mode::F16_PRODUCTS)
        }
    };
    assert!(
        HalfKernel::available().contains(&kernel)
            && fits_kernel(kernel, dtype, in_dim)
            && w.len() == 2 * rows * in_dim
            && inputs_fit
            && y.len() == tokens * rows,
        "half_gemm: {kernel:?}, {dtype:?}, {} weight bytes, inputs for {tokens} tokens of {in_dim}, {} outputs",
        w.len(),
        y.len()
    );
    let out = OutPtr(y.as_mut_ptr());
    let next = AtomicUsize::new(0);
    let chunk_rows = kernel.chunk_rows();
    let claim = || Some(next.fetch_add(chunk_rows, Ordering::Relaxed)).filter(|&first| first < rows);
    let (packed, packed_f16);
    let tile_inputs = match x {
        HalfInputs::F32(x) => {
            packed = pack_token_tiles(x, in_dim, kernel.tokens(), kernel.lanes());
            TileInputs::F32(&packed)
        }
        HalfInputs::Bf16(x) => TileInputs::Bf16(x),
        HalfInputs::F16(x) => {
            packed_f16 = f16_bits(&pack_token_tiles(x, in_dim, kernel.tokens(), 2 * LANES));
            TileInputs::F16(&packed_f16)
        }
    };
    let job = |_: usize, _: usize| {
        let (mut sums, mut sums512) = (Vec::new(), Vec::new());
        while let Some(first) = claim() {
            let chunk = first..(first + chunk_rows).min(rows);
            let tile = Tile { dtype, w, x: tile_inputs, in_dim, rows, first_row: first, first_token: 0 };
            match kernel {
                HalfKernel::Avx2 => avx2_chunk(&tile, chunk, tokens, &mut sums, &out),
                HalfKernel::Avx512 => avx512_chunk(&tile, chunk, tokens, mode, &mut sums512, &out),
            }
        }
    };
    SpinPool::global().run(&job);
    if let HalfInputs::F16(x) = x {
        widen_where_f16_overflowed(dtype, w, in_dim, x, y);
    }
}

/// `x`'s rows (`in_dim` inputs each) reordered for the widening kernels: by
/// tile of `tile_tokens` tokens (the last may be short), then by step of
/// `step` inputs, then by token, so a tile's loads are one sequential
/// stream from one pointer (rows read in place sit `in_dim · 4` bytes
/// apart: for power-of-two widths, all in one L1 cache set). One copy of
/// the activations per call, made before the threads start.
fn pack_token_tiles(x: &[f32], in_dim: usize, tile_tokens: usize, step: usize) -> Vec<f32> {
    let mut packed = Vec::with_capacity(x.len());
    for tile in x.chunks(tile_tokens * in_dim) {
        for at in (0..in_dim).step_by(step) {
            for token in tile.chunks_exact(in_dim) {
                packed.extend_from_slice(&token[at..at + step]);
            }
        }
    }
    packed
}

/// The AVX-512 kernels over rows `chunk`, in passes of [`AVX512_PASS`]
/// inputs (see [`walk_tiles`]).
fn avx512_chunk(base: &Tile, chunk: Range<usize>, tokens: usize, mode: u8, sums: &mut Vec<Avx512Sums>, out: &OutPtr) {
    // bf16 activations are half the bytes: whole rows measured faster
    // there (1B BF16 prefill, same machine: 88–95 vs 82–91 tok/s). f16
    // products keep passes of 512 inputs at any token count: each f16 sum
    // takes one pass's products (see `f16_kernel`).
    let pass_inputs = if mode == mode::BF16_PRODUCTS { base.in_dim } else { AVX512_PASS };
    let walk = TileWalk { kernel: HalfKernel::Avx512, chunk, tokens, pass_inputs };
    walk_tiles(base, walk, sums, |tile, shape, inputs, tile_sums| {
        // SAFETY: AVX-512 F and F16C (for bf16 inputs AVX-512 BF16, for f16
        // products AVX-512 FP16) were checked (`half_gemm_on`'s assert,
        // through `takes_*_products`); the tile reads inputs `inputs`
        // of rows r..r+shape.0 of w and of tokens t..t+shape.1 of x, inside
        // the checked lengths, and on the last pass writes y entries of
        // rows r..r+shape.0, which only this thread claimed.
        unsafe {
            match mode {
                mode::BF16_PRODUCTS => run_tile::<{ mode::BF16_PRODUCTS }>(tile, shape, inputs, tile_sums, out),
                mode::F16_PRODUCTS => run_tile::<{ mode::F16_PRODUCTS }>(tile, shape, inputs, tile_sums, out),
                _ => run_tile::<{ mode::WIDEN }>(tile, shape, inputs, tile_sums, out),
            }
        }
    });
}

/// Which tiles [`walk_tiles`] visits: rows `chunk` and `tokens` tokens in
/// `kernel`'s tiles, `pass_inputs` inputs per pass.
struct TileWalk {
    kernel: HalfKernel,
    chunk: Range<usize>,
    tokens: usize,
    pass_inputs: usize,
}

/// Hands `run(tile, (rows, tokens), inputs, sums)` every (row tile, token
/// tile) of `walk`, pass by pass over the inputs: each tile's accumulators
/// wait in `sums` between passes, so every lane is still one FMA chain
/// over the inputs in order, while a token tile's inputs of one pass stay
/// in the L1 cache as every row tile of the chunk meets them.
fn walk_tiles<S: Clone + Default>(
    base: &Tile,
    walk: TileWalk,
    sums: &mut Vec<S>,
    mut run: impl FnMut(&Tile, (usize, usize), Range<usize>, &mut S),
) {
    let TileWalk { kernel, chunk, tokens, pass_inputs } = walk;
    let (tile_rows, tile_tokens) = (kernel.rows(), kernel.tokens());
    let row_tiles = chunk.len().div_ceil(tile_rows);
    sums.clear();
    sums.resize(row_tiles * tokens.div_ceil(tile_tokens), S::default());
    for pass in (0..base.in_dim).step_by(pass_inputs) {
        let inputs = pass..(pass + pass_inputs).min(base.in_dim);
        for (token_tile, t) in (0..tokens).step_by(tile_tokens).enumerate() {
            for (row_tile, r) in chunk.clone().step_by(tile_rows).enumerate() {
                let tile = Tile { first_row: r, first_token: t, ..*base };
                let shape = (tile_rows.min(chunk.end - r), tile_tokens.min(tokens - t));
                run(&tile, shape, inputs.clone(), &mut sums[token_tile * row_tiles + row_tile]);
            }
        }
    }
}

/// One AVX-512 tile's accumulators between passes: by token, then row,
/// sixteen lanes each.
#[derive(Clone, Copy, Default)]
struct Avx512Sums([[[f32; LANES]; HalfKernel::Avx512.rows()]; HalfKernel::Avx512.tokens()]);

/// Inputs per pass of the AVX2 kernel over a chunk's rows: a tile of
/// tokens' 512 inputs (8 KiB) stays in the L1 cache while every row tile
/// of the chunk meets it (the chunk's 48 rows of them, 48 KiB, in L2).
/// Walking whole rows streamed each tile's activations (8–32 KiB a token
/// at 1B) from L2 or beyond for every row tile. Passes of 256 and 1,024
/// inputs measured 5–15 % slower on Zen 3, within its noise at times.
const AVX2_PASS: usize = 512;

/// The AVX2 kernel over rows `chunk`, in passes of [`AVX2_PASS`] inputs
/// (see [`walk_tiles`]).
fn avx2_chunk(base: &Tile, chunk: Range<usize>, tokens: usize, sums: &mut Vec<Avx2Sums>, out: &OutPtr) {
    let walk = TileWalk { kernel: HalfKernel::Avx2, chunk, tokens, pass_inputs: AVX2_PASS };
    walk_tiles(base, walk, sums, |tile, shape, inputs, tile_sums| {
        // SAFETY: AVX2, FMA and F16C were checked (`half_gemm_on`'s
        // assert); the tile reads inputs `inputs` of rows r..r+shape.0 of w
        // and of tokens t..t+shape.1 of x, inside the checked lengths, and
        // on the last pass writes y entries of rows r..r+shape.0, which only
        // this thread claimed.
        unsafe { run_tile_avx2(tile, shape, inputs, tile_sums, out) }
    });
}

/// One AVX2 tile's accumulators between passes: by token, then row, eight
/// lanes each.
#[derive(Clone, Copy, Default)]
struct Avx2Sums([[[f32; 8]; AVX2_ROWS]; AVX2_TOKENS]);

/// A raw output pointer shared by the pool's threads (each writes the
/// columns of the rows it claimed).
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint indices (rows claimed once from a counter).
unsafe impl Sync for OutPtr {}

/// One tile's operands: the matrix, the inputs, and where the tile starts.
#[derive(Clone, Copy)]
struct Tile<'a> {
    dtype: DType,
    w: &'a [u8],
    x: TileInputs<'a>,
    in_dim: usize,
    rows: usize,
    first_row: usize,
    first_token: usize,
}

/// A tile of `shape` (rows, tokens) through the AVX-512 kernel compiled
/// for it (`M`: which, from [`mode`]), over `inputs`; on the pass that
/// ends the rows, its sums stored.
#[cfg(target_arch = "x86_64")]
unsafe fn run_tile<const M: u8>(
    tile: &Tile,
    shape: (usize, usize),
    inputs: Range<usize>,
    sums: &mut Avx512Sums,
    out: &OutPtr,
) {
    match shape.0 {
        1 => run_tokens::<1, M>(tile, shape.1, inputs, sums, out),
        2 => run_tokens::<2, M>(tile, shape.1, inputs, sums, out),
        3 => run_tokens::<3, M>(tile, shape.1, inputs, sums, out),
        _ => run_tokens::<4, M>(tile, shape.1, inputs, sums, out),
    }
}

/// [`run_tile`] for `R` rows.
#[cfg(target_arch = "x86_64")]
unsafe fn run_tokens<const R: usize, const M: u8>(
    tile: &Tile,
    t: usize,
    inputs: Range<usize>,
    sums: &mut Avx512Sums,
    out: &OutPtr,
) {
    match t {
        1 => pass_avx512::<R, 1, M>(tile, inputs, sums, out),
        2 => pass_avx512::<R, 2, M>(tile, inputs, sums, out),
        3 => pass_avx512::<R, 3, M>(tile, inputs, sums, out),
        4 => pass_avx512::<R, 4, M>(tile, inputs, sums, out),
        5 => pass_avx512::<R, 5, M>(tile, inputs, sums, out),
        _ => pass_avx512::<R, 6, M>(tile, inputs, sums, out),
    }
}

/// One pass of an `R × T` tile over `inputs` on the AVX-512 kernel `M`
/// picks; after the pass that ends the rows, its sums stored.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn pass_avx512<const R: usize, const T: usize, const M: u8>(
    tile: &Tile,
    inputs: Range<usize>,
    sums: &mut Avx512Sums,
    out: &OutPtr,
) {
    let last = inputs.end == tile.in_dim;
    let tile_sums = match tile.x {
        TileInputs::Bf16(x) if M == mode::BF16_PRODUCTS => bf16_kernel::<R, T>(tile, x, inputs, last, sums),
        TileInputs::F16(x) if M == mode::F16_PRODUCTS => f16_kernel::<R, T>(tile, x, inputs, last, sums),
        TileInputs::F32(x) if M == mode::WIDEN => kernel::<R, T>(tile, x, inputs, last, sums),
        _ => unreachable!("each input form takes its own kernel"),
    };
    if let Some(tile_sums) = tile_sums {
        store::<R, T>(tile, out, tile_sums)
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn run_tile<const M: u8>(_: &Tile, _: (usize, usize), _: Range<usize>, _: &mut Avx512Sums, _: &OutPtr) {
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

/// The tile's `R × T` sums over `inputs` (whole steps of 16): per step,
/// `R` widened weight vectors and `T` activation vectors, `R·T` FMAs, the
/// accumulators taken from and left in `sums`; after the `last` pass,
/// each accumulator's lanes reduced.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,f16c,avx2,fma")]
unsafe fn kernel<const R: usize, const T: usize>(
    tile: &Tile,
    x: &[f32],
    inputs: Range<usize>,
    last: bool,
    sums: &mut Avx512Sums,
) -> Option<[[f32; T]; R]> {
    let w: [*const u8; R] =
        std::array::from_fn(|i| tile.w.as_ptr().add(2 * ((tile.first_row + i) * tile.in_dim + inputs.start)));
    // The tile's inputs as `pack_token_tiles` laid them out: T tokens' 16 inputs per step.
    let x = x.as_ptr().add(tile.first_token * tile.in_dim + inputs.start * T);
    // By token, then row: acc[j][i] sums row i with token j.
    let mut acc = load_sums::<R, T>(sums);
    let steps = inputs.len() / LANES;
    if tile.dtype == DType::BF16 {
        steps_avx512::<R, T, true>(&mut acc, w, x, steps);
    } else {
        steps_avx512::<R, T, false>(&mut acc, w, x, steps);
    }
    finish_pass(acc, last, sums)
}

/// [`kernel`]'s FMAs over `steps` steps of 16 inputs from `w` (each row's
/// first input of the pass) and `x` (the pass's packed inputs), for bf16
/// (`BF16`) or f16 rows (the branch outside the loop).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,f16c,avx2,fma")]
#[inline]
unsafe fn steps_avx512<const R: usize, const T: usize, const BF16: bool>(
    acc: &mut [[std::arch::x86_64::__m512; R]; T],
    mut w: [*const u8; R],
    mut x: *const f32,
    steps: usize,
) {
    use std::arch::x86_64::*;
    for _ in 0..steps {
        let weights: [__m512; R] = std::array::from_fn(|i| {
            let bits = _mm256_loadu_si256(w[i] as *const __m256i);
            if BF16 {
                _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(bits), 16))
            } else {
                _mm512_cvtph_ps(bits)
            }
        });
        for (j, sums) in acc.iter_mut().enumerate() {
            let input = _mm512_loadu_ps(x.add(LANES * j));
            for (sum, weight) in sums.iter_mut().zip(&weights) {
                *sum = _mm512_fmadd_ps(*weight, input, *sum);
            }
        }
        w = w.map(|row| row.add(2 * LANES));
        x = x.add(LANES * T);
    }
}

/// A tile's accumulators as the previous pass left them in `sums`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn load_sums<const R: usize, const T: usize>(sums: &Avx512Sums) -> [[std::arch::x86_64::__m512; R]; T] {
    use std::arch::x86_64::*;
    std::array::from_fn(|j| std::array::from_fn(|i| _mm512_loadu_ps(sums.0[j][i].as_ptr())))
}

/// After a pass: the accumulators reduced if it was the `last`, else
/// kept in `sums` for the next.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn finish_pass<const R: usize, const T: usize>(
    acc: [[std::arch::x86_64::__m512; R]; T],
    last: bool,
    sums: &mut Avx512Sums,
) -> Option<[[f32; T]; R]> {
    use std::arch::x86_64::*;
    if last {
        return Some(reduce_tile(acc));
    }
    for (j, sums_j) in acc.iter().enumerate() {
        for (i, sum) in sums_j.iter().enumerate() {
            _mm512_storeu_ps(sums.0[j][i].as_mut_ptr(), *sum);
        }
    }
    None
}

/// The tile's `R × T` sums with `vdpbf16ps` over `inputs` (whole steps
/// of 32): per step, `R` weight vectors loaded as stored and `T` rounded
/// activation vectors, `R·T` products of pairs into 16-lane chains, kept
/// in `sums` between passes as in [`kernel`]; after the `last` pass, each
/// chain's lanes reduced as there.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
unsafe fn bf16_kernel<const R: usize, const T: usize>(
    tile: &Tile,
    x: &Bf16Rows,
    inputs: Range<usize>,
    last: bool,
    sums: &mut Avx512Sums,
) -> Option<[[f32; T]; R]> {
    use std::arch::x86_64::*;
    let w = tile.w.as_ptr().add(2 * tile.first_row * tile.in_dim);
    let pairs = tile.in_dim / 2;
    let x = x.words().as_ptr().add(tile.first_token * pairs);
    let mut acc = load_sums::<R, T>(sums);
    for at in inputs.step_by(2 * LANES) {
        // __m512i and __m512bh are both 64-byte vectors: the transmutes
        // reinterpret bits only. Weight element 2k, 2k+1 and activation
        // word k (its two values) meet in lane k, as stored.
        let weights: [__m512bh; R] = std::array::from_fn(|i| {
            let at = w.add(2 * (i * tile.in_dim + at));
            // Decode streams the rows from memory: a hint ahead (into the
            // next rows at their ends); never faults.
            _mm_prefetch::<_MM_HINT_T0>(at.wrapping_add(PREFETCH_BYTES) as *const i8);
            std::mem::transmute(_mm512_loadu_si512(at.cast()))
        });
        for (j, sums) in acc.iter_mut().enumerate() {
            let input: __m512bh = std::mem::transmute(_mm512_loadu_si512(x.add(j * pairs + at / 2).cast()));
            for (sum, weight) in sums.iter_mut().zip(&weights) {
                *sum = _mm512_dpbf16_ps(*sum, *weight, input);
            }
        }
    }
    finish_pass(acc, last, sums)
}

/// Every accumulator of a tile (by token, then row) reduced in the order
/// of the reference's `reduce_lanes`, returned by row, then token; sixteen
/// accumulators at a time in registers ([`reduce_sixteen`]).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn reduce_tile<const R: usize, const T: usize>(acc: [[std::arch::x86_64::__m512; R]; T]) -> [[f32; T]; R] {
    use std::arch::x86_64::*;
    const SLOTS: usize = 2 * LANES;
    const { assert!(R * T <= SLOTS) };
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
#[target_feature(enable = "avx512f,avx512vl")]
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

mod avx2;
mod f16_products;
#[cfg(test)]
mod tests;
