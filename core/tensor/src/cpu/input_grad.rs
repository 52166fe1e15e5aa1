//! The input gradient of a linear layer on AVX-512, `dx += dy · W` for
//! `W` `[out, in]` read as stored: f32 weights, and bf16 weights with
//! `vdpbf16ps` (AVX-512 BF16).
//!
//! Training multiplies by each frozen weight twice a step: `x · Wᵀ`
//! forward and `dy · W` backward. The backward sums over W's rows, so a
//! register can hold 16 consecutive columns of one row as stored, and each
//! token's `dy[t, o]` is broadcast against it: no transpose, no packing,
//! no f32 copy of a bf16 matrix. `vdpbf16ps` multiplies adjacent pairs, so
//! for bf16 one `vpunpck{l,h}wd` of rows o and o+1 puts their values side
//! by side for 32 columns, against each token's pair `(dy[t,o],
//! dy[t,o+1])`, one word of its row rounded to bf16. A tile of twelve
//! tokens × 32 columns keeps 24 accumulators in registers.
//!
//! Each (token, column) sum is one chain over the rows in order, in
//! passes of [`CHUNK_ROWS`] rows each added to `dx` in turn: it depends on
//! neither the token count, the tile nor the thread, so results repeat
//! bit for bit on any thread count.

use super::bf16::Bf16Rows;
use super::pool::{split_range, SpinPool};
use super::token_lanes::Words;

/// Tokens per tile (two accumulators each).
const TOKENS: usize = 12;
/// Columns per tile: two registers of f32 sums.
const STRIP: usize = 32;
/// Weight rows per pass (even, so each pass starts on a word of `dy`). A
/// pass goes strip by strip, and each strip of its rows (64 or 128 KiB)
/// stays in cache while every tile of the thread's tokens reads it (tiles
/// outside strips measured 42 % of a SmolLM2 f32 LoRA step against 34 %,
/// with the forward's products at 29–32 %).
const CHUNK_ROWS: usize = 512;

/// Whether this CPU runs [`input_grad`] on `words` (AVX-512 F and BW; for
/// bf16 also AVX-512 BF16).
pub(crate) fn supported(words: Words) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        super::token_lanes::supported(words) && is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = words;
        false
    }
}

/// The output gradient a product reads.
#[derive(Clone, Copy)]
pub(crate) enum OutputGrad<'a> {
    /// f32 rows (f32 weights): the matrix's rows meet columns
    /// `first..first + rows` of `dy` (a piece of a larger matrix).
    F32 { dy: &'a [f32], first: usize },
    /// Rows rounded to bf16 (bf16 weights).
    Bf16(&'a Bf16Rows),
}

/// `dx[t, i] += Σ_o dy[t, o] · W[o, i]` for `w` the little-endian bytes of
/// a row-major matrix of rows of `in_dim` (f32 for `OutputGrad::F32`, bf16
/// for `OutputGrad::Bf16`) and `dx` rows of `in_dim`, on the pool (threads
/// take tiles of tokens). Panics unless [`supported`] and the lengths agree.
pub(crate) fn input_grad(w: &[u8], in_dim: usize, dy: OutputGrad<'_>, dx: &mut [f32]) {
    let tokens = dx.len() / in_dim.max(1);
    let (words, values, first) = match dy {
        OutputGrad::F32 { dy, first } => (Words::F32, bytemuck::cast_slice::<f32, u32>(dy), first),
        OutputGrad::Bf16(dy) => (Words::Bf16Pairs, dy.words(), 0),
    };
    let (value_bytes, rows_per_word) = if words == Words::F32 { (4, 1) } else { (2, 2) };
    let out_dim = w.len() / (value_bytes * in_dim.max(1));
    // Words per row of dy.
    let steps = values.len() / tokens.max(1);
    assert!(
        supported(words)
            && in_dim > 0
            && w.len() == value_bytes * out_dim * in_dim
            && dx.len() == tokens * in_dim
            && values.len() == tokens * steps
            && (first + out_dim).div_ceil(rows_per_word) <= steps
            && match dy {
                OutputGrad::Bf16(rows) => rows.rows() == tokens,
                OutputGrad::F32 { .. } => true,
            },
        "input_grad: {} weight bytes for rows of {in_dim}, dy of {} words from row {first}, dx of {} for {tokens} tokens",
        w.len(),
        values.len(),
        dx.len()
    );
    let out = OutPtr(dx.as_mut_ptr());
    let tiles = tokens.div_ceil(TOKENS);
    SpinPool::global().run(&|index, threads| {
        let mine = split_range(tiles, index, threads);
        for first_row in (0..out_dim).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(out_dim - first_row);
            for first_col in (0..in_dim).step_by(STRIP) {
                for tile in mine.clone() {
                    let first_token = tile * TOKENS;
                    let block = Block {
                        // In bounds: first_row < out_dim, first_col < in_dim.
                        w: w[value_bytes * (first_row * in_dim + first_col)..].as_ptr(),
                        row_bytes: value_bytes * in_dim,
                        rows,
                        dy: values[first_token * steps + (first + first_row) / rows_per_word..].as_ptr(),
                        steps,
                        dx: out.at(first_token * in_dim + first_col),
                        in_dim,
                        width: STRIP.min(in_dim - first_col),
                    };
                    // SAFETY: supported(words) held (assert above). The
                    // block reads `rows` weight rows from first_row, `width`
                    // columns from first_col, all inside `w`
                    // (out_dim × in_dim); the tile's tokens' words for
                    // those rows, inside `values` (tokens × steps; bf16
                    // rows padded to whole words); and it writes dx at its
                    // own tokens (this thread's tiles, disjoint from every
                    // other thread's) and columns, inside `dx` (checked
                    // length), which stays borrowed until `run` returns.
                    unsafe { run_block(words, &block, TOKENS.min(tokens - first_token)) };
                }
            }
        }
    });
}

/// `dx` shared by the pool's threads, each writing its own tokens' rows.
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint rows (split_range over tiles of tokens).
unsafe impl Sync for OutPtr {}

impl OutPtr {
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// One tile's operands: `rows` weight rows × `width` (≤ 32) columns, the
/// tokens' words for those rows, and where their sums are added.
struct Block {
    /// Weight (first row, first column), rows `row_bytes` apart.
    w: *const u8,
    row_bytes: usize,
    rows: usize,
    /// The first token's word for the first row; tokens `steps` words apart.
    dy: *const u32,
    steps: usize,
    /// The first token's first column in `dx`; tokens `in_dim` apart.
    dx: *mut f32,
    in_dim: usize,
    width: usize,
}

/// The block through the kernel compiled for its words and `tokens`
/// (1..=12) tokens.
///
/// # Safety
/// As [`f32_tile`] and [`bf16_tile`].
#[cfg(target_arch = "x86_64")]
unsafe fn run_block(words: Words, block: &Block, tokens: usize) {
    const { assert!(TOKENS == 12) };
    match words {
        Words::F32 => super::by_count_to_12!(tokens, f32_tile(block)),
        Words::Bf16Pairs => super::by_count_to_12!(tokens, bf16_tile(block)),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn run_block(_: Words, _: &Block, _: usize) {
    unreachable!("input_grad runs only where supported() holds")
}

/// The block's `columns` mask: its `width` (≤ 32) columns.
fn column_mask(block: &Block) -> u32 {
    if block.width == STRIP {
        !0
    } else {
        (1u32 << block.width) - 1
    }
}

/// f32 weights: per row, two masked loads of 16 columns meet each of `T`
/// tokens' broadcast `dy[t, o]` in two FMAs; then the sums are added to `dx`.
///
/// # Safety
/// The CPU has AVX-512 F and BW; the block's pointers address `rows` f32
/// weight rows of `width` columns, `T` tokens' `rows` words, and `T`
/// writable rows of `width` values in `dx`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw")]
unsafe fn f32_tile<const T: usize>(b: &Block) {
    use std::arch::x86_64::*;
    let columns = column_mask(b);
    let (mask_first, mask_second) = (columns as __mmask16, (columns >> 16) as __mmask16);
    let mut low = [_mm512_setzero_ps(); T];
    let mut high = [_mm512_setzero_ps(); T];
    for o in 0..b.rows {
        let row = b.w.add(o * b.row_bytes) as *const f32;
        // Masked loads touch only the block's columns.
        let first = _mm512_maskz_loadu_ps(mask_first, row);
        let second = _mm512_maskz_loadu_ps(mask_second, row.add(16));
        for t in 0..T {
            let grad = _mm512_set1_epi32(*b.dy.add(t * b.steps + o) as i32);
            low[t] = _mm512_fmadd_ps(first, _mm512_castsi512_ps(grad), low[t]);
            high[t] = _mm512_fmadd_ps(second, _mm512_castsi512_ps(grad), high[t]);
        }
    }
    add_to_dx::<T>(b, low, high, |low, _| low, |_, high| high);
}

/// bf16 weights: rows o and o+1 interleaved by `vpunpck{l,h}wd` meet each
/// token's broadcast pair. After the interleave, 128-bit lane k of the low
/// accumulator holds columns 8k..8k+4 and of the high one 8k+4..8k+8; two
/// permutes put them back in order before they are added to `dx`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16; the block's pointers address
/// `rows` bf16 weight rows of `width` columns, `T` tokens'
/// `rows.div_ceil(2)` words, and `T` writable rows of `width` values in `dx`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bw,avx512bf16")]
unsafe fn bf16_tile<const T: usize>(b: &Block) {
    use std::arch::x86_64::*;
    let columns: __mmask32 = column_mask(b);
    let mut low = [_mm512_setzero_ps(); T];
    let mut high = [_mm512_setzero_ps(); T];
    for pair in 0..b.rows.div_ceil(2) {
        let row = b.w.add(2 * pair * b.row_bytes);
        // Masked loads touch only the block's columns; an odd last row is
        // paired with zeros (its token words carry a zero there too).
        let first = _mm512_maskz_loadu_epi16(columns, row.cast());
        let second = match 2 * pair + 1 < b.rows {
            true => _mm512_maskz_loadu_epi16(columns, row.add(b.row_bytes).cast()),
            false => _mm512_setzero_si512(),
        };
        // __m512i and __m512bh are both 64-byte vectors: the transmutes
        // reinterpret bits only.
        let pairs_low: __m512bh = std::mem::transmute(_mm512_unpacklo_epi16(first, second));
        let pairs_high: __m512bh = std::mem::transmute(_mm512_unpackhi_epi16(first, second));
        for t in 0..T {
            let word = *b.dy.add(t * b.steps + pair);
            let grads: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
            low[t] = _mm512_dpbf16_ps(low[t], pairs_low, grads);
            high[t] = _mm512_dpbf16_ps(high[t], pairs_high, grads);
        }
    }
    let first_half = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let second_half = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    add_to_dx::<T>(
        b,
        low,
        high,
        |low, high| _mm512_permutex2var_ps(low, first_half, high),
        |low, high| _mm512_permutex2var_ps(low, second_half, high),
    );
}

/// Adds each token's sums to its `width` columns of `dx`: columns 0..16
/// are `first(low, high)`, 16..32 `second(low, high)`.
///
/// # Safety
/// As the tiles: `T` writable rows of `width` values at `b.dx`.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn add_to_dx<const T: usize>(
    b: &Block,
    low: [std::arch::x86_64::__m512; T],
    high: [std::arch::x86_64::__m512; T],
    first: impl Fn(std::arch::x86_64::__m512, std::arch::x86_64::__m512) -> std::arch::x86_64::__m512,
    second: impl Fn(std::arch::x86_64::__m512, std::arch::x86_64::__m512) -> std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    let columns = column_mask(b);
    let (mask_first, mask_second) = (columns as __mmask16, (columns >> 16) as __mmask16);
    for t in 0..T {
        let out = b.dx.add(t * b.in_dim);
        let total = _mm512_add_ps(_mm512_maskz_loadu_ps(mask_first, out), first(low[t], high[t]));
        _mm512_mask_storeu_ps(out, mask_first, total);
        let total = _mm512_add_ps(_mm512_maskz_loadu_ps(mask_second, out.add(16)), second(low[t], high[t]));
        _mm512_mask_storeu_ps(out.add(16), mask_second, total);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values::uniform;
    use super::*;

    /// Shapes with odd rows, column tails, several passes and tiles of
    /// every size, for both kinds of weights: each sum within f32 rounding
    /// of the exact sum of the (rounded) operands plus what `dx` held, and
    /// each token's result the same bits whatever the token count of the call.
    #[test]
    fn sums_are_exact_to_rounding_and_each_token_gets_its_solo_result() {
        let mut next = uniform(5);
        for words in [Words::F32, Words::Bf16Pairs] {
            if !supported(words) {
                eprintln!("input_grad: this CPU lacks AVX-512 for {words:?}; not run");
                continue;
            }
            for (out_dim, in_dim, tokens) in [(1, 1, 1), (7, 40, 13), (64, 96, 25), (CHUNK_ROWS * 2 + 3, 33, 5)] {
                let values: Vec<f32> = (0..out_dim * in_dim).map(|_| next()).collect();
                let (w, weights) = match words {
                    Words::F32 => (bytemuck::cast_slice(&values).to_vec(), values.clone()),
                    Words::Bf16Pairs => {
                        let rounded: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
                        let bytes = rounded.iter().flat_map(|v| v.to_le_bytes()).collect();
                        (bytes, rounded.iter().map(|v| v.to_f32()).collect())
                    }
                };
                let dy: Vec<f32> = (0..tokens * out_dim).map(|_| next()).collect();
                let start: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
                // `run(dy rows, dx)`, and the gradients as multiplied.
                let run = |dy: &[f32], dx: &mut [f32]| -> Vec<f32> {
                    if words == Words::F32 {
                        input_grad(&w, in_dim, OutputGrad::F32 { dy, first: 0 }, dx);
                        return dy.to_vec();
                    }
                    let mut rounded = Bf16Rows::new();
                    rounded.fill(dy, out_dim);
                    input_grad(&w, in_dim, OutputGrad::Bf16(&rounded), dx);
                    (0..rounded.rows()).flat_map(|r| rounded.row_f32(r)).collect()
                };
                let mut dx = start.clone();
                run(&dy, &mut dx);
                for t in 0..tokens {
                    let mut alone = start[t * in_dim..(t + 1) * in_dim].to_vec();
                    let grads = run(&dy[t * out_dim..(t + 1) * out_dim], &mut alone);
                    for i in 0..in_dim {
                        let what = format!("{words:?} {out_dim}×{in_dim}, token {t} of {tokens}, column {i}");
                        assert_eq!(dx[t * in_dim + i].to_bits(), alone[i].to_bits(), "{what}");
                        let held = start[t * in_dim + i] as f64;
                        let (exact, scale) = (0..out_dim).fold((held, held.abs()), |(sum, scale), o| {
                            let product = weights[o * in_dim + i] as f64 * grads[o] as f64;
                            (sum + product, scale + product.abs())
                        });
                        // A chain of out_dim + 1 f32 additions errs by at most (n+1)·2⁻²⁴ of Σ|terms|.
                        let bound = (out_dim + 2) as f64 * f64::from(f32::EPSILON) / 2.0 * scale;
                        assert!((alone[i] as f64 - exact).abs() <= bound, "{what}: {} vs {exact}", alone[i]);
                    }
                }
            }
        }
    }
}
