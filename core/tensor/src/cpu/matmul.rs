//! Linear layers: `y = x · Wᵀ` for dense and block-quantized `W`.
//!
//! Decoding (one token) is a matrix-vector product and memory bound: weights
//! stay quantized and activations are quantized to 8 bits; f16/bf16 weights
//! are read as stored and widened in registers (`half_dot`), or, bf16 on a
//! CPU with AVX-512 BF16, multiplied as stored with `vdpbf16ps` against
//! activations rounded to bf16 (`half_gemm`, at every token count), and f16
//! on a CPU with AVX-512 FP16 in f16 against activations rounded to f16
//! (the same, with `vfmadd231ph`; f16 sums of at most 16 products). Prefill
//! (many tokens) is compute bound. Weights with a row-interleaved copy (the AVX2
//! layouts of `quant::interleaved`) stay quantized there too: 8-bit
//! activations meet each group's unpacked quants a tile of tokens at a time,
//! with integer products, as llama.cpp does, and every token gets exactly
//! what it gets alone. f16/bf16 matrices are read as stored by the tile
//! kernels of `half_gemm` (AVX-512, or AVX2 with F16C). Other matrices go
//! by panels of rows, each dequantized into a thread's cache-sized buffer
//! and multiplied with the `gemm` crate.

use super::backward::{for_dequantized_pieces, BlockCompute};
use super::bf16::Bf16Rows;
use super::half_dot::{dot_half, is_half};
use super::half_gemm::{self, HalfInputs};
use super::pool::{for_parts, split_range, SharedMut, SpinPool};
use super::small_gemm::{small_gemm, Operand, Product};
use super::token_lanes::{self, token_lanes_gemm, token_lanes_gemm_rows, TokenWords, Words};
use crate::quant::interleaved::{
    dot_group_pairs, dot_group_tokens, dot_two_groups, takes_pairs, takes_two_groups, tile_order, InterleavedRows,
    PairedTokens, GROUP,
};
use crate::quant::packed::{block_sums, dot_packed_tokens, pair_activations, ActPair, PackedDot};
use crate::quant::{
    act_span, dequantize_row, quantize_runs, shares_act_scales, supports_dot, vec_dot, BlockQ8, DotImpl, QK, QK_K,
};
use crate::{DType, Result, Tensor, TensorError};
use rayon::prelude::*;
use std::ops::Range;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Below this many tokens a quantized linear without an interleaved copy
/// uses integer dot products; at or above it, dequantize + gemm.
pub const QUANT_GEMM_MIN_TOKENS: usize = 8;

/// Tokens whose activations an interleaved matrix's groups pass over
/// before moving to the next tokens (their 8-bit activations, 1.25 bytes
/// per input, stay in the L2 cache meanwhile).
const TOKEN_BLOCK: usize = 32;

/// Reusable buffers for [`linear`], so steady-state decoding allocates nothing.
#[derive(Default)]
pub struct LinearScratch {
    acts: Vec<BlockQ8>,
    pairs: Vec<ActPair>,
    row_pairs: Vec<ActPair>,
    /// The tokens' blocks paired for the 512-bit interleaved kernel.
    token_pairs: PairedTokens,
    /// The tokens' blocks in the two-group kernel's tile order.
    tiled_acts: Vec<BlockQ8>,
    sums: Vec<f32>,
    dense: Vec<f32>,
    bf16_inputs: Bf16Rows,
    token_words: TokenWords,
    /// Dequantized pieces of a block-quantized weight (training forward).
    pieces: Vec<u32>,
    /// The precision the training forward multiplies block-quantized
    /// weights in (QLoRA's base; see [`BlockCompute`]).
    pub block_compute: BlockCompute,
}

/// `y[t, o] = Σ_i x[t, i] · W[o, i]` for `tokens` rows of `x`.
///
/// `w` is `[out, in]`; `x` holds `tokens × in` values and `y` `tokens × out`.
pub fn linear(x: &[f32], tokens: usize, w: &Tensor, y: &mut [f32], scratch: &mut LinearScratch) -> Result<()> {
    linear_many(x, tokens, &mut [(w, y)], scratch)
}

/// Several linears of the same input in one parallel pass (q/k/v, gate/up):
/// the input is quantized once and all output rows share one fork-join.
pub fn linear_many(
    x: &[f32],
    tokens: usize,
    outputs: &mut [(&Tensor, &mut [f32])],
    scratch: &mut LinearScratch,
) -> Result<()> {
    check_outputs(x, tokens, outputs)?;
    split_linear(x, tokens, outputs, scratch, |w| uses_row_kernel(w, tokens))
}

/// [`linear_many`] on the prefill paths whatever the token count: the
/// interleaved integer kernel where a weight has that copy, dequantize +
/// gemm otherwise. Every token's result is then independent of how many
/// tokens the call holds (for the gemm, once there are
/// [`QUANT_GEMM_MIN_TOKENS`] rows or more: with one or two rows it may
/// pick other kernels), so a prompt prefilled in such pieces (a cached
/// prefix, then the rest) gets exactly what one prefill gives.
pub fn linear_many_prefill(
    x: &[f32],
    tokens: usize,
    outputs: &mut [(&Tensor, &mut [f32])],
    scratch: &mut LinearScratch,
) -> Result<()> {
    check_outputs(x, tokens, outputs)?;
    split_linear(x, tokens, outputs, scratch, |w| w.interleaved().is_some())
}

/// Tokens from which [`linear_many_train`] gives weights the token-lane
/// kernel (one full tile of tokens).
const TOKEN_LANES_MIN_TOKENS: usize = 32;

/// [`linear_many`] for the training forward, where a token's result need
/// not equal what a prefill of another length gives it: from
/// `TOKEN_LANES_MIN_TOKENS` (32) tokens on, on a CPU with AVX-512, f32 weights
/// take the token-lane kernel (`token_lanes`: no packing, no per-sum
/// reduction), and so do bf16 weights where AVX-512 BF16 is present, and
/// the block formats without an interleaved copy (QLoRA's nf4), whose
/// rows are dequantized a few thousand at a time to the words of
/// `scratch.block_compute` (f32, or bf16 against inputs rounded to bf16);
/// every other weight takes [`linear_many`]'s path.
pub fn linear_many_train(
    x: &[f32],
    tokens: usize,
    outputs: &mut [(&Tensor, &mut [f32])],
    scratch: &mut LinearScratch,
) -> Result<()> {
    check_outputs(x, tokens, outputs)?;
    let block_compute = scratch.block_compute;
    // The words the token-lane kernel takes a weight in (block formats:
    // as dequantized), if it takes it.
    let lanes_words = |w: &Tensor| {
        let words = match w.dtype() {
            DType::F32 if w.packed().is_none() => Words::F32,
            d if d.is_quantized() && w.packed().is_none() => block_compute.words_for(w),
            DType::BF16 if w.row_len().is_multiple_of(2) => Words::Bf16Pairs,
            _ => return None,
        };
        let fits = tokens >= TOKEN_LANES_MIN_TOKENS && w.interleaved().is_none() && token_lanes::supported(words);
        fits.then_some(words)
    };
    let in_dim = x.len() / tokens.max(1);
    let (mut f32_weights, mut bf16_weights, mut others) = (Vec::new(), Vec::new(), Vec::new());
    for (w, y) in outputs.iter_mut() {
        match lanes_words(w) {
            Some(Words::F32) => f32_weights.push((*w, &mut **y)),
            Some(Words::Bf16Pairs) => bf16_weights.push((*w, &mut **y)),
            None => others.push((*w, &mut **y)),
        }
    }
    // The outputs share the input: it is transposed once per kind of word.
    if !f32_weights.is_empty() {
        scratch.token_words.fill_f32(x, in_dim);
        token_lanes_train(Words::F32, in_dim, &scratch.token_words, f32_weights, &mut scratch.pieces)?;
    }
    if !bf16_weights.is_empty() {
        scratch.bf16_inputs.fill(x, in_dim);
        scratch.token_words.fill_bf16(&scratch.bf16_inputs);
        token_lanes_train(Words::Bf16Pairs, in_dim / 2, &scratch.token_words, bf16_weights, &mut scratch.pieces)?;
    }
    if !others.is_empty() {
        linear_many(x, tokens, &mut others, scratch)?;
    }
    Ok(())
}

/// The token-lane kernel on `words` over each weight: as stored when
/// stored in those words, else through pieces dequantized to them.
fn token_lanes_train(
    words: Words,
    row_words: usize,
    x: &TokenWords,
    weights: Vec<(&Tensor, &mut [f32])>,
    pieces: &mut Vec<u32>,
) -> Result<()> {
    for (w, y) in weights {
        if !w.dtype().is_quantized() {
            token_lanes_gemm(words, w.bytes(), row_words, x, y);
            continue;
        }
        for_dequantized_pieces(w, words, pieces, |piece, rows| {
            token_lanes_gemm_rows(words, piece, row_words, x, y, rows.start);
        })?;
    }
    Ok(())
}

/// The outputs `by_rows` picks on the row kernels (activations quantized
/// once for all of them), the others on dequantize + gemm.
fn split_linear(
    x: &[f32],
    tokens: usize,
    outputs: &mut [(&Tensor, &mut [f32])],
    scratch: &mut LinearScratch,
    by_rows: impl Fn(&Tensor) -> bool,
) -> Result<()> {
    let (mut rows, dense): (Vec<_>, Vec<_>) =
        outputs.iter_mut().map(|(w, y)| (*w, &mut **y)).partition(|(w, _)| by_rows(w));
    if !rows.is_empty() {
        rows_linear(x, tokens, &mut rows, scratch)?;
    }
    for (w, y) in dense {
        gemm_linear(x, tokens, w, y, scratch)?;
    }
    Ok(())
}

/// [`linear_many`] for a decode batch: each of the `tokens` rows of `x`
/// belongs to a different sequence, and each row's result is exactly (bit
/// for bit) what `linear_many` gives that row alone. When every weight has
/// a row kernel, all rows share one pass over the weights (each weight row
/// is read once for the whole batch); otherwise the rows run one by one.
pub fn linear_many_decode(
    x: &[f32],
    tokens: usize,
    outputs: &mut [(&Tensor, &mut [f32])],
    scratch: &mut LinearScratch,
) -> Result<()> {
    check_outputs(x, tokens, outputs)?;
    if outputs.iter().all(|(w, _)| uses_row_kernel(w, 1)) {
        return rows_linear(x, tokens, outputs, scratch);
    }
    if outputs.iter().all(|(w, _)| uses_row_kernel(w, 1) || takes_half_tiles(w)) {
        // The AVX-512 half tiles give each token its solo result too.
        return split_linear(x, tokens, outputs, scratch, |w| uses_row_kernel(w, 1));
    }
    let in_dim = outputs[0].0.row_len();
    for t in 0..tokens {
        let mut rows: Vec<(&Tensor, &mut [f32])> = outputs
            .iter_mut()
            .map(|(w, y)| {
                let out_dim = w.row_count();
                (*w, &mut y[t * out_dim..(t + 1) * out_dim])
            })
            .collect();
        linear_many(&x[t * in_dim..(t + 1) * in_dim], 1, &mut rows, scratch)?;
    }
    Ok(())
}

/// The row-kernel path: activations quantized per row (once for all
/// outputs), then dot products of every (weight row, token) pair.
fn rows_linear(
    x: &[f32],
    tokens: usize,
    outputs: &mut [(&Tensor, &mut [f32])],
    scratch: &mut LinearScratch,
) -> Result<()> {
    let in_dim = outputs[0].0.row_len();
    let needs_blocks = outputs.iter().any(|(w, _)| supports_dot(w.dtype()));
    let needs_pairs = outputs.iter().any(|(w, _)| w.packed().is_some());
    // One quantization serves every output: with a super-block scale where
    // any of them needs it (every kernel takes that form).
    let act_dtype = outputs.iter().map(|(w, _)| w.dtype()).find(|&d| shares_act_scales(d)).unwrap_or(DType::Q8_0);
    scratch.acts.clear();
    scratch.pairs.clear();
    scratch.sums.clear();
    if needs_blocks || needs_pairs {
        quantize_tokens(act_dtype, x, in_dim, &mut scratch.acts)?;
    }
    if needs_pairs {
        for row_acts in scratch.acts.chunks_exact(in_dim / QK) {
            pair_activations(row_acts, &mut scratch.row_pairs);
            scratch.pairs.extend_from_slice(&scratch.row_pairs);
            block_sums(row_acts, &mut scratch.sums);
        }
    }
    // Token pairs for the interleaved outputs that take them and not the
    // two-group kernel (whose matrices' odd groups take the 256-bit one).
    let pairs_tokens = tokens > 1
        && outputs
            .iter()
            .any(|(w, _)| w.interleaved().is_some_and(|rows| takes_pairs(rows.dtype) && !takes_two_groups(rows.dtype)));
    if pairs_tokens {
        scratch.token_pairs.fill(&scratch.acts, tokens, in_dim / QK);
    }
    let two_groups =
        tokens > 1 && outputs.iter().any(|(w, _)| w.interleaved().is_some_and(|rows| takes_two_groups(rows.dtype)));
    if two_groups {
        tile_order(&scratch.acts, in_dim / QK, &mut scratch.tiled_acts);
    }
    let activations = Activations {
        blocks: &scratch.acts,
        pairs: &scratch.pairs,
        token_pairs: pairs_tokens.then_some(&scratch.token_pairs),
        tiled: two_groups.then_some(&scratch.tiled_acts[..]),
        sums: &scratch.sums,
    };
    row_kernel(x, tokens, activations, outputs);
    Ok(())
}

/// Every token's activations of `x` (rows of `in_dim`) quantized for
/// `act_dtype` into `acts` (a block per 32 values), the tokens split over
/// the pool: quantizing is the prefill's largest step between its matrix
/// products, and the pool's other threads would wait through it.
fn quantize_tokens(act_dtype: DType, x: &[f32], in_dim: usize, acts: &mut Vec<BlockQ8>) -> Result<()> {
    /// Blocks below which one thread quantizes alone (a decode's row).
    const MIN_PARALLEL_BLOCKS: usize = 1024;
    let span = act_span(act_dtype);
    if !in_dim.is_multiple_of(span) || !x.len().is_multiple_of(in_dim) {
        return Err(TensorError::BadBlockLength { dtype: DType::Q8_0, block: span, len: in_dim });
    }
    acts.clear();
    acts.resize(x.len() / QK, BlockQ8::default());
    if !x.len().is_multiple_of(QK_K) || acts.len() < MIN_PARALLEL_BLOCKS {
        quantize_runs(x, span, acts);
        return Ok(());
    }
    // Parts of whole super blocks (a whole number of spans of either
    // size), so each part quantizes exactly as the whole would.
    let per_part = QK_K / QK;
    let shared = SharedMut::new(acts);
    for_parts(shared.len() / per_part, 0, |range| {
        let blocks = range.start * per_part..range.end * per_part;
        let values = &x[blocks.start * QK..blocks.end * QK];
        // SAFETY: `for_parts` hands each participant a disjoint range.
        quantize_runs(values, span, unsafe { shared.part(blocks) });
    });
    Ok(())
}

/// [`check_linear`] for every output of a multi-output call.
fn check_outputs(x: &[f32], tokens: usize, outputs: &[(&Tensor, &mut [f32])]) -> Result<()> {
    outputs.iter().try_for_each(|(w, y)| check_linear(x, tokens, w, y))
}

fn check_linear(x: &[f32], tokens: usize, w: &Tensor, y: &[f32]) -> Result<()> {
    let (out_dim, in_dim) = (w.row_count(), w.row_len());
    if w.shape().len() != 2 || x.len() != tokens * in_dim || y.len() != tokens * out_dim {
        return Err(TensorError::Incompatible {
            op: "linear",
            detail: format!(
                "x has {} values for {tokens} tokens, weight is {:?}, y has {} values",
                x.len(),
                w.shape(),
                y.len()
            ),
        });
    }
    Ok(())
}

/// True when row-by-row dot products beat dequantize + gemm: always for
/// an interleaved copy (its kernel reuses unpacked quants across tokens),
/// else only for short inputs.
fn uses_row_kernel(w: &Tensor, tokens: usize) -> bool {
    match w.dtype() {
        _ if w.interleaved().is_some() => true,
        _ if takes_half_tiles(w) => false,
        DType::F32 => tokens == 1,
        d => (supports_dot(d) || is_half(d)) && tokens < QUANT_GEMM_MIN_TOKENS,
    }
}

/// True when `w` is bf16 and this CPU multiplies it as stored with
/// `vdpbf16ps` (activations rounded to bf16), for any token count.
fn takes_bf16_products(w: &Tensor) -> bool {
    half_gemm::supported() && half_gemm::takes_bf16_products(w.dtype(), w.row_len())
}

/// True when `w` is f16/bf16 and this CPU's AVX-512 tiles multiply it
/// for any token count, decode included.
fn takes_half_tiles(w: &Tensor) -> bool {
    takes_bf16_products(w) || half_gemm::decodes(w.dtype(), w.row_len())
}

fn gemm_linear(x: &[f32], tokens: usize, w: &Tensor, y: &mut [f32], scratch: &mut LinearScratch) -> Result<()> {
    let (out_dim, in_dim) = (w.row_count(), w.row_len());
    if w.dtype() == DType::F32 {
        let weights = w.to_f32()?;
        gemm_f32(x, tokens, in_dim, &weights, out_dim, y);
        return Ok(());
    }
    if takes_bf16_products(w) {
        scratch.bf16_inputs.fill(x, in_dim);
        half_gemm::half_gemm(w.dtype(), w.bytes(), in_dim, HalfInputs::Bf16(&scratch.bf16_inputs), tokens, y);
        return Ok(());
    }
    if half_gemm::takes_f16_products(w.dtype(), in_dim) {
        half_gemm::half_gemm(w.dtype(), w.bytes(), in_dim, HalfInputs::F16(x), tokens, y);
        return Ok(());
    }
    if half_gemm::supported() && half_gemm::fits(w.dtype(), in_dim) {
        half_gemm::half_gemm(w.dtype(), w.bytes(), in_dim, HalfInputs::F32(x), tokens, y);
        return Ok(());
    }
    gemm_panels(x, tokens, w, y, &mut scratch.dense)
}

/// Weight rows one thread dequantizes to f32 at a time for the prefill
/// gemm: 64 rows of 2,048–8,192 inputs (0.5–2 MiB) stay in the L2 or L3
/// cache while every token meets them, instead of the whole matrix going
/// to memory as f32 and back (1B F16, 128-token prefill, Zen 4: the same
/// speed within noise, 60 MiB less peak RSS; 64 or 256 rows measured alike).
const PANEL_ROWS: usize = 64;

/// `y = x · Wᵀ` for a weight without a row kernel fit for many tokens
/// (f16, bf16, formats without an interleaved copy): panels of
/// [`PANEL_ROWS`] rows, claimed by the pool's threads in order, each
/// dequantized into the thread's own buffer in `dense`, then one
/// single-threaded gemm of every token with the panel. Panel bounds are
/// multiples of [`PANEL_ROWS`] whatever the thread count.
fn gemm_panels(x: &[f32], tokens: usize, w: &Tensor, y: &mut [f32], dense: &mut Vec<f32>) -> Result<()> {
    let (rows, in_dim, dtype) = (w.row_count(), w.row_len(), w.dtype());
    let threads = SpinPool::global().threads().max(1);
    dense.resize(threads * PANEL_ROWS * in_dim, 0.0);
    let (buffers, out) = (OutPtr(dense.as_mut_ptr()), OutPtr(y.as_mut_ptr()));
    let (next, failed) = (AtomicUsize::new(0), std::sync::Mutex::new(None));
    let job = |index: usize, _: usize| loop {
        let first = next.fetch_add(PANEL_ROWS, Ordering::Relaxed);
        if first >= rows || index >= threads {
            break;
        }
        let panel = first..(first + PANEL_ROWS).min(rows);
        // SAFETY: slot `index` (< threads, checked above) of `dense` holds
        // PANEL_ROWS·in_dim values and only the participant with this
        // index uses it.
        let buffer =
            unsafe { std::slice::from_raw_parts_mut(buffers.at(index * PANEL_ROWS * in_dim), panel.len() * in_dim) };
        for (r, row) in panel.clone().zip(buffer.chunks_exact_mut(in_dim)) {
            if let Some(interleaved) = w.interleaved().filter(|i| r < i.rows()) {
                interleaved.dequantize_row(r, row);
            } else if let Err(e) = dequantize_row(dtype, w.row_bytes(r), row) {
                *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(e);
                return;
            }
        }
        // SAFETY: the product is panel × xᵀ. The panel buffer is
        // |panel|×in_dim row-major (filled above); x, tokens×in_dim
        // row-major (checked by check_linear), is read as in_dim×tokens
        // (column stride in_dim); the result goes to y, tokens×rows
        // row-major, at rows `panel` of each token's row, which only this
        // thread writes (claimed once from the counter).
        // read_dst=false: y's old contents are not read.
        unsafe {
            small_gemm(
                Product::plain(panel.len(), tokens, in_dim),
                Operand::transposed(out.at(panel.start), rows as isize),
                Operand::rows(buffer.as_ptr(), in_dim as isize),
                Operand::transposed(x.as_ptr(), in_dim as isize),
            );
        }
    };
    SpinPool::global().run(&job);
    match failed.into_inner().unwrap_or_else(|p| p.into_inner()) {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// A raw output pointer shared by the pool's threads.
struct OutPtr(*mut f32);
// SAFETY: each thread writes a disjoint set of indices (see row_kernel and
// gemm_f32).
unsafe impl Sync for OutPtr {}

impl OutPtr {
    /// Pointer to element `offset` (a method, so closures capture the whole
    /// Sync wrapper rather than the raw pointer field).
    fn at(&self, offset: usize) -> *mut f32 {
        self.0.wrapping_add(offset)
    }
}

/// Tokens of a packed row handled per kernel call (stack buffer size).
const MAX_ROW_TOKENS: usize = 16;

/// Quantized activations in the forms the row kernels take.
#[derive(Clone, Copy)]
struct Activations<'a> {
    blocks: &'a [BlockQ8],
    pairs: &'a [ActPair],
    /// `blocks` paired up, where some output takes the token-pair kernel.
    token_pairs: Option<&'a PairedTokens>,
    /// `blocks` in tile order, where some output takes the two-group kernel.
    tiled: Option<&'a [BlockQ8]>,
    sums: &'a [f32],
}

/// Dot products of every (matrix row, token) pair, rows split over the pool.
fn row_kernel(x: &[f32], tokens: usize, activations: Activations<'_>, outputs: &mut [(&Tensor, &mut [f32])]) {
    let Activations { blocks: acts, pairs, token_pairs, tiled, sums } = activations;
    let imp = DotImpl::detect();
    let mats: Vec<(&Tensor, OutPtr, usize)> =
        outputs.iter_mut().map(|(w, y)| (*w, OutPtr(y.as_mut_ptr()), w.row_count())).collect();
    let total: usize = mats.iter().map(|m| m.2).sum();
    let in_dim = mats[0].0.row_len();
    let blocks = in_dim / QK;
    // Rows are claimed in chunks from a shared counter, so a thread that
    // starts late or runs slower takes fewer of them; the chunks shrink as
    // the rows run out, so the threads finish close together.
    let threads = SpinPool::global().threads();
    let next = AtomicUsize::new(0);
    let claim = || {
        next.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |start| {
            (start < total).then(|| start + claim_rows(total - start, threads))
        })
    };
    let job = |_: usize, _: usize| {
        while let Ok(start) = claim() {
            let mine = start..(start + claim_rows(total - start, threads)).min(total);
            let mut first = 0;
            for (w, y, rows) in &mats {
                let lo = mine.start.max(first) - first;
                let hi = mine.end.min(first + rows).saturating_sub(first);
                let mut r = lo;
                if let Some(interleaved) = w.interleaved() {
                    // A group of eight belongs to whoever claimed its first row.
                    let groups = lo.div_ceil(GROUP)..hi.div_ceil(GROUP).min(interleaved.groups);
                    let paired = token_pairs.filter(|_| takes_pairs(interleaved.dtype));
                    let token_acts = TokenActs { blocks: acts, paired, tiled };
                    dot_interleaved(interleaved, groups, tokens, token_acts, blocks, |row, t, values| {
                        // SAFETY: as below, for the group's rows `row..row +
                        // values.len()`: each < rows, and only this thread
                        // computes a group it owns.
                        unsafe { std::ptr::copy_nonoverlapping(values.as_ptr(), y.at(t * rows + row), values.len()) }
                    });
                    r = r.max(interleaved.rows());
                }
                while r < hi {
                    if let Some(packed) = w.packed() {
                        let mut values = [0f32; MAX_ROW_TOKENS];
                        for first in (0..tokens).step_by(MAX_ROW_TOKENS) {
                            let group = &mut values[..(tokens - first).min(MAX_ROW_TOKENS)];
                            let dot = PackedDot {
                                kind: packed.kind,
                                row: packed.row(r),
                                offsets: packed.row_offsets(r),
                                acts: &pairs[first * blocks / 2..],
                                sums: &sums[first * blocks..],
                                pairs: blocks / 2,
                            };
                            dot_packed_tokens(dot, group);
                            for (i, value) in group.iter().enumerate() {
                                // SAFETY: as below: index (first+i)*rows + r is
                                // inside this output and row r is this thread's.
                                unsafe { *y.at((first + i) * rows + r) = *value };
                            }
                        }
                        r += 1;
                        continue;
                    }
                    let row = w.row_bytes(r);
                    for t in 0..tokens {
                        let x_row = &x[t * in_dim..(t + 1) * in_dim];
                        let value = match w.dtype() {
                            DType::F32 => dot_f32(bytemuck::cast_slice(row), x_row),
                            d if is_half(d) => dot_half(d, row, x_row),
                            d => vec_dot(d, row, &acts[t * blocks..(t + 1) * blocks], imp),
                        };
                        // SAFETY: index t*rows + r is inside this output (t <
                        // tokens, r < rows, checked by check_linear) and row r is
                        // claimed by exactly one thread (the counter hands out
                        // disjoint chunks), so writes never overlap.
                        unsafe { *y.at(t * rows + r) = value };
                    }
                    r += 1;
                }
                first += rows;
            }
        }
    };
    SpinPool::global().run(&job);
}

/// Rows a thread claims when `left` rows remain and `threads` share them:
/// half of each thread's share, up to 512 rows, in multiples of 16 (a
/// pair of groups of eight, the two-group kernel's unit), shrinking as the
/// rows run out so the threads finish close together (a fixed chunk of 64
/// rows left one waiting up to a whole chunk at the end of every product).
///
/// A chunk costs more than its claim (an atomic on a line both cores
/// write): each is a stream of its own through the weights, its first
/// lines fetched with no prefetch ahead of them (the one ahead of the
/// previous chunk's end went to rows another thread claimed), and a
/// prefill's activations are read again from the top for each. Chunks of
/// 64 rows before, Sapphire Rapids, 2 threads, 1B (alternating pairs):
/// decode Q4_K_M 30.3–32.2 → 34.8–36.4 tok/s, Q8_0 21.7–22.9 →
/// 24.6–25.1, Q4_0 32.8–34.7 → 38.6–39.7, Q6_K 24.0–25.3 → 26.6–27.4, F16
/// alike; 128-token prefill Q4_K_M 286–297 → 302–313, Q5_K_M 270–279 →
/// 289–291, IQ4_XS 329–340 → 335–362, SmolLM2 1457–1488 → 1530–1554, Q8_0,
/// Q5_1 and F16 alike; 512 tokens Q4_K_M 259–270 → 280–288. Larger chunks
/// (up to 4,096 rows, or a whole share at once) measured alike at decode.
fn claim_rows(left: usize, threads: usize) -> usize {
    (left / (2 * threads.max(1))).clamp(16, 512) / 16 * 16
}

/// The forms of the tokens' activations an interleaved matrix's kernels
/// read.
#[derive(Clone, Copy)]
struct TokenActs<'a> {
    /// Token after token.
    blocks: &'a [BlockQ8],
    /// Paired up, where the matrix takes the token-pair kernel.
    paired: Option<&'a PairedTokens>,
    /// In tile order, where some matrix takes the two-group kernel.
    tiled: Option<&'a [BlockQ8]>,
}

/// The interleaved groups `groups` with every token's activations,
/// handed to `store(first_row, token, values)` (the sums of rows
/// `first_row..first_row + values.len()`): [`TOKEN_BLOCK`] tokens at a time,
/// so their activations stay in cache while the groups pass over them.
fn dot_interleaved(
    interleaved: &InterleavedRows,
    groups: Range<usize>,
    tokens: usize,
    TokenActs { blocks: acts, paired, tiled }: TokenActs<'_>,
    blocks: usize,
    mut store: impl FnMut(usize, usize, &[f32]),
) {
    let mut sums = [[0f32; GROUP]; TOKEN_BLOCK];
    let mut sixteen = [[0f32; 2 * GROUP]; TOKEN_BLOCK];
    let tiled = tiled.filter(|_| takes_two_groups(interleaved.dtype));
    for first in (0..tokens).step_by(TOKEN_BLOCK) {
        let count = (tokens - first).min(TOKEN_BLOCK);
        let token_acts = &acts[first * blocks..(first + count) * blocks];
        let mut g = groups.start;
        while g < groups.end {
            if let Some(tiled) = tiled.filter(|_| count > 1 && g + 1 < groups.end) {
                // From a multiple of TOKEN_BLOCK (of sixteen) on, the tile
                // order is that of these tokens alone.
                let tile_acts = &tiled[first * blocks..(first + count) * blocks];
                dot_two_groups(interleaved, g, tile_acts, &mut sixteen[..count]);
                store_rows(&sixteen[..count], g * GROUP, first, &mut store);
                g += 2;
                continue;
            }
            match paired {
                Some(paired) if count > 1 => dot_group_pairs(interleaved, g, paired, first, &mut sums[..count]),
                _ => dot_group_tokens(interleaved, g, token_acts, &mut sums[..count]),
            }
            store_rows(&sums[..count], g * GROUP, first, &mut store);
            g += 1;
        }
    }
}

/// Hands each token's sums of `N` rows from `first_row` to `store(first_row,
/// token, sums)`, tokens from `first_token`.
fn store_rows<const N: usize>(
    sums: &[[f32; N]],
    first_row: usize,
    first_token: usize,
    store: &mut impl FnMut(usize, usize, &[f32]),
) {
    for (t, row_sums) in sums.iter().enumerate() {
        store(first_row, first_token + t, row_sums);
    }
}

/// `y = W · x` for a dense row-major `W` with rows of `in_dim` values.
pub fn matvec_f32(w: &[f32], in_dim: usize, x: &[f32], y: &mut [f32]) {
    let chunk = y.len().div_ceil(rayon::current_num_threads() * 4).max(16);
    y.par_chunks_mut(chunk).enumerate().for_each(|(c, ys)| {
        for (r, out) in ys.iter_mut().enumerate() {
            let row = c * chunk + r;
            *out = dot_f32(&w[row * in_dim..(row + 1) * in_dim], x);
        }
    });
}

/// Dot product of two f32 slices of equal length.
pub fn dot_f32(a: &[f32], b: &[f32]) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if super::has_avx2_fma() {
            // SAFETY: the features this function is compiled for were just
            // detected; it only reads the two slices.
            return unsafe { dot_f32_avx2(a, b) };
        }
    }
    dot_f32_portable(a, b)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn dot_f32_avx2(a: &[f32], b: &[f32]) -> f32 {
    dot_f32_portable(a, b)
}

/// Eight independent accumulators: vectorises, and with FMA enabled the
/// multiply-adds fuse (without it, plain multiply and add, never libm's
/// fmaf). Plain index loops, no iterator adapters: those are generic
/// functions that would be compiled apart, without the caller's target
/// features (the AVX2 wrappers below rely on everything here inlining).
#[inline(always)]
pub(crate) fn dot_f32_portable(a: &[f32], b: &[f32]) -> f32 {
    let n = a.len().min(b.len());
    let mut acc = [0f32; 8];
    for c in 0..n / 8 {
        let (x, y) = (&a[c * 8..c * 8 + 8], &b[c * 8..c * 8 + 8]);
        for i in 0..8 {
            acc[i] += x[i] * y[i];
        }
    }
    let mut tail = 0f32;
    for i in n / 8 * 8..n {
        tail += a[i] * b[i];
    }
    let mut total = 0f32;
    for v in acc {
        total += v;
    }
    total + tail
}

/// `y[m × n] = x[m × k] · W[n × k]ᵀ`: each pool thread multiplies its own
/// slice of W's rows with the gemm crate (single-threaded inside).
pub fn gemm_f32(x: &[f32], m: usize, k: usize, w: &[f32], n: usize, y: &mut [f32]) {
    assert!(
        x.len() >= m * k && w.len() >= n * k && y.len() >= m * n,
        "gemm_f32: buffers smaller than m={m} n={n} k={k}"
    );
    let out = OutPtr(y.as_mut_ptr());
    let job = |index: usize, threads: usize| {
        let cols = split_range(n, index, threads);
        if cols.is_empty() {
            return;
        }
        // SAFETY: the assert above guarantees every index the strides reach
        // is in bounds: x is m×k row-major (row stride k); the slice of w
        // from row cols.start is read as a k×|cols| matrix (column stride
        // k); y is m×n row-major and this thread writes only its columns
        // `cols`, disjoint from every other thread's. read_dst=false means
        // y's old contents are not read.
        unsafe {
            small_gemm(
                Product::plain(m, cols.len(), k),
                Operand::rows(out.at(cols.start), n as isize),
                Operand::rows(x.as_ptr(), k as isize),
                Operand::transposed(w.as_ptr().add(cols.start * k), k as isize),
            );
        }
    };
    SpinPool::global().run(&job);
}
