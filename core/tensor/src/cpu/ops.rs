//! Element-wise and row-wise kernels: RMSNorm, RoPE, softmax, SiLU.

use super::pool::{for_parts, split_range, SharedMut, SpinPool};

/// RMSNorm of each row of `x` (rows of `weight.len()` values) into `out`:
/// `out = x / sqrt(mean(x²) + eps) · weight`, accumulated in f32 as
/// transformers does.
pub fn rms_norm(x: &[f32], weight: &[f32], eps: f32, out: &mut [f32]) {
    let dim = weight.len();
    for (row, dst) in x.chunks_exact(dim).zip(out.chunks_exact_mut(dim)) {
        let mean_sq = row.iter().map(|v| v * v).sum::<f32>() / dim as f32;
        let inv = 1.0 / (mean_sq + eps).sqrt();
        for ((d, v), w) in dst.iter_mut().zip(row).zip(weight) {
            *d = w * (v * inv);
        }
    }
}

/// LayerNorm of each row of `x` into `out`: `(x − mean) / sqrt(var + eps) · weight + bias`,
/// rows split over the pool.
pub fn layer_norm(x: &[f32], weight: &[f32], bias: &[f32], eps: f32, out: &mut [f32]) {
    assert_eq!(x.len(), out.len(), "layer_norm: input and output differ in length");
    for_row_ranges(out, weight.len(), |range, out_part| {
        for (row, dst) in x[range].chunks_exact(weight.len()).zip(out_part.chunks_exact_mut(weight.len())) {
            layer_norm_row(row, weight, bias, eps, dst);
        }
    });
}

/// A transformer block's residual step: `sum += x`, then `x = LayerNorm(sum)`,
/// row by row in one pass split over the pool.
pub fn residual_layer_norm(sum: &mut [f32], x: &mut [f32], weight: &[f32], bias: &[f32], eps: f32) {
    assert_eq!(sum.len(), x.len(), "residual_layer_norm: buffers differ in length");
    let sums = SharedMut::new(sum);
    for_row_ranges(x, weight.len(), |range, x_part| {
        // SAFETY: `for_row_ranges` hands each thread a disjoint range, the
        // same for `sum` (equal length, asserted) as for `x`.
        let sum_part = unsafe { sums.part(range) };
        for (s, dst) in sum_part.chunks_exact_mut(weight.len()).zip(x_part.chunks_exact_mut(weight.len())) {
            add_in_place(s, dst);
            layer_norm_row(s, weight, bias, eps, dst);
        }
    });
}

/// Runs `body(range, &mut out[range])` over disjoint ranges of whole rows
/// (`dim` values each), one per pool thread.
fn for_row_ranges(out: &mut [f32], dim: usize, body: impl Fn(std::ops::Range<usize>, &mut [f32]) + Sync) {
    let rows = out.len() / dim;
    let shared = SharedMut::new(out);
    SpinPool::global().run(&|index, threads| {
        let r = split_range(rows, index, threads);
        let range = r.start * dim..r.end * dim;
        // SAFETY: split_range hands each thread a disjoint range of rows.
        let part = unsafe { shared.part(range.clone()) };
        body(range, part);
    });
}

/// LayerNorm of one row, its sums in eight lanes so they vectorise.
fn layer_norm_row(row: &[f32], weight: &[f32], bias: &[f32], eps: f32, dst: &mut [f32]) {
    let dim = row.len() as f32;
    let mean = lane_sum(row, |v| v) / dim;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / dim;
    let inv = 1.0 / (var + eps).sqrt();
    for (((d, v), w), b) in dst.iter_mut().zip(row).zip(weight).zip(bias) {
        *d = (v - mean) * inv * w + b;
    }
}

/// `Σ f(v)` over `values`, accumulated in eight interleaved lanes.
#[inline(always)]
fn lane_sum(values: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 8];
    let mut chunks = values.chunks_exact(8);
    for chunk in &mut chunks {
        for (lane, &v) in lanes.iter_mut().zip(chunk) {
            *lane += f(v);
        }
    }
    lanes.iter().sum::<f32>() + chunks.remainder().iter().map(|&v| f(v)).sum::<f32>()
}

/// Exact (erf-based) GELU in place, as BERT's `gelu`, split over the pool.
pub fn gelu_in_place(x: &mut [f32]) {
    let len = x.len();
    let shared = SharedMut::new(x);
    // SAFETY: for_parts hands each participant a disjoint range.
    for_parts(len, 0, |range| gelu_slice(unsafe { shared.part(range) }));
}

/// GELU over a slice on the calling thread (the bf16 gemm's epilogue).
pub(crate) fn gelu_slice(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::has_avx2_fma() {
            // SAFETY: the features were just detected; only `x` is touched.
            unsafe { gelu_avx2(x) };
            return;
        }
    }
    gelu_portable(x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_avx2(x: &mut [f32]) {
    gelu_portable(x);
}

#[inline(always)]
fn gelu_portable(x: &mut [f32]) {
    for v in x {
        *v = 0.5 * *v * (1.0 + erf_f32(*v * std::f32::consts::FRAC_1_SQRT_2));
    }
}

/// erf in f32 with fractional error below 1.2e-7 of erfc (the Chebyshev
/// fit of Numerical Recipes' `erfcc`); about 5× faster than [`erf`].
#[allow(clippy::excessive_precision)] // the published coefficients, kept as written
#[inline(always)]
pub fn erf_f32(x: f32) -> f32 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_2
        + t * (1.000_023_7
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98 + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let erfc = t * exp_fast(poly);
    let magnitude = 1.0 - erfc;
    magnitude.copysign(x)
}

/// The error function to about 1e-15 relative (W. J. Cody's rational
/// approximations, as in most libms), in f64.
#[allow(clippy::excessive_precision)] // the published coefficients, kept as written
pub fn erf(x: f64) -> f64 {
    if x.abs() < 0.5 {
        let t = x * x;
        let p =
            [3.209377589138469e3, 3.774852376853020e2, 1.138641541510502e2, 3.161123743870566, 1.857777061846032e-1];
        let q = [2.844236833439171e3, 1.282616526077372e3, 2.440246379344442e2, 2.360129095234412e1, 1.0];
        let num = (((p[4] * t + p[3]) * t + p[2]) * t + p[1]) * t + p[0];
        let den = (((q[4] * t + q[3]) * t + q[2]) * t + q[1]) * t + q[0];
        return x * num / den;
    }
    let sign = x.signum();
    1.0_f64.copysign(sign) - sign * erfc_abs(x.abs())
}

/// erfc(a) for a ≥ 0.5.
#[allow(clippy::excessive_precision)] // the published coefficients, kept as written
fn erfc_abs(a: f64) -> f64 {
    if a >= 6.0 {
        return 0.0;
    }
    if a < 4.0 {
        let p = [
            1.23033935479799725e3,
            2.05107837782607147e3,
            1.71204761263407058e3,
            8.81952221241769090e2,
            2.98635138197400131e2,
            6.61191906371416295e1,
            8.88314979438837594,
            5.64188496988670089e-1,
            2.15311535474403846e-8,
        ];
        let q = [
            1.23033935480374942e3,
            3.43936767414372164e3,
            4.36261909014324716e3,
            3.29079923573345963e3,
            1.62138957456669019e3,
            5.37181101862009858e2,
            1.17693950891312499e2,
            1.57449261107098347e1,
            1.0,
        ];
        let num = p.iter().rev().fold(0.0, |acc, c| acc * a + c);
        let den = q.iter().rev().fold(0.0, |acc, c| acc * a + c);
        return (-a * a).exp() * num / den;
    }
    let z = 1.0 / (a * a);
    let p = [
        -6.58749161529837803e-4,
        -1.60837851487422766e-2,
        -1.25781726111229246e-1,
        -3.60344899949804439e-1,
        -3.05326634961232344e-1,
        -1.63153871373020978e-2,
    ];
    let q = [
        2.33520497626869185e-3,
        6.05183413124413191e-2,
        5.27905102951428412e-1,
        1.87295284992346725,
        2.56852019228982242,
        1.0,
    ];
    let num = p.iter().rev().fold(0.0, |acc, c| acc * z + c);
    let den = q.iter().rev().fold(0.0, |acc, c| acc * z + c);
    let frac_1_sqrt_pi = 0.5641895835477563;
    (-a * a).exp() / a * (frac_1_sqrt_pi + z * num / den)
}

/// `x += y` element-wise.
pub fn add_in_place(x: &mut [f32], y: &[f32]) {
    x.iter_mut().zip(y).for_each(|(a, b)| *a += b);
}

/// `gate = silu(gate) · up`, the SwiGLU of a Llama MLP.
pub fn silu_mul(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let gates = SharedMut::new(&mut gate[..n]);
    for_parts(n, ELEMENTWISE_PARALLEL_MIN, |part| {
        // SAFETY: for_parts hands each participant a disjoint part.
        let gate = unsafe { gates.part(part.clone()) };
        let up = &up[part];
        #[cfg(target_arch = "x86_64")]
        {
            if super::has_avx2_fma() {
                // SAFETY: the features were just detected; only the slices are touched.
                unsafe { silu_mul_avx2(gate, up) };
                return;
            }
        }
        silu_mul_portable(gate, up);
    });
}

/// Values from which an element-wise op splits over the pool (a prompt's
/// or a training batch's activations; a decode step's stay on one thread).
pub(crate) const ELEMENTWISE_PARALLEL_MIN: usize = 1 << 15;

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn silu_mul_avx2(gate: &mut [f32], up: &[f32]) {
    silu_mul_portable(gate, up);
}

/// `exp_fast` keeps the loop vectorised (libm's `expf` is a call per value,
/// and this runs on every token of every layer).
#[inline(always)]
fn silu_mul_portable(gate: &mut [f32], up: &[f32]) {
    let n = gate.len().min(up.len());
    let (gate, up) = (&mut gate[..n], &up[..n]);
    for i in 0..n {
        let g = gate[i];
        gate[i] = g / (1.0 + exp_fast(-g)) * up[i];
    }
}

/// Numerically stable softmax of `x` in place.
pub fn softmax_in_place(x: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::has_avx512() {
            // SAFETY: the feature was just detected; only `x` is touched.
            unsafe { super::simd512::softmax(x) };
            return;
        }
        if super::has_avx2_fma() {
            // SAFETY: the features were just detected; the function only
            // touches `x`.
            unsafe { softmax_avx2(x) };
            return;
        }
    }
    softmax_portable(x);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_avx2(x: &mut [f32]) {
    softmax_portable(x);
}

/// Eight-lane maximum and sum, and the exponentials in a loop of their
/// own, so everything vectorises (a single running sum or `f32::max` would
/// keep each loop scalar); index loops so it all inlines into the AVX2 body.
#[inline(always)]
fn softmax_portable(x: &mut [f32]) {
    let n = x.len();
    let lanes = n / 8 * 8;
    let mut top = [f32::NEG_INFINITY; 8];
    for c in (0..lanes).step_by(8) {
        for i in 0..8 {
            top[i] = if x[c + i] > top[i] { x[c + i] } else { top[i] };
        }
    }
    let mut max = f32::NEG_INFINITY;
    for v in top.into_iter().chain(x[lanes..].iter().copied()) {
        max = if v > max { v } else { max };
    }
    for v in x.iter_mut() {
        *v = exp_fast(*v - max);
    }
    let mut sums = [0f32; 8];
    for c in (0..lanes).step_by(8) {
        for i in 0..8 {
            sums[i] += x[c + i];
        }
    }
    let mut sum = 0f32;
    for v in sums.into_iter().chain(x[lanes..].iter().copied()) {
        sum += v;
    }
    let inv = 1.0 / sum;
    for v in x.iter_mut() {
        *v *= inv;
    }
}

/// `e^x` to about 2e-7 relative error, in straight-line arithmetic so loops
/// over it vectorise: `x = n·ln 2 + r` (Cody–Waite, ln 2 split in two so `r`
/// is exact), `e^r` by its degree-6 Taylor polynomial on |r| ≤ ln2/2, and
/// `2^n` built in the exponent bits. Inputs are clamped to f32's range.
#[inline(always)]
pub fn exp_fast(x: f32) -> f32 {
    const ROUND: f32 = 12_582_912.0; // 1.5 · 2^23: adding it rounds to an integer
    const LN2_HI: f32 = 0.693_145_75; // ln 2 with the low bits zero, so n·LN2_HI is exact
    const LN2_LO: f32 = 1.428_606_8e-6;
    let x = x.clamp(-87.0, 88.0);
    let shifted = x * std::f32::consts::LOG2_E + ROUND;
    let n = shifted - ROUND;
    let r = (x - n * LN2_HI) - n * LN2_LO;
    let p = 1.0 + r * (1.0 + r * (0.5 + r * (1.0 / 6.0 + r * (1.0 / 24.0 + r * (1.0 / 120.0 + r * (1.0 / 720.0))))));
    // n as an integer read from the bits: `shifted` and ROUND share a binade
    // whose last place is 1, so their bit patterns differ by exactly n. (An
    // `as i32` cast would be saturating, which compilers do lane by lane.)
    let n_bits = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n_bits.wrapping_add(127) << 23)
}

/// Rotary position embedding tables in the Hugging Face layout: each head
/// vector is split in halves `(x₁, x₂)` rotated as
/// `(x₁cos − x₂sin, x₂cos + x₁sin)`.
#[derive(Debug, Clone)]
pub struct RopeTable {
    head_dim: usize,
    positions: usize,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

impl RopeTable {
    /// A table for `head_dim` covering positions `0..positions`, from the
    /// inverse frequencies (`head_dim / 2` of them). Angles are `pos · f` in
    /// f32, as transformers computes them.
    pub fn new(head_dim: usize, inv_freq: &[f32], positions: usize) -> RopeTable {
        assert_eq!(inv_freq.len() * 2, head_dim, "rope: need head_dim/2 inverse frequencies");
        let angles = || (0..positions).flat_map(|p| inv_freq.iter().map(move |f| p as f32 * f));
        RopeTable { head_dim, positions, cos: angles().map(f32::cos).collect(), sin: angles().map(f32::sin).collect() }
    }

    /// The standard inverse frequencies `1 / base^(2i/d)`, computed in f32.
    pub fn default_inv_freq(head_dim: usize, base: f32) -> Vec<f32> {
        (0..head_dim / 2).map(|i| 1.0 / base.powf((2 * i) as f32 / head_dim as f32)).collect()
    }

    /// Positions the table covers.
    pub fn positions(&self) -> usize {
        self.positions
    }

    /// Values per head.
    pub fn head_dim(&self) -> usize {
        self.head_dim
    }

    /// The cosines, `[positions, head_dim / 2]` (uploaded by the CUDA
    /// backend so that both devices rotate by the same values).
    pub fn cos_table(&self) -> &[f32] {
        &self.cos
    }

    /// The sines, laid out as [`RopeTable::cos_table`].
    pub fn sin_table(&self) -> &[f32] {
        &self.sin
    }

    /// Rotates `x` = `[tokens, n_heads · head_dim]` whose first token sits at
    /// position `start`. Panics if `start + tokens` exceeds [`Self::positions`];
    /// callers bound sequences by the context length first.
    pub fn apply(&self, x: &mut [f32], n_heads: usize, start: usize) {
        self.rotate(x, n_heads, start, 1.0);
    }

    /// The backward of [`RopeTable::apply`]: rotates by the opposite angles
    /// (a rotation's transpose is its inverse), turning the gradient of the
    /// rotated vectors into that of the unrotated ones.
    pub fn apply_inverse(&self, x: &mut [f32], n_heads: usize, start: usize) {
        self.rotate(x, n_heads, start, -1.0);
    }

    /// Rotates by `sign` times each position's angles.
    fn rotate(&self, x: &mut [f32], n_heads: usize, start: usize, sign: f32) {
        let (dim, half) = (self.head_dim, self.head_dim / 2);
        let tokens = x.len() / (n_heads * dim);
        assert!(start + tokens <= self.positions, "rope: position {} past table of {}", start + tokens, self.positions);
        for (t, token) in x.chunks_exact_mut(n_heads * dim).enumerate() {
            let cos = &self.cos[(start + t) * half..(start + t + 1) * half];
            let sin = &self.sin[(start + t) * half..(start + t + 1) * half];
            for head in token.chunks_exact_mut(dim) {
                let (x1, x2) = head.split_at_mut(half);
                for i in 0..half {
                    let (a, b, s) = (x1[i], x2[i], sign * sin[i]);
                    x1[i] = a * cos[i] - b * s;
                    x2[i] = b * cos[i] + a * s;
                }
            }
        }
    }
}
