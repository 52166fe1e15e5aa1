//! AVX-512 vector math shared by the kernels: `e^x`, GELU, softmax.

use std::arch::x86_64::*;

/// Numerically stable softmax of `x` in place, 16 lanes at a time, the
/// tail through masks.
///
/// # Safety
/// The CPU must have AVX-512F.
#[target_feature(enable = "avx512f,avx512vl")]
pub(super) unsafe fn softmax(x: &mut [f32]) {
    let n = x.len();
    let ptr = x.as_mut_ptr();
    let mask = |c: usize| if n - c >= 16 { u16::MAX } else { ((1u32 << (n - c)) - 1) as u16 };
    let mut top = _mm512_set1_ps(f32::NEG_INFINITY);
    for c in (0..n).step_by(16) {
        // SAFETY (this block and the two below): the mask keeps every
        // access to lanes c..min(c + 16, n), inside `x`.
        top = _mm512_max_ps(top, unsafe { _mm512_mask_loadu_ps(top, mask(c), ptr.add(c)) });
    }
    let max = _mm512_set1_ps(_mm512_reduce_max_ps(top));
    let mut sums = _mm512_setzero_ps();
    for c in (0..n).step_by(16) {
        // SAFETY: as above.
        unsafe {
            let e = exp(_mm512_sub_ps(_mm512_maskz_loadu_ps(mask(c), ptr.add(c)), max));
            _mm512_mask_storeu_ps(ptr.add(c), mask(c), e);
            sums = _mm512_mask_add_ps(sums, mask(c), sums, e);
        }
    }
    let inv = _mm512_set1_ps(1.0 / _mm512_reduce_add_ps(sums));
    for c in (0..n).step_by(16) {
        // SAFETY: as above.
        unsafe {
            let v = _mm512_maskz_loadu_ps(mask(c), ptr.add(c));
            _mm512_mask_storeu_ps(ptr.add(c), mask(c), _mm512_mul_ps(v, inv));
        }
    }
}

/// The exact GELU `x·Φ(x)`, with erf from Abramowitz & Stegun 7.1.26
/// (absolute error below 1.5e-7).
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
#[allow(clippy::excessive_precision)] // the published coefficients, kept as written
pub(super) fn gelu(x: __m512) -> __m512 {
    let z = _mm512_mul_ps(_mm512_abs_ps(x), _mm512_set1_ps(std::f32::consts::FRAC_1_SQRT_2));
    let d = _mm512_fmadd_ps(z, _mm512_set1_ps(0.327_591_1), _mm512_set1_ps(1.0));
    let estimate = _mm512_rcp14_ps(d);
    let t = _mm512_mul_ps(estimate, _mm512_fnmadd_ps(d, estimate, _mm512_set1_ps(2.0))); // one Newton step
    let mut poly = _mm512_set1_ps(1.061_405_429);
    for c in [-1.453_152_027, 1.421_413_741, -0.284_496_736, 0.254_829_592] {
        poly = _mm512_fmadd_ps(poly, t, _mm512_set1_ps(c));
    }
    let minus_z_squared = _mm512_mul_ps(_mm512_sub_ps(_mm512_setzero_ps(), z), z);
    let erfc = _mm512_mul_ps(_mm512_mul_ps(poly, t), exp(minus_z_squared));
    let half_x_erfc = _mm512_mul_ps(_mm512_mul_ps(_mm512_set1_ps(0.5), x), erfc);
    // x ≥ 0: x·(1 − erfc/2); x < 0: x·erfc/2.
    let negative = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(x, _mm512_setzero_ps());
    _mm512_mask_blend_ps(negative, _mm512_sub_ps(x, half_x_erfc), half_x_erfc)
}

/// `e^x` for x ≤ 0 to about 2e-7 relative, as `exp_fast`: `x = n·ln 2
/// + r`, a degree-6 polynomial for `e^r`, and `2^n` by `vscalefps`.
#[inline]
#[target_feature(enable = "avx512f,avx512vl")]
pub(super) fn exp(x: __m512) -> __m512 {
    let x = _mm512_max_ps(x, _mm512_set1_ps(-87.0));
    let scaled = _mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E));
    let n = _mm512_roundscale_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(scaled);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_145_75), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428_606_8e-6), r);
    let mut p = _mm512_set1_ps(1.0 / 720.0);
    for c in [1.0 / 120.0, 1.0 / 24.0, 1.0 / 6.0, 0.5, 1.0, 1.0] {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
    }
    _mm512_scalef_ps(p, n)
}
