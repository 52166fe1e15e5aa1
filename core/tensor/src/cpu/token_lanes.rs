//! `y = x · Wᵀ` for many tokens with the tokens in the vector lanes, on
//! AVX-512: the training forward's products, for f32 weights and for bf16
//! weights (`vdpbf16ps`, AVX-512 BF16).
//!
//! The serving kernels give each (row, token) a chain over the inputs that
//! ends in a horizontal reduction (`half_gemm`), or go through the gemm
//! crate's packing and its AVX2 tile; both serve prompts of any length with
//! the same bits per token. Here the activations are transposed once per
//! call ([`TokenWords`]), so that a register holds one input (f32) or one
//! input pair (bf16) of sixteen tokens, and each weight word of a row is
//! broadcast against two such registers. A tile of twelve rows × 32 tokens
//! keeps 24 accumulators in registers; each sum is already one lane, so
//! nothing is reduced or packed, and the results are scattered to `y`.
//!
//! Each (token, row) sum is one chain over the inputs in order: it depends
//! on neither the token count nor the thread, but its bits are not the
//! serving kernels', so serving never takes this path (a prompt must get
//! the same result prefilled in pieces or at once).

use super::bf16::{bf16_supported, Bf16Rows};
use super::pool::{for_parts, SharedMut};
use std::sync::atomic::{AtomicUsize, Ordering};

/// Weight rows per tile.
const ROWS: usize = 12;
/// Tokens per tile: two registers of sixteen lanes.
const TOKENS: usize = 32;
/// Rows a thread claims at a time (whole tiles).
const CHUNK_ROWS: usize = 4 * ROWS;

/// What a weight word and an activation word hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Words {
    /// One f32 value.
    F32,
    /// Two bf16 values (an input pair).
    Bf16Pairs,
}

/// Whether this CPU runs [`token_lanes_gemm`] on `words` (AVX-512 F; for
/// bf16 also AVX-512 BF16).
pub(crate) fn supported(words: Words) -> bool {
    match words {
        Words::F32 => super::has_avx512(),
        Words::Bf16Pairs => bf16_supported(),
    }
}

/// Activations transposed for [`token_lanes_gemm`]: by block of 32 tokens,
/// then word (input, or input pair), the 32 tokens' words (zero past the
/// last token). Reused across calls.
#[derive(Debug, Clone, Default)]
pub struct TokenWords {
    tokens: usize,
    steps: usize,
    words: Vec<u32>,
}

impl TokenWords {
    /// `x` (`tokens × in_dim` f32), transposed.
    pub(crate) fn fill_f32(&mut self, x: &[f32], in_dim: usize) {
        self.fill(bytemuck::cast_slice(x), x.len() / in_dim.max(1), in_dim);
    }

    /// `x`'s bf16 pairs, transposed.
    pub(crate) fn fill_bf16(&mut self, x: &Bf16Rows) {
        self.fill(x.words(), x.rows(), x.cols().div_ceil(2));
    }

    /// `rows` of `steps` words, transposed by blocks of tokens split over
    /// the pool.
    fn fill(&mut self, rows: &[u32], tokens: usize, steps: usize) {
        self.tokens = tokens;
        self.steps = steps;
        self.words.clear();
        self.words.resize(tokens.div_ceil(TOKENS) * steps * TOKENS, 0);
        let block_words = steps * TOKENS;
        let shared = SharedMut::new(&mut self.words);
        for_parts(tokens.div_ceil(TOKENS), 2, |blocks| {
            // SAFETY: for_parts hands each participant disjoint blocks.
            let words = unsafe { shared.part(blocks.start * block_words..blocks.end * block_words) };
            let first = blocks.start * TOKENS;
            let last = (blocks.end * TOKENS).min(tokens);
            for (t, row) in (first..last).zip(rows[first * steps..last * steps].chunks_exact(steps)) {
                let block = &mut words[(t - first) / TOKENS * block_words..];
                for (p, &word) in row.iter().enumerate() {
                    block[p * TOKENS + t % TOKENS] = word;
                }
            }
        });
    }
}

/// `y[t·rows + o] = Σ_i x[t, i] · W[o, i]` for `w` the little-endian bytes
/// of a row-major matrix of `row_words` words per row (`Words::F32`: f32
/// values; `Words::Bf16Pairs`: bf16 pairs) and the tokens of `x`
/// (transposed from the same kind of words), on the pool (threads claim
/// [`CHUNK_ROWS`] rows at a time). Panics unless [`supported`] and the
/// lengths agree.
pub(crate) fn token_lanes_gemm(words: Words, w: &[u8], row_words: usize, x: &TokenWords, y: &mut [f32]) {
    token_lanes_gemm_rows(words, w, row_words, x, y, 0);
}

/// [`token_lanes_gemm`] for a piece of a matrix: `w`'s rows are rows
/// `first_row..` of an output `y` of `y.len() / tokens` rows per token.
pub(crate) fn token_lanes_gemm_rows(
    words: Words,
    w: &[u8],
    row_words: usize,
    x: &TokenWords,
    y: &mut [f32],
    first_row: usize,
) {
    let rows = w.len() / (4 * row_words.max(1));
    let tokens = x.tokens;
    let y_rows = y.len() / tokens.max(1);
    assert!(
        supported(words)
            && row_words > 0
            && x.steps == row_words
            && w.len() == 4 * rows * row_words
            && y.len() == tokens * y_rows
            && first_row + rows <= y_rows
            && i32::try_from(tokens * y_rows).is_ok(),
        "token_lanes_gemm: {} weight bytes of rows of {row_words} words from row {first_row}, {tokens} tokens of {}, {} outputs",
        w.len(),
        x.steps,
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
                    w: w[4 * row * row_words..].as_ptr(),
                    row_words,
                    x: x.words[block * row_words * TOKENS..].as_ptr(),
                    y: out.at(block * TOKENS * y_rows + first_row + row),
                    rows: y_rows,
                    tokens: TOKENS.min(tokens - block * TOKENS),
                };
                // SAFETY: supported(words) held (assert above). The tile
                // reads rows row..row + count of `w` (inside: row < rows),
                // the block's row_words × 32 words of `x.words` (sized for
                // whole blocks), and writes y at its tokens (< tokens) and
                // rows first_row + row.. (< y_rows, asserted), which only
                // this thread claimed; `y` stays borrowed until the pool
                // job returns, and its indices fit in i32.
                unsafe { run_tile(words, &tile, ROWS.min(rows - row)) };
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
    /// The token block's words: word by word, 32 tokens each.
    x: *const u32,
    /// Output of the block's first token and the tile's first row; tokens
    /// `rows` values apart.
    y: *mut f32,
    rows: usize,
    /// Tokens of the block that exist (the rest are zero words).
    tokens: usize,
}

/// The tile through the kernel compiled for its words and `rows` (1..=12).
///
/// # Safety
/// As [`kernel`].
#[cfg(target_arch = "x86_64")]
unsafe fn run_tile(words: Words, tile: &Tile, rows: usize) {
    const { assert!(ROWS == 12) };
    match words {
        Words::F32 => super::by_count_to_12!(rows, f32_kernel(tile)),
        Words::Bf16Pairs => super::by_count_to_12!(rows, bf16_kernel(tile)),
    }
}

#[cfg(not(target_arch = "x86_64"))]
unsafe fn run_tile(_: Words, _: &Tile, _: usize) {
    unreachable!("token_lanes_gemm runs only where supported() holds")
}

/// [`kernel`] on f32 words.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl")]
unsafe fn f32_kernel<const R: usize>(tile: &Tile) {
    use std::arch::x86_64::*;
    kernel::<R>(tile, |acc, weight, tokens| {
        _mm512_fmadd_ps(_mm512_castsi512_ps(weight), _mm512_castsi512_ps(tokens), acc)
    })
}

/// [`kernel`] on bf16 pairs.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512vl,avx512bf16")]
unsafe fn bf16_kernel<const R: usize>(tile: &Tile) {
    use std::arch::x86_64::*;
    // __m512i and __m512bh are both 64-byte vectors: the transmutes
    // reinterpret bits only.
    kernel::<R>(tile, |acc, weight, tokens| {
        let (weight, tokens) =
            (std::mem::transmute::<__m512i, __m512bh>(weight), std::mem::transmute::<__m512i, __m512bh>(tokens));
        _mm512_dpbf16_ps(acc, weight, tokens)
    })
}

/// `R` rows × 32 tokens: per word, two loads of token words and `R`
/// broadcast weight words meet in `2R` products (`multiply_add(acc,
/// weight, tokens)`); then each row's two registers are scattered to its
/// column of `y`.
///
/// # Safety
/// The CPU has AVX-512 F (and what `multiply_add` needs, its caller's
/// features); the tile's pointers address `R` weight rows, the block's
/// `row_words × 32` words, and writable outputs for its `tokens` tokens at
/// `R` rows.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
unsafe fn kernel<const R: usize>(
    tile: &Tile,
    multiply_add: impl Fn(
        std::arch::x86_64::__m512,
        std::arch::x86_64::__m512i,
        std::arch::x86_64::__m512i,
    ) -> std::arch::x86_64::__m512,
) {
    use std::arch::x86_64::*;
    let words = tile.w as *const u32;
    let mut acc = [[_mm512_setzero_ps(); 2]; R];
    for p in 0..tile.row_words {
        let first = _mm512_loadu_si512(tile.x.add(p * TOKENS).cast());
        let second = _mm512_loadu_si512(tile.x.add(p * TOKENS + 16).cast());
        for (r, sums) in acc.iter_mut().enumerate() {
            let weight = _mm512_set1_epi32(words.add(r * tile.row_words + p).read_unaligned() as i32);
            sums[0] = multiply_add(sums[0], weight, first);
            sums[1] = multiply_add(sums[1], weight, second);
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

    /// Every tile shape (rows and tokens not multiples of the tile), for
    /// both kinds of words: each result within f32 rounding of the exact
    /// product of the (rounded) operands, and each token's result the same
    /// bits whatever the token count of the call.
    #[test]
    fn sums_are_exact_to_rounding_and_each_token_gets_its_solo_result() {
        let mut next = uniform(3);
        for words in [Words::F32, Words::Bf16Pairs] {
            if !supported(words) {
                eprintln!("token_lanes_gemm: this CPU lacks AVX-512 for {words:?}; not run");
                continue;
            }
            for (rows, in_dim, tokens) in [(1, 2, 1), (13, 46, 33), (50, 64, 70), (5, 576, 17)] {
                let values: Vec<f32> = (0..rows * in_dim).map(|_| next()).collect();
                let (w, weights) = weight_bytes(words, &values);
                let x: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
                let row_words = if words == Words::F32 { in_dim } else { in_dim / 2 };
                let mut y = vec![f32::NAN; tokens * rows];
                token_lanes_gemm(words, &w, row_words, &transposed(words, &x, in_dim).0, &mut y);
                for t in 0..tokens {
                    let (one, inputs) = transposed(words, &x[t * in_dim..(t + 1) * in_dim], in_dim);
                    let mut alone = vec![f32::NAN; rows];
                    token_lanes_gemm(words, &w, row_words, &one, &mut alone);
                    for o in 0..rows {
                        let what = format!("{words:?} {rows}×{in_dim}, token {t} of {tokens}, row {o}");
                        assert_eq!(y[t * rows + o].to_bits(), alone[o].to_bits(), "{what}");
                        let (exact, scale) = (0..in_dim).fold((0f64, 0f64), |(sum, scale), i| {
                            let product = weights[o * in_dim + i] as f64 * inputs[i] as f64;
                            (sum + product, scale + product.abs())
                        });
                        let bound = (in_dim + 1) as f64 * f64::from(f32::EPSILON) / 2.0 * scale;
                        assert!((alone[o] as f64 - exact).abs() <= bound, "{what}: {} vs {exact}", alone[o]);
                    }
                }
            }
        }
    }

    /// The weight bytes for `words`, and the values they hold.
    fn weight_bytes(words: Words, values: &[f32]) -> (Vec<u8>, Vec<f32>) {
        match words {
            Words::F32 => (bytemuck::cast_slice(values).to_vec(), values.to_vec()),
            Words::Bf16Pairs => {
                let rounded: Vec<half::bf16> = values.iter().map(|&v| half::bf16::from_f32(v)).collect();
                (rounded.iter().flat_map(|v| v.to_le_bytes()).collect(), rounded.iter().map(|v| v.to_f32()).collect())
            }
        }
    }

    /// `x` transposed for `words`, and its first row's values as multiplied.
    fn transposed(words: Words, x: &[f32], in_dim: usize) -> (TokenWords, Vec<f32>) {
        let mut out = TokenWords::default();
        match words {
            Words::F32 => {
                out.fill_f32(x, in_dim);
                (out, x[..in_dim].to_vec())
            }
            Words::Bf16Pairs => {
                let mut rounded = Bf16Rows::new();
                rounded.fill(x, in_dim);
                out.fill_bf16(&rounded);
                (out, rounded.row_f32(0))
            }
        }
    }
}
