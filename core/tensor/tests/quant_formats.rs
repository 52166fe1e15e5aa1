//! The quantized formats: quantize→dequantize round trips within stated
//! bounds, dot products of every format on every path (scalar, SIMD,
//! pair-packed) against the exact reference, activation quantization, and
//! typed errors for bad lengths.

mod common;

use common::{quantized_formats, Rng};
use tailor_tensor::quant::packed::{block_sums, dot_packed, dot_packed_scalar, pack_rows, pair_activations, PackedDot};
use tailor_tensor::quant::{dequantize_row, quantize_activations, quantize_row, vec_dot, DotImpl};
use tailor_tensor::{DType, Tensor};

fn round_trip(dtype: DType, x: &[f32]) -> Vec<f32> {
    let mut bytes = Vec::new();
    quantize_row(dtype, x, &mut bytes).unwrap();
    assert_eq!(bytes.len(), dtype.bytes_for(x.len()).unwrap());
    let mut y = vec![0f32; x.len()];
    dequantize_row(dtype, &bytes, &mut y).unwrap();
    y
}

#[test]
fn round_trip_error_within_bounds() {
    let mut rng = Rng(1);
    let x = rng.vec(4096);
    for dtype in [DType::Q8_0, DType::Q4_0, DType::Q4_1, DType::Q5_0, DType::Q5_1] {
        let y = round_trip(dtype, &x);
        for (bx, by) in x.chunks(32).zip(y.chunks(32)) {
            let amax = bx.iter().fold(0f32, |m, v| m.max(v.abs()));
            let (lo, hi) = bx.iter().fold((f32::MAX, f32::MIN), |(l, h), &v| (l.min(v), h.max(v)));
            // One quantization step (half a step of rounding, plus f16
            // rounding of the scale and the one-sided clamp of q4_0).
            let step = match dtype {
                DType::Q8_0 => amax / 127.0 * 0.51 + 1e-3 * amax,
                DType::Q4_0 => amax / 8.0 * 1.01,
                DType::Q5_0 => amax / 16.0 * 1.01,
                DType::Q5_1 => (hi - lo) / 31.0 * 0.51 + 2e-3 * amax,
                _ => (hi - lo) / 15.0 * 0.51 + 2e-3 * amax,
            };
            for (a, b) in bx.iter().zip(by) {
                assert!((a - b).abs() <= step, "{dtype}: |{a} - {b}| > {step}");
            }
        }
    }
    // K-quants and iq4: relative RMS error (their per-sub-block scales are
    // themselves quantized). Measured on these normals (2026-12-03): q4_k
    // 0.077, q6_k 0.019, q2_k 0.32, q3_k 0.155, q5_k 0.038, iq4_nl 0.077,
    // iq4_xs 0.079.
    for (dtype, bound) in [
        (DType::Q4K, 0.12),
        (DType::Q6K, 0.04),
        (DType::Q8_0, 0.01),
        (DType::Q4_1, 0.1),
        (DType::Q2K, 0.36),
        (DType::Q3K, 0.18),
        (DType::Q5K, 0.045),
        (DType::IQ4NL, 0.09),
        (DType::IQ4XS, 0.09),
    ] {
        let y = round_trip(dtype, &x);
        let err: f32 = x.iter().zip(&y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>().sqrt();
        let norm: f32 = x.iter().map(|a| a * a).sum::<f32>().sqrt();
        println!("{dtype}: relative RMS error {:.4}", err / norm);
        assert!(err / norm < bound, "{dtype}: relative RMS error {} >= {bound}", err / norm);
    }
}

#[test]
fn round_trip_of_zeros_and_constants_is_exact() {
    for dtype in quantized_formats() {
        assert_eq!(round_trip(dtype, &[0.0; 256]), vec![0.0; 256], "{dtype}");
    }
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        assert_eq!(round_trip(dtype, &[1.5, -2.0, 0.25]), vec![1.5, -2.0, 0.25], "{dtype}");
    }
}

#[test]
fn bad_lengths_are_errors_not_panics() {
    let mut out = Vec::new();
    assert!(quantize_row(DType::Q4_0, &[0.0; 33], &mut out).is_err());
    let mut y = vec![0f32; 32];
    assert!(dequantize_row(DType::Q4_1, &[0u8; 19], &mut y).is_err());
    assert!(Tensor::from_bytes(vec![0; 10], DType::Q8_0, &[1, 32]).is_err());
    assert!(Tensor::from_f32(vec![0.0; 5], &[2, 3]).is_err());
}

/// Exact dot of dequantized weights with dequantized activations.
fn reference_dot(dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let mut w = vec![0f32; x.len()];
    dequantize_row(dtype, row, &mut w).unwrap();
    let mut acts = Vec::new();
    quantize_activations(x, &mut acts).unwrap();
    let xq: Vec<f32> = acts.iter().flat_map(|a| a.qs.iter().map(move |q| a.d * *q as f32)).collect();
    w.iter().zip(&xq).map(|(a, b)| (*a as f64 * *b as f64) as f32).sum()
}

#[test]
fn quantized_dot_matches_reference_on_every_path() {
    let mut rng = Rng(2);
    for dtype in quantized_formats() {
        for len in [256, 512, 2304] {
            let w = rng.vec(len);
            let x = rng.vec(len);
            let mut row = Vec::new();
            quantize_row(dtype, &w, &mut row).unwrap();
            let mut acts = Vec::new();
            quantize_activations(&x, &mut acts).unwrap();
            let want = reference_dot(dtype, &row, &x);
            let tol = 1e-4 * (len as f32).sqrt() * 4.0;
            for imp in [DotImpl::Scalar, DotImpl::detect()] {
                let got = vec_dot(dtype, &row, &acts, imp);
                assert!((got - want).abs() <= tol, "{dtype} len {len} {imp:?}: {got} vs {want}");
            }
            if let Some(packed) = pack_rows(dtype, &row, len) {
                let mut pairs = Vec::new();
                pair_activations(&acts, &mut pairs);
                let scalar = dot_packed_scalar(packed.kind, packed.row(0), &pairs);
                let mut sums = Vec::new();
                block_sums(&acts, &mut sums);
                let fast = dot_packed(PackedDot {
                    kind: packed.kind,
                    row: packed.row(0),
                    offsets: packed.row_offsets(0),
                    acts: &pairs,
                    sums: &sums,
                    pairs: pairs.len(),
                });
                assert!((scalar - want).abs() <= tol, "{dtype} packed scalar {scalar} vs {want}");
                assert!((fast - want).abs() <= tol, "{dtype} packed simd {fast} vs {want}");
            }
        }
    }
}

#[test]
fn simd_activation_quantization_matches_the_portable_code_exactly() {
    let mut rng = Rng(13);
    let mut x = rng.vec(32 * 40);
    x[5] = 0.0;
    x[64..96].fill(0.0); // an all-zero block
    for (i, v) in x[96..128].iter_mut().enumerate() {
        *v = (i as f32 - 16.0) * 0.5; // exact ties after scaling
    }
    let mut fast = Vec::new();
    tailor_tensor::quant::quantize_activations(&x, &mut fast).unwrap();
    for (block, got) in x.chunks_exact(32).zip(&fast) {
        let amax = block.iter().fold(0f32, |m, v| m.max(v.abs()));
        let d = amax / 127.0;
        let id = if d > 0.0 { 1.0 / d } else { 0.0 };
        let qs: Vec<i8> = block.iter().map(|v| (v * id).round_ties_even() as i8).collect();
        let sum: i32 = qs.iter().map(|&q| q as i32).sum();
        assert_eq!((got.d.to_bits(), &got.qs[..]), (d.to_bits(), &qs[..]));
        assert_eq!(got.s.to_bits(), (d * sum as f32).to_bits());
    }
}

#[test]
fn vec_dot_refuses_rows_that_do_not_match_the_activations() {
    let mut acts = Vec::new();
    quantize_activations(&[0.5f32; 64], &mut acts).unwrap();
    let mut row = Vec::new();
    quantize_row(DType::Q8_0, &[0.25f32; 64], &mut row).unwrap();
    for imp in [DotImpl::Scalar, DotImpl::detect()] {
        assert!(vec_dot(DType::Q8_0, &row, &acts, imp).is_finite());
        let short = std::panic::catch_unwind(|| vec_dot(DType::Q8_0, &row[..row.len() - 1], &acts, imp));
        assert!(short.is_err(), "{imp:?}: a short row was read");
        let unsupported = std::panic::catch_unwind(|| vec_dot(DType::F32, &[0u8; 256], &acts, imp));
        assert!(unsupported.is_err(), "{imp:?}: f32 has no quantized dot");
    }
}

#[test]
fn nf4_blocks_hold_the_normal_float_levels_and_round_trip_within_bounds() {
    use tailor_tensor::quant::NF4_LEVELS;
    // Values on the codebook (times the block's absmax) come back exactly.
    let absmax = 0.37f32;
    let on_grid: Vec<f32> = (0..64).map(|i| NF4_LEVELS[(i * 7) % 16] * absmax).collect();
    let mut with_max = on_grid.clone();
    with_max[0] = absmax; // the block's absmax is a level's value
    assert_eq!(round_trip(DType::NF4, &with_max), with_max);
    assert_eq!(DType::NF4.bytes_for(128).unwrap(), 72);
    // Normal data: error within half the widest gap between levels.
    let mut rng = Rng(5);
    let x = rng.vec(64 * 16);
    let y = round_trip(DType::NF4, &x);
    for (block_x, block_y) in x.chunks(64).zip(y.chunks(64)) {
        let absmax = block_x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in block_x.iter().zip(block_y) {
            assert!((a - b).abs() <= 0.1521 * absmax + 1e-6, "{a} → {b} (absmax {absmax})");
        }
    }
    assert_eq!(DType::NF4.ggml_id(), None);
    assert_eq!("nf4".parse::<DType>().unwrap(), DType::NF4);
}

#[test]
fn nf4_dq_blocks_keep_nf4_levels_under_an_eight_bit_scale_at_nearly_nf4_error() {
    use tailor_tensor::quant::NF4_LEVELS;
    assert_eq!(DType::NF4DQ.bytes_for(128).unwrap(), 66);
    // A scale that is a power of two is a code's exact value: values on
    // the codebook come back exactly.
    let on_grid: Vec<f32> = (0..64).map(|i| NF4_LEVELS[(i * 5) % 16] * 0.25).collect();
    assert_eq!(round_trip(DType::NF4DQ, &on_grid), on_grid);
    assert_eq!(round_trip(DType::NF4DQ, &[0.0; 64]), vec![0.0; 64]);
    // Normal data: the scale is rounded up by less than one step of
    // 2^(1/16), so the error bound is nf4's widened by that step, and the
    // RMS error stays within 4 % of nf4's.
    let mut rng = Rng(9);
    let x: Vec<f32> = rng.vec(64 * 64).iter().map(|v| v * 0.02).collect();
    let (y_dq, y_nf4) = (round_trip(DType::NF4DQ, &x), round_trip(DType::NF4, &x));
    let step = 2f32.powf(1.0 / 16.0);
    for (block_x, block_y) in x.chunks(64).zip(y_dq.chunks(64)) {
        let absmax = block_x.iter().fold(0f32, |m, v| m.max(v.abs()));
        for (a, b) in block_x.iter().zip(block_y) {
            assert!((a - b).abs() <= 0.1521 * absmax * step + 1e-7, "{a} → {b} (absmax {absmax})");
        }
    }
    let rms = |y: &[f32]| (x.iter().zip(y).map(|(a, b)| (a - b) * (a - b)).sum::<f32>() / x.len() as f32).sqrt();
    let (rms_dq, rms_nf4) = (rms(&y_dq), rms(&y_nf4));
    assert!(rms_dq <= 1.04 * rms_nf4, "nf4_dq RMS error {rms_dq} against nf4's {rms_nf4}");
    // Past the code's top (16) the block saturates at ±16 instead of failing.
    let mut huge = vec![0f32; 64];
    huge[3] = 40.0;
    huge[9] = -40.0;
    let y = round_trip(DType::NF4DQ, &huge);
    assert_eq!((y[3], y[9]), (16.0, -16.0));
    assert_eq!(DType::NF4DQ.ggml_id(), None);
    assert_eq!("nf4_dq".parse::<DType>().unwrap(), DType::NF4DQ);
}
