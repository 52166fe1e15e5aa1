//! The input gradient of a linear layer whose weight is stored in bf16,
//! on AVX-512 BF16: `dx += dy · W` for `W` `[out, in]`, read as stored.
//!
//! Training through a frozen bf16 base multiplies by each weight twice a
//! step: `x · Wᵀ` forward (the serving kernels, `half_gemm`) and `dy · W`
//! backward. The backward sums over W's rows, and `vdpbf16ps` multiplies
//! adjacent pairs, so it needs two rows' values side by side: one
//! `vpunpck{l,h}wd` of rows o and o+1 interleaves them for 32 columns, and
//! each token's pair `(dy[t,o], dy[t,o+1])`, one word of its row rounded to
//! bf16, is broadcast against them. A tile of twelve tokens × 32 columns
//! keeps 24 accumulators in registers; the matrix is never copied,
//! widened or transposed, where the f32 path dequantized it for a gemm.
//!
//! Each (token, column) sum is one chain over the rows in order, in
//! passes of [`CHUNK_ROWS`] rows each added to `dx` in turn: it depends on
//! neither the token count, the tile nor the thread, so results repeat
//! bit for bit on any thread count.

use super::bf16::{bf16_supported, Bf16Rows};
use super::pool::{split_range, SpinPool};

/// Tokens per tile (two accumulators each).
const TOKENS: usize = 12;
/// Columns per tile: 32 bf16 weights, one 512-bit load per row.
const STRIP: usize = 32;
/// Weight rows per pass (even, so each pass starts on a word of `dy`):
/// a pass's rows stay in the last-level cache while every tile of the
/// thread's tokens reads them.
const CHUNK_ROWS: usize = 512;

/// Whether this CPU runs [`bf16_input_grad`] (AVX-512 F, BW and BF16).
pub(crate) fn supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        bf16_supported() && is_x86_feature_detected!("avx512bw")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `dx[t, i] += Σ_o dy[t, o] · W[o, i]` for `w` the little-endian bf16
/// bytes of a row-major `[dy.cols(), in_dim]` matrix and `dx` `dy.rows()`
/// rows of `in_dim`, on the pool (threads take tiles of tokens). Panics
/// unless [`supported`] and the lengths agree.
pub(crate) fn bf16_input_grad(w: &[u8], in_dim: usize, dy: &Bf16Rows, dx: &mut [f32]) {
    let (tokens, out_dim) = (dy.rows(), dy.cols());
    assert!(
        supported() && in_dim > 0 && w.len() == 2 * out_dim * in_dim && dx.len() == tokens * in_dim,
        "bf16_input_grad: {} weight bytes for {out_dim}×{in_dim}, dx of {} for {tokens} tokens",
        w.len(),
        dx.len()
    );
    let pairs = out_dim.div_ceil(2);
    let (words, out) = (dy.words(), OutPtr(dx.as_mut_ptr()));
    let tiles = tokens.div_ceil(TOKENS);
    SpinPool::global().run(&|index, threads| {
        let mine = split_range(tiles, index, threads);
        for first_row in (0..out_dim).step_by(CHUNK_ROWS) {
            let rows = CHUNK_ROWS.min(out_dim - first_row);
            for tile in mine.clone() {
                let first_token = tile * TOKENS;
                for first_col in (0..in_dim).step_by(STRIP) {
                    let block = Block {
                        // In bounds: first_row < out_dim, first_col < in_dim.
                        w: w[2 * (first_row * in_dim + first_col)..].as_ptr(),
                        in_dim,
                        rows,
                        dy: words[first_token * pairs + first_row / 2..].as_ptr(),
                        pairs,
                        dx: out.at(first_token * in_dim + first_col),
                        width: STRIP.min(in_dim - first_col),
                    };
                    // SAFETY: supported() held (assert above). The block
                    // reads `rows` weight rows from first_row, `width`
                    // columns from first_col, all inside `w`
                    // (out_dim × in_dim); the tile's tokens' words for
                    // those rows, inside `words` (tokens × pairs, rows
                    // padded to whole words); and it writes dx at its own
                    // tokens (this thread's tiles, disjoint from every other
                    // thread's) and columns, inside `dx` (checked length),
                    // which stays borrowed until `run` returns.
                    unsafe { run_block(&block, TOKENS.min(tokens - first_token)) };
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
    /// Weight (first row, first column), rows `in_dim` values apart.
    w: *const u8,
    in_dim: usize,
    rows: usize,
    /// The first token's word for the first row; tokens `pairs` words apart.
    dy: *const u32,
    pairs: usize,
    /// The first token's first column in `dx`; tokens `in_dim` apart.
    dx: *mut f32,
    width: usize,
}

/// The block through the kernel compiled for `tokens` (1..=12) tokens.
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
unsafe fn run_block(block: &Block, tokens: usize) {
    const { assert!(TOKENS == 12) };
    super::by_count_to_12!(tokens, tile(block))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn run_block(_: &Block, _: usize) {
    unreachable!("bf16_input_grad runs only where supported() holds")
}

/// Adds `T` tokens' sums over the block's rows to their `width` columns.
///
/// After the interleave, 128-bit lane k of the low accumulator holds
/// columns 8k..8k+4 and of the high one 8k+4..8k+8; two permutes put
/// them back in order before they are added to `dx`.
///
/// # Safety
/// The CPU has AVX-512 F, BW and BF16; the block's pointers address
/// `rows` weight rows of `width` columns, `T` tokens' `rows.div_ceil(2)`
/// words, and `T` writable rows of `width` values in `dx`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn tile<const T: usize>(b: &Block) {
    use std::arch::x86_64::*;
    let columns: __mmask32 = if b.width == STRIP { !0 } else { (1u32 << b.width) - 1 };
    let mut low = [_mm512_setzero_ps(); T];
    let mut high = [_mm512_setzero_ps(); T];
    for pair in 0..b.rows.div_ceil(2) {
        let row = b.w.add(2 * 2 * pair * b.in_dim);
        // Masked loads touch only the block's columns; an odd last row is
        // paired with zeros (its token words carry a zero there too).
        let first = _mm512_maskz_loadu_epi16(columns, row.cast());
        let second = match 2 * pair + 1 < b.rows {
            true => _mm512_maskz_loadu_epi16(columns, row.add(2 * b.in_dim).cast()),
            false => _mm512_setzero_si512(),
        };
        // __m512i and __m512bh are both 64-byte vectors: the transmutes
        // reinterpret bits only.
        let pairs_low: __m512bh = std::mem::transmute(_mm512_unpacklo_epi16(first, second));
        let pairs_high: __m512bh = std::mem::transmute(_mm512_unpackhi_epi16(first, second));
        for t in 0..T {
            let word = *b.dy.add(t * b.pairs + pair);
            let grads: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
            low[t] = _mm512_dpbf16_ps(low[t], pairs_low, grads);
            high[t] = _mm512_dpbf16_ps(high[t], pairs_high, grads);
        }
    }
    let first_half = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
    let second_half = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
    let (mask_first, mask_second) = (columns as __mmask16, (columns >> 16) as __mmask16);
    for t in 0..T {
        let out = b.dx.add(t * b.in_dim);
        let sums = _mm512_permutex2var_ps(low[t], first_half, high[t]);
        let total = _mm512_add_ps(_mm512_maskz_loadu_ps(mask_first, out), sums);
        _mm512_mask_storeu_ps(out, mask_first, total);
        let sums = _mm512_permutex2var_ps(low[t], second_half, high[t]);
        let total = _mm512_add_ps(_mm512_maskz_loadu_ps(mask_second, out.add(16)), sums);
        _mm512_mask_storeu_ps(out.add(16), mask_second, total);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values::uniform;
    use super::*;

    /// Shapes with odd rows, column tails, several passes and tiles of
    /// every size: each sum within f32 rounding of the exact sum of the
    /// rounded operands (plus what `dx` held), and each token's result the
    /// same bits whatever the token count of the call.
    #[test]
    fn sums_are_exact_to_rounding_and_each_token_gets_its_solo_result() {
        if !supported() {
            eprintln!("bf16_input_grad: this CPU lacks AVX-512 BF16; the kernel was not run");
            return;
        }
        let mut next = uniform(5);
        for (out_dim, in_dim, tokens) in [(1, 1, 1), (7, 40, 13), (64, 96, 25), (CHUNK_ROWS * 2 + 3, 33, 5)] {
            let weights: Vec<u16> = (0..out_dim * in_dim).map(|_| half::bf16::from_f32(next()).to_bits()).collect();
            let w: Vec<u8> = weights.iter().flat_map(|v| v.to_le_bytes()).collect();
            let dy: Vec<f32> = (0..tokens * out_dim).map(|_| next()).collect();
            let start: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
            let mut rounded = Bf16Rows::new();
            rounded.fill(&dy, out_dim);
            let mut dx = start.clone();
            bf16_input_grad(&w, in_dim, &rounded, &mut dx);
            for t in 0..tokens {
                let mut one = Bf16Rows::new();
                one.fill(&dy[t * out_dim..(t + 1) * out_dim], out_dim);
                let mut alone = start[t * in_dim..(t + 1) * in_dim].to_vec();
                bf16_input_grad(&w, in_dim, &one, &mut alone);
                let grads = one.row_f32(0);
                for i in 0..in_dim {
                    let what = format!("{out_dim}×{in_dim}, token {t} of {tokens}, column {i}");
                    assert_eq!(dx[t * in_dim + i].to_bits(), alone[i].to_bits(), "{what}");
                    let held = start[t * in_dim + i] as f64;
                    let (exact, scale) = (0..out_dim).fold((held, held.abs()), |(sum, scale), o| {
                        let product = half::bf16::from_bits(weights[o * in_dim + i]).to_f64() * grads[o] as f64;
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
