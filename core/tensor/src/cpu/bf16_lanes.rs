//! `y = x · Wᵀ` for bf16 weights and many tokens on AVX-512 BF16, with the
//! tokens in the vector lanes: the training forward's products.
//!
//! The serving kernel (`half_gemm`) gives each (row, token) a 16-lane
//! chain over the inputs and reduces it at the end, so every token gets its
//! solo result at any token count; with rows of a few hundred inputs that
//! reduction and the tile's bookkeeping cost a third of its time. Here the
//! activations are rounded to bf16 and transposed once per call, so that a
//! register holds one input pair of sixteen tokens; each weight word (two
//! inputs of one row) is broadcast against two such registers. A tile of
//! twelve rows × 32 tokens keeps 24 accumulators in registers, and each
//! sum is already one lane: nothing is reduced, the results are scattered
//! to their rows of `y`.
//!
//! Each (token, row) sum is one chain over the input pairs in order: it
//! depends on neither the token count nor the thread, but it is not the
//! bits `half_gemm` gives, so serving never takes this kernel (a prompt
//! must get the same result prefilled in pieces or at once).

use super::bf16::{bf16_supported, Bf16Rows};
use super::pool::{for_parts, SharedMut};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Weight rows per tile.
const ROWS: usize = 12;
/// Tokens per tile: two registers of sixteen lanes.
const TOKENS: usize = 32;
/// Rows a thread claims at a time (whole tiles).
const CHUNK_ROWS: usize = 4 * ROWS;

/// Whether this CPU runs [`bf16_lanes_gemm`] (AVX-512 F and BF16).
pub(crate) fn supported() -> bool {
    bf16_supported()
}

/// Activations rounded to bf16 and transposed for [`bf16_lanes_gemm`]: by
/// block of 32 tokens, then input pair, the 32 tokens' words (zero past
/// the last token). Reused across calls.
#[derive(Debug, Clone, Default)]
pub struct TokenPairs {
    tokens: usize,
    pairs: usize,
    words: Vec<u32>,
}

impl TokenPairs {
    /// Replaces the contents with `x`'s rows, transposed (blocks of
    /// tokens split over the pool).
    pub(crate) fn fill(&mut self, x: &Bf16Rows) {
        let (tokens, pairs) = (x.rows(), x.cols().div_ceil(2));
        self.tokens = tokens;
        self.pairs = pairs;
        self.words.clear();
        self.words.resize(tokens.div_ceil(TOKENS) * pairs * TOKENS, 0);
        let (rows, block_words) = (x.words(), pairs * TOKENS);
        let shared = SharedMut::new(&mut self.words);
        for_parts(tokens.div_ceil(TOKENS), 2, |blocks| {
            // SAFETY: for_parts hands each participant disjoint blocks.
            let words = unsafe { shared.part(blocks.start * block_words..blocks.end * block_words) };
            let first = blocks.start * TOKENS;
            let last = (blocks.end * TOKENS).min(tokens);
            for (t, row) in (first..last).zip(rows[first * pairs..last * pairs].chunks_exact(pairs)) {
                let block = &mut words[(t - first) / TOKENS * block_words..];
                for (p, &word) in row.iter().enumerate() {
                    block[p * TOKENS + t % TOKENS] = word;
                }
            }
        });
    }
}

/// `y[t·rows + o] = Σ_i x[t, i] · W[o, i]` for a `rows × in_dim` bf16
/// matrix `w` (little-endian bytes, row-major, `in_dim` even) and the
/// tokens of `x`, on the pool (threads claim [`CHUNK_ROWS`] rows at a time).
/// Panics unless [`supported`] and the lengths agree.
pub(crate) fn bf16_lanes_gemm(w: &[u8], in_dim: usize, x: &TokenPairs, y: &mut [f32]) {
    let rows = w.len() / (2 * in_dim.max(1));
    let tokens = x.tokens;
    assert!(
        supported()
            && in_dim > 0
            && in_dim.is_multiple_of(2)
            && x.pairs == in_dim / 2
            && w.len() == 2 * rows * in_dim
            && y.len() == tokens * rows
            && i32::try_from(tokens * rows).is_ok(),
        "bf16_lanes_gemm: {} weight bytes of rows of {in_dim}, {tokens} tokens of {} pairs, {} outputs",
        w.len(),
        x.pairs,
        y.len()
    );
    let (out, next) = (OutPtr(y.as_mut_ptr()), AtomicUsize::new(0));
    let job = |_: usize, _: usize| loop {
        let first = next.fetch_add(CHUNK_ROWS, Ordering::Relaxed);
        if first >= rows {
            break;
        }
        for row in (first..(first + CHUNK_ROWS).min(rows)).step_by(ROWS) {
            for block in 0..tokens.div_ceil(TOKENS) {
                let tile = Tile {
                    w: w[2 * row * in_dim..].as_ptr(),
                    row_words: in_dim / 2,
                    x: x.words[block * x.pairs * TOKENS..].as_ptr(),
                    pairs: x.pairs,
                    y: out.at(block * TOKENS * rows + row),
                    rows,
                    tokens: TOKENS.min(tokens - block * TOKENS),
                };
                // SAFETY: supported() held (assert above). The tile reads
                // rows row..row + count of `w` (inside: row < rows), the
                // block's pairs × 32 words of `x.words` (sized for whole
                // blocks), and writes y at its tokens (< tokens) and rows,
                // which only this thread claimed; `y` stays borrowed until
                // the pool job returns, and its indices fit in i32 (assert).
                unsafe { run_tile(&tile, ROWS.min(rows - row)) };
            }
        }
    };
    super::pool::SpinPool::global().run(&job);
}

/// `y` shared by the pool's threads, each writing the rows it claimed.
struct OutPtr(*mut f32);
// SAFETY: threads write disjoint rows (claimed once from a counter).
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// The output `offset` values in (a method, so closures capture the whole wrapper).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// One tile's operands.
struct Tile {
    /// The tile's first weight row; rows `row_words` words apart.
    w: *const u8,
    row_words: usize,
    /// The token block's words: pair by pair, 32 tokens each.
    x: *const u32,
    pairs: usize,
    /// Output of the block's first token and the tile's first row; tokens
    /// `rows` values apart.
    y: *mut f32,
    rows: usize,
    /// Tokens of the block that exist (the rest are zero words).
    tokens: usize,
}

/// The tile through the kernel compiled for `rows` (1..=12) rows.
///
/// # Safety
/// As [`tile`].
#[cfg(target_arch = "x86_64")]
unsafe fn run_tile(tile: &Tile, rows: usize) {
    const { assert!(ROWS == 12) };
    super::by_count_to_12!(rows, kernel(tile))
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn run_tile(_: &Tile, _: usize) {
    unreachable!("bf16_lanes_gemm runs only where supported() holds")
}

/// `R` rows × 32 tokens: per input pair, two loads of token words and `R`
/// broadcast weight words meet in `2R` `vdpbf16ps`; then each row's two
/// registers are scattered to its column of `y`.
///
/// # Safety
/// The CPU has AVX-512 F and BF16; the tile's pointers address `R` weight
/// rows, the block's `pairs × 32` words, and writable outputs for its
/// `tokens` tokens at `R` rows.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bf16")]
unsafe fn kernel<const R: usize>(tile: &Tile) {
    use std::arch::x86_64::*;
    let words = tile.w as *const u32;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..tile.pairs {
        // __m512i and __m512bh are both 64-byte vectors: the transmutes
        // reinterpret bits only.
        let first: __m512bh = std::mem::transmute(_mm512_loadu_si512(tile.x.add(p * TOKENS).cast()));
        let second: __m512bh = std::mem::transmute(_mm512_loadu_si512(tile.x.add(p * TOKENS + 16).cast()));
        for (r, sums) in acc.iter_mut().enumerate() {
            let word = words.add(r * tile.row_words + p).read_unaligned();
            let weights: __m512bh = std::mem::transmute(_mm512_set1_epi32(word as i32));
            sums[0] = _mm512_dpbf16_ps(sums[0], weights, first);
            sums[1] = _mm512_dpbf16_ps(sums[1], weights, second);
        }
    }
    let lanes = _mm512_mullo_epi32(
        _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        _mm512_set1_epi32(tile.rows as i32),
    );
    let second_lanes = _mm512_add_epi32(lanes, _mm512_set1_epi32(16 * tile.rows as i32));
    let present = |from: usize| -> __mmask16 {
        let count = tile.tokens.saturating_sub(from).min(16);
        ((1u32 << count) - 1) as __mmask16
    };
    for (r, sums) in acc.iter().enumerate() {
        let column = tile.y.add(r);
        _mm512_mask_i32scatter_ps::<4>(column, present(0), lanes, sums[0]);
        _mm512_mask_i32scatter_ps::<4>(column, present(16), second_lanes, sums[1]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::test_values::uniform;
    use super::*;

    /// Every tile shape (rows and tokens not multiples of the tile): each
    /// result within f32 rounding of the exact product of the rounded
    /// operands, and each token's result the same bits whatever the token
    /// count of the call.
    #[test]
    fn sums_are_exact_to_rounding_and_each_token_gets_its_solo_result() {
        if !supported() {
            eprintln!("bf16_lanes_gemm: this CPU lacks AVX-512 BF16; the kernel was not run");
            return;
        }
        let mut next = uniform(3);
        for (rows, in_dim, tokens) in [(1, 2, 1), (13, 46, 33), (50, 64, 70), (5, 576, 17)] {
            let weights: Vec<u16> = (0..rows * in_dim).map(|_| half::bf16::from_f32(next()).to_bits()).collect();
            let w: Vec<u8> = weights.iter().flat_map(|v| v.to_le_bytes()).collect();
            let x: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
            let (mut rounded, mut pairs) = (Bf16Rows::new(), TokenPairs::default());
            rounded.fill(&x, in_dim);
            pairs.fill(&rounded);
            let mut y = vec![f32::NAN; tokens * rows];
            bf16_lanes_gemm(&w, in_dim, &pairs, &mut y);
            for t in 0..tokens {
                let mut one = Bf16Rows::new();
                one.fill(&x[t * in_dim..(t + 1) * in_dim], in_dim);
                pairs.fill(&one);
                let mut alone = vec![f32::NAN; rows];
                bf16_lanes_gemm(&w, in_dim, &pairs, &mut alone);
                let inputs = one.row_f32(0);
                for o in 0..rows {
                    let what = format!("{rows}×{in_dim}, token {t} of {tokens}, row {o}");
                    assert_eq!(y[t * rows + o].to_bits(), alone[o].to_bits(), "{what}");
                    let (exact, scale) = (0..in_dim).fold((0f64, 0f64), |(sum, scale), i| {
                        let product = half::bf16::from_bits(weights[o * in_dim + i]).to_f64() * inputs[i] as f64;
                        (sum + product, scale + product.abs())
                    });
                    let bound = (in_dim + 1) as f64 * f64::from(f32::EPSILON) / 2.0 * scale;
                    assert!((alone[o] as f64 - exact).abs() <= bound, "{what}: {} vs {exact}", alone[o]);
                }
            }
        }
    }
}
