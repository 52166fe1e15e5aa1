//! Dot products of f16 or bf16 weight rows, read as stored, with f32
//! activations: the decode path for half-precision models (Hugging Face
//! folders in bf16/f16, GGUF F16/BF16), which would otherwise dequantize
//! every matrix to f32 on every token.
//!
//! Each element widens to f32 in registers (F16C's `vcvtph2ps`; for bf16 a
//! 16-bit shift) and multiplies in f32, so the result is what the f32
//! kernel gives the dequantized row, up to summation order. The portable
//! code is the reference; the AVX2 path is chosen at run time.

use crate::DType;

/// Half-precision formats with a row dot product.
pub(crate) fn is_half(dtype: DType) -> bool {
    matches!(dtype, DType::F16 | DType::BF16)
}

/// `Σ row[i] · x[i]` for a row of `x.len()` `dtype` values (little-endian
/// bytes). Panics when `dtype` is not F16/BF16 or the lengths disagree.
pub(crate) fn dot_half(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    assert!(is_half(dtype) && row.len() == 2 * x.len(), "dot_half: {dtype:?} row of {} bytes", row.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_f16c_avx2() {
            // SAFETY: the features these functions are compiled for were
            // just detected; the assert above makes `row` exactly 2 bytes
            // per element of `x`, which is all they read.
            return unsafe {
                match dtype {
                    DType::F16 => dot_half_avx2::<false>(row, x),
                    _ => dot_half_avx2::<true>(row, x),
                }
            };
        }
    }
    dot_half_portable(dtype, row, x)
}

/// The reference: widen each element, eight running sums (as the f32 kernel).
pub(crate) fn dot_half_portable(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let widen = |i: usize| {
        let bits = u16::from_le_bytes([row[2 * i], row[2 * i + 1]]);
        match dtype {
            DType::F16 => half::f16::from_bits(bits).to_f32(),
            _ => half::bf16::from_bits(bits).to_f32(),
        }
    };
    let mut acc = [0f32; 8];
    let full = x.len() / 8 * 8;
    for start in (0..full).step_by(8) {
        for (lane, sum) in acc.iter_mut().enumerate() {
            *sum += widen(start + lane) * x[start + lane];
        }
    }
    let tail: f32 = (full..x.len()).map(|i| widen(i) * x[i]).sum();
    acc.iter().sum::<f32>() + tail
}

/// `out[i]` = element `i` of `row` as f32 (exact: every f16 and bf16 is an
/// f32): the prefill's dequantization of half-precision matrices, eight
/// elements per instruction where the CPU has AVX2 and F16C (the one at a
/// time conversion took a third of a 1B f16 prefill). Panics when `dtype`
/// is not F16/BF16 or the lengths disagree.
pub(crate) fn widen_half_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    assert!(is_half(dtype) && row.len() == 2 * out.len(), "widen_half_row: {dtype:?} row of {} bytes", row.len());
    #[cfg(target_arch = "x86_64")]
    {
        if has_f16c_avx2() {
            // SAFETY: the features were just detected; the assert makes
            // `row` exactly 2 bytes per element of `out`, which is all they
            // read and write.
            unsafe {
                match dtype {
                    DType::F16 => widen_avx2::<false>(row, out),
                    _ => widen_avx2::<true>(row, out),
                }
            }
            return;
        }
    }
    widen_portable(dtype, row, out);
}

/// The reference of [`widen_half_row`], element by element.
pub(crate) fn widen_portable(dtype: DType, row: &[u8], out: &mut [f32]) {
    for (value, bytes) in out.iter_mut().zip(row.chunks_exact(2)) {
        let bits = u16::from_le_bytes([bytes[0], bytes[1]]);
        *value = match dtype {
            DType::F16 => half::f16::from_bits(bits).to_f32(),
            _ => half::bf16::from_bits(bits).to_f32(),
        };
    }
}

/// Eight elements per step, then the tail by the reference.
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `row` holds `2 * out.len()` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn widen_avx2<const BF16: bool>(row: &[u8], out: &mut [f32]) {
    use std::arch::x86_64::*;
    let (n, w) = (out.len(), row.as_ptr());
    let mut i = 0;
    while i + 8 <= n {
        let values = widen8::<BF16>(w.add(2 * i));
        _mm256_storeu_ps(out.as_mut_ptr().add(i), values);
        i += 8;
    }
    let dtype = if BF16 { DType::BF16 } else { DType::F16 };
    widen_portable(dtype, &row[2 * i..], &mut out[i..]);
}

#[cfg(target_arch = "x86_64")]
fn has_f16c_avx2() -> bool {
    super::has_avx2_fma() && is_x86_feature_detected!("f16c")
}

/// True when [`dot_half`] takes its SIMD path on this CPU.
pub(crate) fn simd_supported() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        has_f16c_avx2()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Four independent 8-lane sums, 32 elements per step, then the tail;
/// `BF16` picks the format (f16 widens with F16C, bf16 is the high half of
/// its f32).
///
/// # Safety
/// The CPU has AVX2, FMA and F16C; `row` holds `2 * x.len()` bytes.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn dot_half_avx2<const BF16: bool>(row: &[u8], x: &[f32]) -> f32 {
    use std::arch::x86_64::*;
    let n = x.len();
    let (w, a) = (row.as_ptr(), x.as_ptr());
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut i = 0;
    // No software prefetch: with the matrix in 2 MiB pages (see
    // `Tensor::into_huge_pages`) a hint a kilobyte ahead made 1B f16
    // decode 6 % slower (16.0 vs 17.0 tok/s, alternating).
    while i + 32 <= n {
        for (k, sum) in acc.iter_mut().enumerate() {
            *sum = _mm256_fmadd_ps(widen8::<BF16>(w.add(2 * (i + 8 * k))), _mm256_loadu_ps(a.add(i + 8 * k)), *sum);
        }
        i += 32;
    }
    while i + 8 <= n {
        acc[0] = _mm256_fmadd_ps(widen8::<BF16>(w.add(2 * i)), _mm256_loadu_ps(a.add(i)), acc[0]);
        i += 8;
    }
    let dtype = if BF16 { DType::BF16 } else { DType::F16 };
    horizontal_sum(acc) + dot_half_portable(dtype, &row[2 * i..], &x[i..])
}

/// Eight f16 (or, with `BF16`, bf16) values at `p` as f32: F16C's
/// conversion, or bf16 as the high half of its f32 (also the AVX2 prefill
/// kernel's widening, `half_gemm`).
///
/// # Safety
/// The CPU has AVX2 and F16C; 16 bytes are readable at `p`.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
#[inline]
pub(super) unsafe fn widen8<const BF16: bool>(p: *const u8) -> std::arch::x86_64::__m256 {
    use std::arch::x86_64::*;
    let bits = _mm_loadu_si128(p as *const __m128i);
    if BF16 {
        _mm256_castsi256_ps(_mm256_slli_epi32::<16>(_mm256_cvtepu16_epi32(bits)))
    } else {
        _mm256_cvtph_ps(bits)
    }
}

/// The sum of four 8-lane accumulators.
///
/// # Safety
/// The CPU has AVX2.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn horizontal_sum(acc: [std::arch::x86_64::__m256; 4]) -> f32 {
    use std::arch::x86_64::*;
    let sum = _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]));
    let half = _mm_add_ps(_mm256_castps256_ps128(sum), _mm256_extractf128_ps::<1>(sum));
    let pairs = _mm_add_ps(half, _mm_movehl_ps(half, half));
    _mm_cvtss_f32(_mm_add_ss(pairs, _mm_movehdup_ps(pairs)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every f16 and every bf16 widens as the reference widens it (NaNs
    /// stay NaNs), in rows with tails of every length.
    #[test]
    fn widened_rows_equal_the_reference_for_every_value() {
        let row: Vec<u8> = (0..=u16::MAX).flat_map(u16::to_le_bytes).collect();
        for dtype in [DType::F16, DType::BF16] {
            for len in [65536, 65535, 13, 7] {
                let (mut fast, mut reference) = (vec![0f32; len], vec![0f32; len]);
                widen_half_row(dtype, &row[..2 * len], &mut fast);
                widen_portable(dtype, &row[..2 * len], &mut reference);
                for (i, (a, b)) in fast.iter().zip(&reference).enumerate() {
                    assert!(a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan()), "{dtype:?} {i:#06x}: {a} vs {b}");
                }
            }
        }
    }

    /// Rows of odd lengths (tails of every size) against the reference.
    #[test]
    fn simd_rows_match_the_reference() {
        for dtype in [DType::F16, DType::BF16] {
            for n in [1, 7, 8, 31, 32, 33, 100, 576, 1537] {
                let x: Vec<f32> = (0..n).map(|i| ((i * 37 % 101) as f32 - 50.0) / 25.0).collect();
                let values: Vec<f32> = (0..n).map(|i| ((i * 53 % 97) as f32 - 48.0) / 30.0).collect();
                let row: Vec<u8> = values
                    .iter()
                    .flat_map(|&v| match dtype {
                        DType::F16 => half::f16::from_f32(v).to_le_bytes(),
                        _ => half::bf16::from_f32(v).to_le_bytes(),
                    })
                    .collect();
                let reference = dot_half_portable(dtype, &row, &x);
                let exact: f64 = (0..n)
                    .map(|i| {
                        let bits = u16::from_le_bytes([row[2 * i], row[2 * i + 1]]);
                        let w = match dtype {
                            DType::F16 => half::f16::from_bits(bits).to_f64(),
                            _ => half::bf16::from_bits(bits).to_f64(),
                        };
                        w * x[i] as f64
                    })
                    .sum();
                let fast = dot_half(dtype, &row, &x);
                let scale = 1.0 + exact.abs();
                assert!(((reference as f64) - exact).abs() / scale < 1e-5, "{dtype:?} n={n}: {reference} vs {exact}");
                assert!(((fast as f64) - exact).abs() / scale < 1e-5, "{dtype:?} n={n}: {fast} vs {exact}");
            }
        }
    }
}
