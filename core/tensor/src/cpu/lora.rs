//! Per-row LoRA deltas for a batch whose rows use different adapters
//! (BGMV on the CPU): `delta[row] = B·(A·x[row])` for each group of rows
//! that share one adapter's projection, for several projections of one
//! input (q, k, v) in one fork-join. Each (group, row) item runs the shrink
//! (a dot product of length `in` per rank) and then the expand (the rank
//! rows of `Bᵀ` scaled and summed into the output, vectorised along the
//! output). Every row is computed by the same arithmetic whatever else is
//! in the batch, so a sequence's delta does not depend on its neighbours,
//! nor on how its prompt was split.
//!
//! The matrices keep the precision they were stored in (f32, f16, bf16):
//! an adapter saved in f16 is served from f16, half the bytes per step.

use super::pool::SpinPool;
use crate::{Result, TensorError};
use half::{bf16, f16};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A matrix of an adapter, in the precision it was stored in.
#[derive(Debug, Clone)]
pub enum LoraMatrix {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// IEEE half floats.
    F16(Vec<f16>),
    /// bfloat16.
    Bf16(Vec<bf16>),
}

impl LoraMatrix {
    fn len(&self) -> usize {
        match self {
            LoraMatrix::F32(v) => v.len(),
            LoraMatrix::F16(v) => v.len(),
            LoraMatrix::Bf16(v) => v.len(),
        }
    }

    fn element_bytes(&self) -> usize {
        match self {
            LoraMatrix::F32(_) => 4,
            LoraMatrix::F16(_) | LoraMatrix::Bf16(_) => 2,
        }
    }

    fn get(&self, i: usize) -> f32 {
        match self {
            LoraMatrix::F32(v) => v[i],
            LoraMatrix::F16(v) => v[i].to_f32(),
            LoraMatrix::Bf16(v) => v[i].to_f32(),
        }
    }

    /// The values as f32.
    pub fn to_f32(&self) -> Vec<f32> {
        (0..self.len()).map(|i| self.get(i)).collect()
    }

    /// The `[rows, cols]` matrix transposed, in the same precision.
    fn transposed(&self, rows: usize, cols: usize) -> LoraMatrix {
        fn t<T: Copy>(v: &[T], rows: usize, cols: usize) -> Vec<T> {
            (0..cols * rows).map(|i| v[(i % rows) * cols + i / rows]).collect()
        }
        match self {
            LoraMatrix::F32(v) => LoraMatrix::F32(t(v, rows, cols)),
            LoraMatrix::F16(v) => LoraMatrix::F16(t(v, rows, cols)),
            LoraMatrix::Bf16(v) => LoraMatrix::Bf16(t(v, rows, cols)),
        }
    }
}

/// One adapted projection: `A` (`[rank, in]`) and `B` kept transposed
/// (`Bᵀ`, `[rank, out]`) so the expand runs along the output.
#[derive(Debug, Clone)]
pub struct LoraPair {
    rank: usize,
    in_dim: usize,
    out_dim: usize,
    a: LoraMatrix,
    bt: LoraMatrix,
}

impl LoraPair {
    /// A pair from `a` (`[rank, in]`) and `b` (`[out, rank]`, as PEFT stores it).
    pub fn new(rank: usize, in_dim: usize, out_dim: usize, a: LoraMatrix, b: LoraMatrix) -> Result<LoraPair> {
        if rank == 0 || a.len() != rank * in_dim || b.len() != out_dim * rank {
            return Err(TensorError::Incompatible {
                op: "lora",
                detail: format!(
                    "A of {} and B of {} values for rank {rank}, {in_dim} in, {out_dim} out",
                    a.len(),
                    b.len()
                ),
            });
        }
        let bt = b.transposed(out_dim, rank);
        Ok(LoraPair { rank, in_dim, out_dim, a, bt })
    }

    /// The rank.
    pub fn rank(&self) -> usize {
        self.rank
    }

    /// Input features.
    pub fn in_dim(&self) -> usize {
        self.in_dim
    }

    /// Output features.
    pub fn out_dim(&self) -> usize {
        self.out_dim
    }

    /// Values held (A and B).
    pub fn parameters(&self) -> usize {
        self.a.len() + self.bt.len()
    }

    /// Bytes held.
    pub fn bytes(&self) -> usize {
        self.a.len() * self.a.element_bytes() + self.bt.len() * self.bt.element_bytes()
    }

    /// `A` as f32, `[rank, in]`.
    pub fn a_f32(&self) -> Vec<f32> {
        self.a.to_f32()
    }

    /// `B` as f32, `[out, rank]`.
    pub fn b_f32(&self) -> Vec<f32> {
        LoraMatrix::F32(self.bt.to_f32()).transposed(self.rank, self.out_dim).to_f32()
    }
}

/// Rows of a batch that use one adapter's projection, and which of the
/// call's outputs their deltas go to (several projections of the same
/// input, q, k and v say, share one call).
#[derive(Debug, Clone, Copy)]
pub struct LoraGroup<'a> {
    /// The projection's adapter matrices.
    pub pair: &'a LoraPair,
    /// Row indices into the batch.
    pub rows: &'a [usize],
    /// Index of the output (in the call's `outputs`) the deltas go to.
    pub output: usize,
}

/// Which implementation runs the deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoraKernel {
    /// Portable loops (the reference).
    Scalar,
    /// AVX2 + FMA + F16C.
    Avx2,
}

impl LoraKernel {
    /// The fastest this CPU runs.
    pub fn detect() -> LoraKernel {
        #[cfg(target_arch = "x86_64")]
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c") {
            return LoraKernel::Avx2;
        }
        LoraKernel::Scalar
    }
}

/// [`lora_deltas_on`] with the CPU's fastest kernel.
pub fn lora_deltas(
    x: &[f32],
    rows: usize,
    groups: &[LoraGroup<'_>],
    outputs: &mut [&mut [f32]],
    low: &mut Vec<f32>,
) -> Result<()> {
    lora_deltas_on(LoraKernel::detect(), x, rows, groups, outputs, low)
}

/// For every row of every group, `outputs[group.output][row] = B·(A·x[row])`
/// (`x` holds `rows` rows of `in` values, each output `rows` rows of its
/// projection's width; rows in no group are left as they are). A row may
/// appear in one group per output. `low` is scratch for the rank-sized
/// intermediates. One fork-join for the whole call: each (group, row) item
/// runs its shrink, then its expand.
pub fn lora_deltas_on(
    kernel: LoraKernel,
    x: &[f32],
    rows: usize,
    groups: &[LoraGroup<'_>],
    outputs: &mut [&mut [f32]],
    low: &mut Vec<f32>,
) -> Result<()> {
    let Some(first) = groups.first() else { return Ok(()) };
    // Never run AVX2 code on a CPU without it, whatever was asked.
    let kernel = if kernel == LoraKernel::Avx2 && LoraKernel::detect() != LoraKernel::Avx2 {
        LoraKernel::Scalar
    } else {
        kernel
    };
    let in_dim = first.pair.in_dim;
    let fits = |g: &LoraGroup<'_>| {
        g.pair.in_dim == in_dim
            && outputs.get(g.output).is_some_and(|o| o.len() == rows * g.pair.out_dim)
            && g.rows.iter().all(|&r| r < rows)
    };
    if x.len() != rows * in_dim || !groups.iter().all(fits) {
        return Err(TensorError::Incompatible {
            op: "lora",
            detail: format!("x of {} values for {rows} rows of {in_dim}, or an output of the wrong size", x.len()),
        });
    }
    // One item per group and block of up to ROW_BLOCK of its rows (their
    // adapter matrices read once for the block); where each item's
    // intermediates start in `low`.
    let mut items = Vec::new();
    let mut low_len = 0;
    for (g, group) in groups.iter().enumerate() {
        for first in (0..group.rows.len()).step_by(ROW_BLOCK) {
            let count = (group.rows.len() - first).min(ROW_BLOCK);
            items.push(Item { group: g, first, count, low: low_len });
            low_len += count * group.pair.rank;
        }
    }
    low.clear();
    low.resize(low_len, 0.0);
    let low_out = Out(low.as_mut_ptr());
    let outs: Vec<Out> = outputs.iter_mut().map(|o| Out(o.as_mut_ptr())).collect();
    let work = groups.iter().map(|g| g.rows.len() * g.pair.parameters()).sum::<usize>() / items.len().max(1);
    let item = |i: usize| {
        let Item { group: g, first, count, low: at } = items[i];
        let group = &groups[g];
        let (rank, out_dim) = (group.pair.rank, group.pair.out_dim);
        let (low_out, out) = (low_out, outs[group.output]);
        let mut inputs: [&[f32]; ROW_BLOCK] = [&[]; ROW_BLOCK];
        let mut coefficients: [&mut [f32]; ROW_BLOCK] = Default::default();
        let mut targets: [&mut [f32]; ROW_BLOCK] = Default::default();
        for b in 0..count {
            let row = group.rows[first + b];
            inputs[b] = &x[row * in_dim..(row + 1) * in_dim];
            // SAFETY: `at + b·rank..` is this item's own part of `low` (the
            // offsets above never overlap); row `row` of output
            // `group.output` is written by this item only (a row is in one
            // group per output), and both lie inside their buffers
            // (checked by `fits`).
            unsafe {
                coefficients[b] = std::slice::from_raw_parts_mut(low_out.0.add(at + b * rank), rank);
                targets[b] = std::slice::from_raw_parts_mut(out.0.add(row * out_dim), out_dim);
            }
        }
        shrink_rows(kernel, &group.pair.a, in_dim, &inputs[..count], &mut coefficients[..count]);
        expand_rows(kernel, &group.pair.bt, out_dim, &coefficients[..count], &mut targets[..count]);
    };
    for_each_item(items.len(), work, &item);
    Ok(())
}

/// Rows of one group that one item handles together (the adapter's
/// matrices are read once for them). Each row's arithmetic is the same
/// whatever block it is in.
const ROW_BLOCK: usize = 4;

/// One unit of work: rows `first..first + count` of group `group`, their
/// intermediates at `low`.
#[derive(Clone, Copy)]
struct Item {
    group: usize,
    first: usize,
    count: usize,
    low: usize,
}

/// Work below this many multiply-adds runs on the caller alone.
const SERIAL_WORK: usize = 1 << 15;

/// Runs `item(i)` for every `i < count`, on the pool when the work is
/// large enough; items are claimed one at a time from a shared counter.
fn for_each_item(count: usize, work_per_item: usize, item: &(dyn Fn(usize) + Sync)) {
    if count * work_per_item < SERIAL_WORK || count == 1 || SpinPool::global().threads() == 1 {
        (0..count).for_each(item);
        return;
    }
    let next = AtomicUsize::new(0);
    SpinPool::global().run(&|_, _| loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= count {
            break;
        }
        item(i);
    });
}

/// A shared output written at disjoint indices by the items of one job.
#[derive(Clone, Copy)]
struct Out(*mut f32);
// SAFETY: each item writes only its own disjoint range (see the caller),
// and the job finishes before the buffer is used again.
unsafe impl Sync for Out {}
// SAFETY: as above.
unsafe impl Send for Out {}

/// `low[b][j] = A[j] · inputs[b]` for each row `b` of a block.
fn shrink_rows(kernel: LoraKernel, a: &LoraMatrix, in_dim: usize, inputs: &[&[f32]], low: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if kernel == LoraKernel::Avx2 {
        // SAFETY: Avx2 is only run where detect() found AVX2, FMA and F16C
        // (lora_deltas_on falls back otherwise); every access is a checked
        // slice of `a`, the inputs or `low`.
        unsafe {
            match a {
                LoraMatrix::F32(m) => avx2::shrink_f32(m, in_dim, inputs, low),
                LoraMatrix::F16(m) => avx2::shrink_f16(m, in_dim, inputs, low),
                LoraMatrix::Bf16(m) => avx2::shrink_bf16(m, in_dim, inputs, low),
            }
        }
        return;
    }
    let _ = kernel;
    for (input, low) in inputs.iter().zip(low.iter_mut()) {
        for (j, c) in low.iter_mut().enumerate() {
            let mut sum = 0f32;
            for (k, &v) in input.iter().enumerate() {
                sum += a.get(j * in_dim + k) * v;
            }
            *c = sum;
        }
    }
}

/// `out[b][c] = Σ_j low[b][j] · Bᵀ[j][c]` for each row `b` of a block.
fn expand_rows(kernel: LoraKernel, bt: &LoraMatrix, out_dim: usize, low: &[&mut [f32]], out: &mut [&mut [f32]]) {
    #[cfg(target_arch = "x86_64")]
    if kernel == LoraKernel::Avx2 {
        // SAFETY: as in `shrink_rows`.
        unsafe {
            match bt {
                LoraMatrix::F32(m) => avx2::expand_f32(m, out_dim, low, out),
                LoraMatrix::F16(m) => avx2::expand_f16(m, out_dim, low, out),
                LoraMatrix::Bf16(m) => avx2::expand_bf16(m, out_dim, low, out),
            }
        }
        return;
    }
    let _ = kernel;
    for (coefficients, out) in low.iter().zip(out.iter_mut()) {
        out.iter_mut().for_each(|o| *o = 0.0);
        for (j, &c) in coefficients.iter().enumerate() {
            for (k, o) in out.iter_mut().enumerate() {
                *o += c * bt.get(j * out_dim + k);
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    //! The AVX2 + FMA + F16C loops: 8 values per step, two accumulators
    //! for the dot products; tails in scalar code (the same for every row).

    use half::{bf16, f16};
    use std::arch::x86_64::*;

    /// Eight f32 from eight stored values.
    trait Load8: Copy {
        /// # Safety
        /// `p` points at 8 readable values; the CPU has AVX2 and F16C.
        unsafe fn load8(p: *const Self) -> __m256;
        fn value(self) -> f32;
    }

    impl Load8 for f32 {
        #[inline(always)]
        unsafe fn load8(p: *const f32) -> __m256 {
            // SAFETY: the caller's contract.
            unsafe { _mm256_loadu_ps(p) }
        }
        fn value(self) -> f32 {
            self
        }
    }

    impl Load8 for f16 {
        #[inline(always)]
        unsafe fn load8(p: *const f16) -> __m256 {
            // SAFETY: the caller's contract (16 readable bytes, F16C).
            unsafe { _mm256_cvtph_ps(_mm_loadu_si128(p as *const __m128i)) }
        }
        fn value(self) -> f32 {
            self.to_f32()
        }
    }

    impl Load8 for bf16 {
        #[inline(always)]
        unsafe fn load8(p: *const bf16) -> __m256 {
            // SAFETY: the caller's contract (16 readable bytes); a bf16 is
            // the top half of an f32.
            unsafe {
                let halves = _mm256_cvtepu16_epi32(_mm_loadu_si128(p as *const __m128i));
                _mm256_castsi256_ps(_mm256_slli_epi32(halves, 16))
            }
        }
        fn value(self) -> f32 {
            self.to_f32()
        }
    }

    /// Elements ahead of the expand's loads that are prefetched: its rank
    /// rows are read side by side, more streams than the hardware
    /// prefetcher follows well.
    const PREFETCH_AHEAD: usize = 64;

    /// Dot products of one row of `A` with up to four inputs: each row has
    /// its own two accumulators and the same sequence of operations as
    /// alone, the weights are loaded once for all.
    #[inline(always)]
    unsafe fn dots<T: Load8, const N: usize>(w: &[T], xs: [&[f32]; N]) -> [f32; N] {
        let n = w.len();
        let mut acc = [[_mm256_setzero_ps(); 2]; N];
        let mut k = 0;
        while k + 16 <= n {
            // SAFETY: k + 16 ≤ n, and every input holds n values (checked by
            // the caller's slicing).
            unsafe {
                let (w0, w1) = (T::load8(w.as_ptr().add(k)), T::load8(w.as_ptr().add(k + 8)));
                for r in 0..N {
                    acc[r][0] = _mm256_fmadd_ps(w0, _mm256_loadu_ps(xs[r].as_ptr().add(k)), acc[r][0]);
                    acc[r][1] = _mm256_fmadd_ps(w1, _mm256_loadu_ps(xs[r].as_ptr().add(k + 8)), acc[r][1]);
                }
            }
            k += 16;
        }
        let mut sums = [0f32; N];
        for r in 0..N {
            let mut lanes = [0f32; 8];
            // SAFETY: an 8-float store into an 8-float array.
            unsafe { _mm256_storeu_ps(lanes.as_mut_ptr(), _mm256_add_ps(acc[r][0], acc[r][1])) };
            let mut sum: f32 = lanes.iter().sum();
            for i in k..n {
                sum += w[i].value() * xs[r][i];
            }
            sums[r] = sum;
        }
        sums
    }

    #[inline(always)]
    unsafe fn shrink<T: Load8>(a: &[T], in_dim: usize, inputs: &[&[f32]], low: &mut [&mut [f32]]) {
        let rank = low.first().map_or(0, |l| l.len());
        for j in 0..rank {
            let w = &a[j * in_dim..(j + 1) * in_dim];
            let x = |b: usize| &inputs[b][..in_dim];
            // SAFETY: the caller's contract (features); slices checked above.
            unsafe {
                match inputs.len() {
                    1 => low[0][j] = dots(w, [x(0)])[0],
                    2 => dots(w, [x(0), x(1)]).iter().enumerate().for_each(|(b, &v)| low[b][j] = v),
                    3 => dots(w, [x(0), x(1), x(2)]).iter().enumerate().for_each(|(b, &v)| low[b][j] = v),
                    _ => dots(w, [x(0), x(1), x(2), x(3)]).iter().enumerate().for_each(|(b, &v)| low[b][j] = v),
                }
            }
        }
    }

    /// Eight columns of up to four rows' expand: `Σ_j low[r][j]·Bᵀ[j][c..c+8]`,
    /// each row accumulated in the same order as alone.
    #[inline(always)]
    unsafe fn expand8<T: Load8, const N: usize>(
        bt: &[T],
        out_dim: usize,
        c: usize,
        low: &[&mut [f32]],
        out: &mut [&mut [f32]],
    ) {
        let rank = low[0].len();
        let mut acc = [_mm256_setzero_ps(); N];
        for j in 0..rank {
            let row = &bt[j * out_dim..(j + 1) * out_dim];
            // SAFETY: c + 8 ≤ out_dim = row.len() (the caller's loop); a
            // prefetch of an address past the row is harmless (a hint, it
            // never faults), wrapping_add keeps the pointer arithmetic defined.
            let w = unsafe {
                _mm_prefetch::<_MM_HINT_T0>(row.as_ptr().wrapping_add(c + PREFETCH_AHEAD) as *const i8);
                T::load8(row.as_ptr().add(c))
            };
            for r in 0..N {
                acc[r] = _mm256_fmadd_ps(_mm256_set1_ps(low[r][j]), w, acc[r]);
            }
        }
        for r in 0..N {
            let target = &mut out[r][c..c + 8];
            // SAFETY: an 8-float store into an 8-float slice.
            unsafe { _mm256_storeu_ps(target.as_mut_ptr(), acc[r]) };
        }
    }

    #[inline(always)]
    unsafe fn expand<T: Load8>(bt: &[T], out_dim: usize, low: &[&mut [f32]], out: &mut [&mut [f32]]) {
        let mut c = 0;
        while c + 8 <= out_dim {
            // SAFETY: the caller's contract (features); c + 8 ≤ out_dim.
            unsafe {
                match low.len() {
                    1 => expand8::<T, 1>(bt, out_dim, c, low, out),
                    2 => expand8::<T, 2>(bt, out_dim, c, low, out),
                    3 => expand8::<T, 3>(bt, out_dim, c, low, out),
                    _ => expand8::<T, 4>(bt, out_dim, c, low, out),
                }
            }
            c += 8;
        }
        for (coefficients, out) in low.iter().zip(out.iter_mut()) {
            for (k, o) in out.iter_mut().enumerate().skip(c) {
                let mut sum = 0f32;
                for (j, &coefficient) in coefficients.iter().enumerate() {
                    sum += coefficient * bt[j * out_dim + k].value();
                }
                *o = sum;
            }
        }
    }

    macro_rules! entry_points {
        ($($shrink:ident, $expand:ident, $t:ty);*) => {$(
            /// # Safety
            /// The CPU has AVX2, FMA and F16C.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $shrink(a: &[$t], in_dim: usize, inputs: &[&[f32]], low: &mut [&mut [f32]]) {
                // SAFETY: features enabled above.
                unsafe { shrink(a, in_dim, inputs, low) }
            }

            /// # Safety
            /// The CPU has AVX2, FMA and F16C.
            #[target_feature(enable = "avx2,fma,f16c")]
            pub unsafe fn $expand(bt: &[$t], out_dim: usize, low: &[&mut [f32]], out: &mut [&mut [f32]]) {
                // SAFETY: features enabled above.
                unsafe { expand(bt, out_dim, low, out) }
            }
        )*};
    }

    entry_points!(shrink_f32, expand_f32, f32; shrink_f16, expand_f16, f16; shrink_bf16, expand_bf16, bf16);
}
