//! The backward of the decoder's ops, one function per op (llm.c style):
//! each takes what its forward kept and the gradient of its output, and
//! adds the gradients of its inputs (and, where it has them, of its
//! weights). Training composes them in reverse layer order; serving never
//! calls them. Gradients accumulate (`+=`) so that an activation used by
//! several ops (the residual stream, the input of q, k and v) sums its
//! contributions without temporaries.

use super::attention::AttentionShape;
use super::bf16::{round_row, Bf16Rows};
use super::input_grad::{self, input_grad, OutputGrad};
use super::ops::ELEMENTWISE_PARALLEL_MIN;
use super::pool::{for_parts, split_range, SharedMut, SpinPool};
use super::small_gemm::{small_gemm, Operand, Product};
use super::token_lanes::{self, Words};
use crate::quant::dequantize_row;
use crate::{DType, Result, Tensor, TensorError};

/// A read-only matrix operand: `rows × cols`, stored row-major with
/// `stride` values per stored row, or stored as its transpose when
/// `transposed`.
#[derive(Clone, Copy)]
pub struct MatRef<'a> {
    values: &'a [f32],
    rows: usize,
    cols: usize,
    /// Values from one stored row to the next.
    stride: usize,
    transposed: bool,
}

impl<'a> MatRef<'a> {
    /// A `rows × cols` row-major matrix; panics if `values` is shorter.
    pub fn new(values: &'a [f32], rows: usize, cols: usize) -> MatRef<'a> {
        assert!(values.len() >= rows * cols, "matrix of {rows}×{cols} over {} values", values.len());
        MatRef { values, rows, cols, stride: cols, transposed: false }
    }

    /// Columns `range` of this (untransposed) matrix, as a matrix (no copy).
    pub fn columns(self, range: std::ops::Range<usize>) -> MatRef<'a> {
        assert!(!self.transposed && range.start <= range.end && range.end <= self.cols, "columns {range:?}");
        MatRef { values: &self.values[range.start..], cols: range.len(), ..self }
    }

    /// The transpose of this matrix (no copy).
    pub fn t(self) -> MatRef<'a> {
        MatRef { rows: self.cols, cols: self.rows, transposed: !self.transposed, ..self }
    }

    /// (column stride, row stride) of the logical matrix in `values`.
    fn strides(&self) -> (isize, isize) {
        match self.transposed {
            false => (1, self.stride as isize),
            true => (self.stride as isize, 1),
        }
    }
}

/// `c = beta·c + alpha·a·b` with `c` row-major `a.rows × b.cols`, split
/// over the pool along `c`'s longer side (the gemm crate inside each part).
/// `beta` is 0 (overwrite) or 1 (accumulate).
pub fn matmul(c: &mut [f32], a: MatRef<'_>, b: MatRef<'_>, alpha: f32, accumulate: bool) {
    let (m, n, k) = (a.rows, b.cols, a.cols);
    assert_eq!(b.rows, k, "matmul: inner dimensions {k} and {}", b.rows);
    assert!(c.len() >= m * n, "matmul: output of {} values for {m}×{n}", c.len());
    let (a_cs, a_rs) = a.strides();
    let (b_cs, b_rs) = b.strides();
    let out = SharedOut(c.as_mut_ptr());
    let by_rows = m >= n;
    let job = |index: usize, threads: usize| {
        let part = split_range(if by_rows { m } else { n }, index, threads);
        if part.is_empty() {
            return;
        }
        let (rows, cols) = if by_rows { (part.clone(), 0..n) } else { (0..m, part.clone()) };
        // SAFETY: MatRef's constructors checked that a and b hold their
        // rows at their stride (a column view only narrows a row), and the
        // strides address exactly those; c holds m × n values (assert
        // above) and this thread writes only its own rows or columns, disjoint
        // from every other thread's, while `c` stays borrowed until `run`
        // returns.
        unsafe {
            small_gemm(
                Product { m: rows.len(), n: cols.len(), k, accumulate, scale: alpha },
                Operand::rows(out.ptr().add(rows.start * n + cols.start), n as isize),
                Operand {
                    at: a.values.as_ptr().offset(rows.start as isize * a_rs),
                    col_stride: a_cs,
                    row_stride: a_rs,
                },
                Operand {
                    at: b.values.as_ptr().offset(cols.start as isize * b_cs),
                    col_stride: b_cs,
                    row_stride: b_rs,
                },
            );
        }
    };
    if m * n * k < 32 * 1024 {
        job(0, 1);
    } else {
        SpinPool::global().run(&job);
    }
}

/// A pointer to an output the pool's threads write in disjoint parts.
struct SharedOut(*mut f32);
// SAFETY: each thread writes a disjoint part of the buffer (see users).
unsafe impl Sync for SharedOut {}

impl SharedOut {
    /// The pointer (a method, so closures capture the whole wrapper).
    fn ptr(&self) -> *mut f32 {
        self.0
    }
}

/// Rows of a non-f32 weight dequantized per piece of [`linear_backward_input`]
/// (and of the training forward, `linear_many_train`): bounds their scratch
/// (an lm_head of 49,152 rows never exists in f32).
const DEQUANT_ROWS: usize = 2048;

/// The precision training multiplies a frozen block-quantized weight in
/// (QLoRA's base): its rows are dequantized a piece at a time, to f32 for
/// the f32 kernels, or to bf16 for `vdpbf16ps` against inputs (forward)
/// and output gradients (backward) rounded to bf16, as bitsandbytes' QLoRA
/// with a bf16 compute dtype multiplies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BlockCompute {
    /// Pieces in f32.
    F32,
    /// Pieces in bf16, on a CPU with AVX-512 BF16 (elsewhere: as [`BlockCompute::F32`]).
    Bf16,
}

impl BlockCompute {
    /// bf16 where this CPU has the bf16 training kernels (AVX-512 BF16), f32 elsewhere.
    pub fn best() -> BlockCompute {
        match token_lanes::supported(Words::Bf16Pairs) && input_grad::supported(Words::Bf16Pairs) {
            true => BlockCompute::Bf16,
            false => BlockCompute::F32,
        }
    }

    /// The words `w`'s pieces are dequantized to: bf16 pairs when chosen,
    /// supported and its rows hold whole pairs.
    pub(crate) fn words_for(self, w: &Tensor) -> Words {
        let pairs = w.row_len().is_multiple_of(2);
        match self == BlockCompute::Bf16 && pairs && BlockCompute::best() == BlockCompute::Bf16 {
            true => Words::Bf16Pairs,
            false => Words::F32,
        }
    }
}

impl Default for BlockCompute {
    fn default() -> BlockCompute {
        BlockCompute::best()
    }
}

/// Reusable buffers for [`linear_backward_input`].
#[derive(Default)]
pub struct BackwardScratch {
    /// Dequantized weight rows, as words of [`BackwardScratch::block_compute`].
    pieces: Vec<u32>,
    /// The output gradient rounded to bf16 (bf16 weights on AVX-512 BF16).
    rounded: Bf16Rows,
    /// The precision block-quantized weights are multiplied in.
    pub block_compute: BlockCompute,
}

/// `dx += dy·W`: the input gradient of `y = x·Wᵀ`, for `tokens` rows;
/// `w` is `[out, in]` in any dtype. Dense f32 is used in place (on AVX-512
/// by `input_grad`, else the gemm); bf16 on a CPU with AVX-512 BF16 is
/// multiplied as stored against `dy` rounded to bf16 (as the forward
/// rounds its inputs; see `input_grad`); block formats are dequantized a
/// few thousand rows at a time, to the words of `scratch.block_compute`.
pub fn linear_backward_input(
    dy: &[f32],
    tokens: usize,
    w: &Tensor,
    dx: &mut [f32],
    scratch: &mut BackwardScratch,
) -> Result<()> {
    let (out_dim, in_dim) = (w.row_count(), w.row_len());
    if dy.len() != tokens * out_dim || dx.len() != tokens * in_dim {
        return Err(TensorError::Incompatible {
            op: "linear_backward_input",
            detail: format!("dy of {}, dx of {} values for {tokens} rows of {in_dim}→{out_dim}", dy.len(), dx.len()),
        });
    }
    if tokens == 0 {
        return Ok(());
    }
    let dense_f32 = w.dtype() == DType::F32 && w.packed().is_none();
    if dense_f32 && input_grad::supported(Words::F32) {
        input_grad(w.bytes(), in_dim, OutputGrad::F32 { dy, first: 0 }, dx);
        return Ok(());
    }
    if dense_f32 {
        let weights: &[f32] = bytemuck::cast_slice(w.bytes());
        matmul(dx, MatRef::new(dy, tokens, out_dim), MatRef::new(weights, out_dim, in_dim), 1.0, true);
        return Ok(());
    }
    if w.dtype() == DType::BF16 && input_grad::supported(Words::Bf16Pairs) {
        scratch.rounded.fill(dy, out_dim);
        input_grad(w.bytes(), in_dim, OutputGrad::Bf16(&scratch.rounded), dx);
        return Ok(());
    }
    let words = scratch.block_compute.words_for(w);
    let rounded = &mut scratch.rounded;
    for_dequantized_pieces(w, words, &mut scratch.pieces, |piece, rows| match words {
        Words::Bf16Pairs => {
            // The piece's columns of dy only: a whole lm_head's would be
            // tokens × vocabulary more words.
            rounded.fill_columns(dy, out_dim, rows);
            input_grad(piece, in_dim, OutputGrad::Bf16(rounded), dx)
        }
        Words::F32 if input_grad::supported(Words::F32) => {
            input_grad(piece, in_dim, OutputGrad::F32 { dy, first: rows.start }, dx)
        }
        Words::F32 => {
            let dy_part = MatRef::new(dy, tokens, out_dim).columns(rows.clone());
            matmul(dx, dy_part, MatRef::new(bytemuck::cast_slice(piece), rows.len(), in_dim), 1.0, true);
        }
    })
}

/// Calls `use_piece(bytes, rows)` for each piece of [`DEQUANT_ROWS`] rows
/// of `w`, dequantized into `pieces` as `words` (f32 values, or bf16
/// pairs: rows of `row_len / 2` words), so no copy of the whole matrix
/// exists. The pieces start on even rows.
pub(crate) fn for_dequantized_pieces(
    w: &Tensor,
    words: Words,
    pieces: &mut Vec<u32>,
    mut use_piece: impl FnMut(&[u8], std::ops::Range<usize>),
) -> Result<()> {
    const { assert!(DEQUANT_ROWS.is_multiple_of(2)) };
    let out_dim = w.row_count();
    let row_words = match words {
        Words::F32 => w.row_len(),
        Words::Bf16Pairs => w.row_len().div_ceil(2),
    };
    for start in (0..out_dim).step_by(DEQUANT_ROWS) {
        let end = (start + DEQUANT_ROWS).min(out_dim);
        dequantize_rows(w, start..end, words, pieces)?;
        use_piece(bytemuck::cast_slice(&pieces[..(end - start) * row_words]), start..end);
    }
    Ok(())
}

/// Rows `rows` of `w` dequantized into `out` (resized) as `words`, on the pool.
fn dequantize_rows(w: &Tensor, rows: std::ops::Range<usize>, words: Words, out: &mut Vec<u32>) -> Result<()> {
    let in_dim = w.row_len();
    let row_words = if words == Words::F32 { in_dim } else { in_dim.div_ceil(2) };
    out.resize(rows.len() * row_words, 0);
    let failed = std::sync::atomic::AtomicBool::new(false);
    let dst = SharedWords(out.as_mut_ptr());
    let first = rows.start;
    SpinPool::global().run(&|index, threads| {
        // bf16: each row dequantized to f32 here first, then rounded.
        let mut values = vec![0f32; if words == Words::F32 { 0 } else { in_dim }];
        for r in split_range(rows.len(), index, threads) {
            // SAFETY: row r of `out` (row_words words) is written by this thread only.
            let row = unsafe { std::slice::from_raw_parts_mut(dst.at(r * row_words), row_words) };
            let done = match words {
                Words::F32 => dequantize_row(w.dtype(), w.row_bytes(first + r), bytemuck::cast_slice_mut(row)),
                Words::Bf16Pairs => {
                    dequantize_row(w.dtype(), w.row_bytes(first + r), &mut values).map(|()| round_row(&values, row))
                }
            };
            if done.is_err() {
                failed.store(true, std::sync::atomic::Ordering::Relaxed);
            }
        }
    });
    match failed.into_inner() {
        false => Ok(()),
        true => Err(TensorError::Incompatible { op: "dequantize_rows", detail: "row not dequantizable".into() }),
    }
}

/// Words of a piece shared by the pool's threads, each writing its own rows.
struct SharedWords(*mut u32);
// SAFETY: threads write disjoint rows (split_range).
unsafe impl Sync for SharedWords {}

impl SharedWords {
    /// The word `offset` words in (a method, so closures capture the whole wrapper).
    fn at(&self, offset: usize) -> *mut u32 {
        self.0.wrapping_add(offset)
    }
}

/// `dw += dyᵀ·x`: the weight gradient of `y = x·Wᵀ` (`dw` is `[out, in]`, f32).
pub fn linear_backward_weight(dy: &[f32], x: &[f32], tokens: usize, dw: &mut [f32]) {
    let out_dim = dy.len() / tokens.max(1);
    let in_dim = x.len() / tokens.max(1);
    matmul(dw, MatRef::new(dy, tokens, out_dim).t(), MatRef::new(x, tokens, in_dim), 1.0, true);
}

/// The backward of a LoRA delta `y += s·(x·Aᵀ)·Bᵀ` on `tokens` rows, with
/// `A` `[r, in]` and `B` `[out, r]` in f32 (PEFT's layout): accumulates
/// `dA`, `dB` and `dx`. `low` is scratch for `x·Aᵀ` and its gradient.
pub struct LoraBackward<'a> {
    /// `A`, `[r, in]`.
    pub a: &'a [f32],
    /// `B`, `[out, r]`.
    pub b: &'a [f32],
    /// The rank.
    pub rank: usize,
    /// The scaling `s`.
    pub scaling: f32,
}

impl LoraBackward<'_> {
    /// Given the layer's input `x` and output gradient `dy`, adds to
    /// `da`, `db` and `dx`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        &self,
        x: &[f32],
        dy: &[f32],
        tokens: usize,
        da: &mut [f32],
        db: &mut [f32],
        dx: &mut [f32],
        low: &mut Vec<f32>,
    ) {
        let r = self.rank;
        let in_dim = self.a.len() / r;
        let out_dim = self.b.len() / r;
        low.resize(2 * tokens * r, 0.0);
        let (h, dh) = low.split_at_mut(tokens * r);
        let (a, b) = (MatRef::new(self.a, r, in_dim), MatRef::new(self.b, out_dim, r));
        let (x, dy) = (MatRef::new(x, tokens, in_dim), MatRef::new(dy, tokens, out_dim));
        matmul(h, x, a.t(), 1.0, false);
        matmul(db, dy.t(), MatRef::new(h, tokens, r), self.scaling, true);
        matmul(dh, dy, b, self.scaling, false);
        let dh = MatRef::new(dh, tokens, r);
        matmul(da, dh.t(), x, 1.0, true);
        matmul(dx, dh, a, 1.0, true);
    }
}

/// The backward of [`super::rms_norm`] on rows of `weight.len()` values:
/// `dx += ∂/∂x`, and `dweight += Σ_rows dy·x̂` when given.
pub fn rms_norm_backward(x: &[f32], weight: &[f32], eps: f32, dy: &[f32], dx: &mut [f32], dweight: Option<&mut [f32]>) {
    let dim = weight.len();
    let rows = dx.len() / dim.max(1);
    if let Some(dweight) = dweight {
        // The weight's gradient sums over rows: one thread, rows in order.
        rms_norm_backward_rows(x, weight, eps, dy, dx, Some(dweight));
        return;
    }
    let dxs = SharedMut::new(dx);
    for_parts(rows, ELEMENTWISE_PARALLEL_MIN / dim.max(1), |part| {
        let values = part.start * dim..part.end * dim;
        // SAFETY: for_parts hands each participant disjoint rows.
        let dx = unsafe { dxs.part(values.clone()) };
        rms_norm_backward_rows(&x[values.clone()], weight, eps, &dy[values], dx, None);
    });
}

/// [`rms_norm_backward`] on the given rows, in order.
fn rms_norm_backward_rows(
    x: &[f32],
    weight: &[f32],
    eps: f32,
    dy: &[f32],
    dx: &mut [f32],
    mut dweight: Option<&mut [f32]>,
) {
    let dim = weight.len();
    for ((row, grad), dst) in x.chunks_exact(dim).zip(dy.chunks_exact(dim)).zip(dx.chunks_exact_mut(dim)) {
        // Sums in f64: the residual stream has a few huge components, and
        // f32 sums over a row lose the small ones' share.
        let mean_sq = row.iter().map(|&v| v as f64 * v as f64).sum::<f64>() / dim as f64;
        let inv = 1.0 / (mean_sq + eps as f64).sqrt();
        // Σ (dy·w)·x̂ / dim, the term every input shares.
        let shared =
            row.iter().zip(grad).zip(weight).map(|((&v, &g), &w)| g as f64 * w as f64 * v as f64 * inv).sum::<f64>()
                / dim as f64;
        for (((d, &v), &g), &w) in dst.iter_mut().zip(row).zip(grad).zip(weight) {
            *d += (inv * (g as f64 * w as f64 - v as f64 * inv * shared)) as f32;
        }
        if let Some(dw) = dweight.as_deref_mut() {
            dw.iter_mut().zip(row).zip(grad).for_each(|((d, &v), &g)| *d += (g as f64 * v as f64 * inv) as f32);
        }
    }
}

/// The backward of `act = silu(gate)·up`: from the pre-activations and
/// `dact`, writes `dgate` and `dup` (overwriting).
pub fn silu_mul_backward(gate: &[f32], up: &[f32], dact: &[f32], dgate: &mut [f32], dup: &mut [f32]) {
    let n = dact.len();
    let (dgates, dups) = (SharedMut::new(&mut dgate[..n]), SharedMut::new(&mut dup[..n]));
    for_parts(n, ELEMENTWISE_PARALLEL_MIN, |part| {
        // SAFETY: for_parts hands each participant a disjoint part.
        let (dgate, dup) = unsafe { (dgates.part(part.clone()), dups.part(part.clone())) };
        let (gate, up, dact) = (&gate[part.clone()], &up[part.clone()], &dact[part]);
        for i in 0..dact.len() {
            let g = gate[i];
            // The forward's exponential (`silu_mul`), which also vectorizes.
            let sigmoid = 1.0 / (1.0 + super::exp_fast(-g));
            let silu = g * sigmoid;
            dup[i] = dact[i] * silu;
            dgate[i] = dact[i] * up[i] * sigmoid * (1.0 + g * (1.0 - sigmoid));
        }
    });
}

/// The backward of [`super::causal_attention`] over sequences packed back
/// to back (`lengths`; each starts at position 0 and attends only within
/// itself): `q` (after RoPE) and `dout` are `[tokens, n_head · head_dim]`,
/// `k` (after RoPE) and `v` `[tokens, n_kv_head · head_dim]`. The
/// probabilities are recomputed row by row from `q` and `k`, with the
/// forward's exponential. Overwrites `dq`, `dk`, `dv`. The pool's threads
/// claim (sequence, key/value head) items one by one; each item owns its
/// rows of `dk` and `dv` and its query heads' rows of `dq`.
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    shape: AttentionShape,
    lengths: &[usize],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    causal_attention_backward_on(AttentionBackwardKernel::Gemm, q, k, v, dout, shape, lengths, dq, dk, dv);
}

/// How [`causal_attention_backward`] computes each (sequence, head).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AttentionBackwardKernel {
    /// Row by row, key by key: the reference.
    Rows,
    /// Six small matrix products per head on the gemm crate (scores,
    /// `dP = dO·Vᵀ`, `dQ = dS·K`, `dK += dSᵀ·Q`, `dV += Pᵀ·dO`); the
    /// masked upper triangle is computed and discarded.
    Gemm,
}

/// [`causal_attention_backward`] with a chosen kernel (tests compare them).
#[allow(clippy::too_many_arguments)]
pub fn causal_attention_backward_on(
    kernel: AttentionBackwardKernel,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    dout: &[f32],
    shape: AttentionShape,
    lengths: &[usize],
    dq: &mut [f32],
    dk: &mut [f32],
    dv: &mut [f32],
) {
    let AttentionShape { n_head, n_kv_head, head_dim } = shape;
    let (q_stride, kv_stride) = (n_head * head_dim, n_kv_head * head_dim);
    let tokens: usize = lengths.iter().sum();
    assert!(
        q.len() == tokens * q_stride && dout.len() == q.len() && dq.len() == q.len(),
        "attention backward: query buffers differ"
    );
    assert!(
        k.len() == tokens * kv_stride && v.len() == k.len() && dk.len() == k.len() && dv.len() == k.len(),
        "attention backward: key/value buffers differ"
    );
    dq.fill(0.0);
    dk.fill(0.0);
    dv.fill(0.0);
    let starts: Vec<usize> = lengths.iter().scan(0, |at, &len| Some(std::mem::replace(at, *at + len))).collect();
    let longest = lengths.iter().copied().max().unwrap_or(0);
    let next_item = std::sync::atomic::AtomicUsize::new(0);
    let grads = AttentionGrads {
        dq: SharedOut(dq.as_mut_ptr()),
        dk: SharedOut(dk.as_mut_ptr()),
        dv: SharedOut(dv.as_mut_ptr()),
    };
    SpinPool::global().run(&|_, _| {
        let scratch_len = match kernel {
            AttentionBackwardKernel::Rows => 2 * longest,
            AttentionBackwardKernel::Gemm => 2 * longest * longest,
        };
        let mut scratch = vec![0f32; scratch_len];
        loop {
            let item = next_item.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if item >= lengths.len() * n_kv_head {
                break;
            }
            let (segment, kv_head) = (item / n_kv_head, item % n_kv_head);
            let sequence = Sequence { q, k, v, dout, shape, start: starts[segment], len: lengths[segment] };
            // SAFETY: items are claimed once each, and item (segment,
            // kv_head) writes only its segment's rows of dk and dv at
            // kv_head, and of dq at kv_head's query heads: disjoint from
            // every other item; the buffers hold `tokens` rows (asserted).
            unsafe {
                match kernel {
                    AttentionBackwardKernel::Rows => sequence.backward(kv_head, &grads, &mut scratch),
                    AttentionBackwardKernel::Gemm => sequence.backward_gemm(kv_head, &grads, &mut scratch),
                }
            };
        }
    });
}

/// Gradient outputs of the attention backward, written by items in
/// disjoint parts.
struct AttentionGrads {
    dq: SharedOut,
    dk: SharedOut,
    dv: SharedOut,
}

/// One packed sequence of the attention backward.
struct Sequence<'a> {
    q: &'a [f32],
    k: &'a [f32],
    v: &'a [f32],
    dout: &'a [f32],
    shape: AttentionShape,
    start: usize,
    len: usize,
}

impl Sequence<'_> {
    /// [`Sequence::backward`] with matrix products: per query head,
    /// `S = Q·Kᵀ/√d` (masked, softmax → P), `dP = dO·Vᵀ`,
    /// `dS = P∘(dP − rowsum(P∘dP))/√d`, `dQ = dS·K`, `dK += dSᵀ·Q`,
    /// `dV += Pᵀ·dO`. `scratch` holds two `len × len` matrices.
    ///
    /// # Safety
    /// As [`Sequence::backward`].
    unsafe fn backward_gemm(&self, kv_head: usize, grads: &AttentionGrads, scratch: &mut [f32]) {
        let AttentionShape { n_head, n_kv_head, head_dim } = self.shape;
        let (q_stride, kv_stride) = (n_head * head_dim, n_kv_head * head_dim);
        let (n, d) = (self.len, head_dim);
        let group = n_head / n_kv_head;
        let scale = 1.0 / (d as f32).sqrt();
        let (probs, dprobs) = scratch.split_at_mut(n * n);
        let kv_at = self.start * kv_stride + kv_head * d;
        let (k, v) = (self.k[kv_at..].as_ptr(), self.v[kv_at..].as_ptr());
        // SAFETY (every product below): operands are views into buffers
        // the caller checked hold `tokens` rows of their strides; this
        // item's n rows start at `start`, and the head's d columns at
        // its offset; outputs are this item's own rows (dq at `head`,
        // dk and dv at `kv_head`) or its scratch.
        for head in kv_head * group..(kv_head + 1) * group {
            let q_at = self.start * q_stride + head * d;
            let (q, dout) = (self.q[q_at..].as_ptr(), self.dout[q_at..].as_ptr());
            let nn = n as isize;
            // S = Q·Kᵀ·scale, then the causal softmax row by row.
            let (qs, kvs) = (q_stride as isize, kv_stride as isize);
            unsafe {
                small_gemm(
                    Product { scale, ..Product::plain(n, n, d) },
                    Operand::rows(probs.as_mut_ptr(), nn),
                    Operand::rows(q, qs),
                    Operand::transposed(k, kvs),
                )
            };
            for (i, row) in probs.chunks_exact_mut(n).enumerate() {
                let max = row[..=i].iter().copied().fold(f32::NEG_INFINITY, f32::max);
                let mut sum = 0f32;
                for p in &mut row[..=i] {
                    *p = super::exp_fast(*p - max);
                    sum += *p;
                }
                row[..=i].iter_mut().for_each(|p| *p /= sum);
                row[i + 1..].fill(0.0);
            }
            // dP = dO·Vᵀ; dS = P∘(dP − Σ_j P∘dP)·scale, in place of dP.
            unsafe {
                small_gemm(
                    Product::plain(n, n, d),
                    Operand::rows(dprobs.as_mut_ptr(), nn),
                    Operand::rows(dout, qs),
                    Operand::transposed(v, kvs),
                )
            };
            for (p_row, dp_row) in probs.chunks_exact(n).zip(dprobs.chunks_exact_mut(n)) {
                let shared: f32 = p_row.iter().zip(dp_row.iter()).map(|(p, dp)| p * dp).sum();
                dp_row.iter_mut().zip(p_row).for_each(|(dp, p)| *dp = p * (*dp - shared) * scale);
            }
            let (ds, p) = (dprobs.as_ptr(), probs.as_ptr());
            unsafe {
                // dQ = dS·K (this head's rows of dq).
                let adding = Product { accumulate: true, ..Product::plain(n, d, n) };
                small_gemm(
                    adding,
                    Operand::rows(grads.dq.ptr().add(q_at), qs),
                    Operand::rows(ds, nn),
                    Operand::rows(k, kvs),
                );
                // dK += dSᵀ·Q, dV += Pᵀ·dO (the group's heads add up).
                let (dk, dv) =
                    (Operand::rows(grads.dk.ptr().add(kv_at), kvs), Operand::rows(grads.dv.ptr().add(kv_at), kvs));
                small_gemm(adding, dk, Operand::transposed(ds, nn), Operand::rows(q, qs));
                small_gemm(adding, dv, Operand::transposed(p, nn), Operand::rows(dout, qs));
            }
        }
    }

    /// The backward of key/value head `kv_head` and its query heads.
    ///
    /// # Safety
    /// The caller must own this sequence's rows of `grads` at `kv_head`
    /// (and at its query heads) exclusively for the call.
    unsafe fn backward(&self, kv_head: usize, grads: &AttentionGrads, scratch: &mut [f32]) {
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_avx2_fma() {
                // SAFETY: the features were just detected; the rest as for
                // this function.
                unsafe { self.backward_avx2(kv_head, grads, scratch) };
                return;
            }
        }
        // SAFETY: as for this function.
        unsafe { self.backward_portable(kv_head, grads, scratch) }
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx2,fma")]
    unsafe fn backward_avx2(&self, kv_head: usize, grads: &AttentionGrads, scratch: &mut [f32]) {
        // SAFETY: as for `backward`.
        unsafe { self.backward_portable(kv_head, grads, scratch) }
    }

    /// Row by row: `p = softmax(q·kᵀ/√d)`, `dp_j = dout·v_j`,
    /// `ds_j = p_j (dp_j − Σ p·dp)`, then `dq += ds·k/√d`,
    /// `dk_j += ds_j·q/√d`, `dv_j += p_j·dout`.
    #[inline(always)]
    unsafe fn backward_portable(&self, kv_head: usize, grads: &AttentionGrads, scratch: &mut [f32]) {
        let AttentionShape { n_head, n_kv_head, head_dim } = self.shape;
        let (q_stride, kv_stride) = (n_head * head_dim, n_kv_head * head_dim);
        let group = n_head / n_kv_head;
        let scale = 1.0 / (head_dim as f32).sqrt();
        let (probs, dprobs) = scratch.split_at_mut(self.len);
        let kv_at = |t: usize| (self.start + t) * kv_stride + kv_head * head_dim;
        for head in kv_head * group..(kv_head + 1) * group {
            for i in 0..self.len {
                let q_at = (self.start + i) * q_stride + head * head_dim;
                let qi = &self.q[q_at..q_at + head_dim];
                let doi = &self.dout[q_at..q_at + head_dim];
                let mut max = f32::NEG_INFINITY;
                for (j, p) in probs[..=i].iter_mut().enumerate() {
                    *p = dot(qi, &self.k[kv_at(j)..kv_at(j) + head_dim]) * scale;
                    max = max.max(*p);
                }
                let mut sum = 0f32;
                for p in &mut probs[..=i] {
                    *p = super::exp_fast(*p - max);
                    sum += *p;
                }
                let mut shared = 0f32;
                for (j, (p, dp)) in probs[..=i].iter_mut().zip(&mut dprobs[..=i]).enumerate() {
                    *p /= sum;
                    *dp = dot(doi, &self.v[kv_at(j)..kv_at(j) + head_dim]);
                    shared += *p * *dp;
                }
                // SAFETY: row i of dq at `head` belongs to this item.
                let dqi = unsafe { head_slice(&grads.dq, q_at, head_dim) };
                for j in 0..=i {
                    let p = probs[j];
                    let ds = p * (dprobs[j] - shared) * scale;
                    let kj = &self.k[kv_at(j)..kv_at(j) + head_dim];
                    // SAFETY: row j of dk and dv at `kv_head` belongs to this item.
                    let (dkj, dvj) = unsafe {
                        (head_slice(&grads.dk, kv_at(j), head_dim), head_slice(&grads.dv, kv_at(j), head_dim))
                    };
                    dqi.iter_mut().zip(kj).for_each(|(d, k)| *d += ds * k);
                    dkj.iter_mut().zip(qi).for_each(|(d, q)| *d += ds * q);
                    dvj.iter_mut().zip(doi).for_each(|(d, o)| *d += p * o);
                }
            }
        }
    }
}

/// `len` values of a shared output from `offset`.
///
/// # Safety
/// The caller must own that range exclusively for the returned borrow, and
/// it must lie inside the buffer.
unsafe fn head_slice<'a>(ptr: &SharedOut, offset: usize, len: usize) -> &'a mut [f32] {
    std::slice::from_raw_parts_mut(ptr.ptr().add(offset), len)
}

/// A dot product of one head's vectors, in eight lanes so it vectorises.
#[inline(always)]
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut lanes = [0f32; 8];
    let (a_blocks, b_blocks) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = a_blocks.remainder().iter().zip(b_blocks.remainder()).map(|(x, y)| x * y).sum();
    for (x, y) in a_blocks.zip(b_blocks) {
        for l in 0..8 {
            lanes[l] += x[l] * y[l];
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// Lanes a row's maximum and sum of exponentials run in: fixed, so a
/// row's result never depends on the thread or the batch.
const SOFTMAX_LANES: usize = 16;

/// One row of [`softmax_cross_entropy`]: `-log softmax(row)[target]`,
/// and the row replaced by `scale·(softmax − onehot(target))`. One
/// exponential per logit (kept in place), summed in
/// [`SOFTMAX_LANES`] f64 partial sums the compiler can vectorize.
fn row_softmax_gradient(row: &mut [f32], target: usize, scale: f32) -> f64 {
    let mut maxima = [f32::NEG_INFINITY; SOFTMAX_LANES];
    let chunks = row.chunks_exact(SOFTMAX_LANES);
    let tail = chunks.remainder();
    for chunk in chunks {
        for (m, &v) in maxima.iter_mut().zip(chunk) {
            *m = m.max(v);
        }
    }
    let max = tail.iter().chain(&maxima).copied().fold(f32::NEG_INFINITY, f32::max);
    let target_logit = row[target];
    let mut sums = [0f64; SOFTMAX_LANES];
    let mut chunks = row.chunks_exact_mut(SOFTMAX_LANES);
    for chunk in &mut chunks {
        for (sum, v) in sums.iter_mut().zip(chunk.iter_mut()) {
            *v = super::exp_fast(*v - max);
            *sum += *v as f64;
        }
    }
    for (sum, v) in sums.iter_mut().zip(chunks.into_remainder()) {
        *v = super::exp_fast(*v - max);
        *sum += *v as f64;
    }
    let sum: f64 = sums.iter().sum();
    let factor = (scale as f64 / sum) as f32;
    row.iter_mut().for_each(|v| *v *= factor);
    row[target] -= scale;
    max as f64 + sum.ln() - target_logit as f64
}

/// Softmax cross-entropy over rows of `vocab` logits, in place: returns the
/// summed loss `Σ −log softmax(row)[target]` (in f64) and leaves
/// `scale·(softmax − onehot(target))` in each row, the gradient of
/// `scale · loss`. A row with a non-finite logit makes the loss NaN.
/// Rows split over the pool.
pub fn softmax_cross_entropy(logits: &mut [f32], vocab: usize, targets: &[u32], scale: f32) -> Result<f64> {
    if logits.len() != targets.len() * vocab || targets.iter().any(|&t| t as usize >= vocab) {
        return Err(TensorError::Incompatible {
            op: "softmax_cross_entropy",
            detail: format!("{} logits for {} targets over a vocabulary of {vocab}", logits.len(), targets.len()),
        });
    }
    let losses: Vec<std::sync::Mutex<f64>> = (0..SpinPool::global().threads()).map(|_| Default::default()).collect();
    let rows = SharedOut(logits.as_mut_ptr());
    SpinPool::global().run(&|index, threads| {
        let mut total = 0f64;
        for r in split_range(targets.len(), index, threads) {
            // SAFETY: row r is written by this thread only; the buffer holds
            // targets.len() × vocab values (checked above).
            let row = unsafe { head_slice(&rows, r * vocab, vocab) };
            if row.iter().any(|v| !v.is_finite()) {
                // A diverged forward: the loss says so (max and the clamped
                // exponential below would hide a NaN).
                total = f64::NAN;
                row.fill(f32::NAN);
                continue;
            }
            total += row_softmax_gradient(row, targets[r] as usize, scale);
        }
        *losses[index].lock().unwrap_or_else(|e| e.into_inner()) += total;
    });
    Ok(losses.into_iter().map(|m| m.into_inner().unwrap_or_else(|e| e.into_inner())).sum())
}
