//! The AVX-512 and AVX2 tile kernels against their scalar reference,
//! bit for bit, and the `vdpbf16ps` kernel against exact products.

use super::super::test_values::uniform;
use super::*;

/// The lanes' sum in the kernels' fixed order: halves added pairwise,
/// 16 → 8 → 4 → 2 → 1 (the reference's form of [`reduce_sixteen`] and
/// `reduce_eight`).
fn reduce_lanes(lanes: &[f32]) -> f32 {
    let mut v = lanes.to_vec();
    let mut width = v.len() / 2;
    while width > 0 {
        for i in 0..width {
            v[i] += v[i + width];
        }
        width /= 2;
    }
    v[0]
}

/// The reference of one (row, token) sum on `kernel`: a running FMA sum
/// per lane over the inputs in steps of its lane count, reduced as the
/// kernel does (the tests hold each kernel to it; CPUs with neither take
/// the panel gemm instead).
fn half_dot_reference(kernel: HalfKernel, dtype: DType, row: &[u8], x: &[f32]) -> f32 {
    let mut lanes = vec![0f32; kernel.lanes()];
    for (i, &input) in x.iter().enumerate() {
        let bits = u16::from_le_bytes([row[2 * i], row[2 * i + 1]]);
        let weight = match dtype {
            DType::BF16 => f32::from_bits((bits as u32) << 16),
            _ => half::f16::from_bits(bits).to_f32(),
        };
        let lane = i % lanes.len();
        lanes[lane] = weight.mul_add(input, lanes[lane]);
    }
    reduce_lanes(&lanes)
}

fn half_bytes(dtype: DType, values: &[f32]) -> Vec<u8> {
    values
        .iter()
        .flat_map(|&v| match dtype {
            DType::BF16 => half::bf16::from_f32(v).to_le_bytes(),
            _ => half::f16::from_f32(v).to_le_bytes(),
        })
        .collect()
}

/// Every tile shape (rows and tokens not multiples of the tile), each
/// result equal to the reference bit for bit, and each token's result
/// the same whatever the token count of the call: on every widening
/// kernel this CPU runs.
#[test]
fn every_result_equals_the_reference_whatever_the_token_count() {
    let kernels = HalfKernel::available();
    if kernels.is_empty() {
        eprintln!("half_gemm: this CPU has neither AVX-512 F nor AVX2 with F16C; no kernel was run");
    }
    let mut next = uniform(7u64);
    for kernel in kernels {
        for dtype in [DType::F16, DType::BF16] {
            for (rows, in_dim, tokens) in
                [(1, 16, 1), (7, 48, 13), (19, 160, 8), (33, 64, 20), (6, 24, 7), (5, 600, 9), (5, 1040, 9)]
            {
                if !fits_kernel(kernel, dtype, in_dim) {
                    continue;
                }
                let w = half_bytes(dtype, &(0..rows * in_dim).map(|_| next()).collect::<Vec<_>>());
                let x: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
                let mut y = vec![0f32; tokens * rows];
                half_gemm_on(kernel, dtype, &w, in_dim, HalfInputs::F32(&x), tokens, &mut y);
                for t in 0..tokens {
                    let input = &x[t * in_dim..(t + 1) * in_dim];
                    let mut alone = vec![0f32; rows];
                    half_gemm_on(kernel, dtype, &w, in_dim, HalfInputs::F32(input), 1, &mut alone);
                    for o in 0..rows {
                        let row = &w[2 * o * in_dim..2 * (o + 1) * in_dim];
                        let want = half_dot_reference(kernel, dtype, row, input);
                        let what = format!("{kernel:?} {dtype:?} {rows}x{in_dim}, token {t} of {tokens}, row {o}");
                        assert_eq!(y[t * rows + o].to_bits(), want.to_bits(), "{what}");
                        assert_eq!(alone[o].to_bits(), want.to_bits(), "{what}, alone");
                    }
                }
            }
        }
    }
}

/// The `vdpbf16ps` kernel: every tile shape, each token's result the
/// same bits whatever the token count of the call, and each within
/// f32 rounding of the exact product of the rounded operands.
#[test]
fn bf16_products_give_each_token_its_solo_result() {
    if !(avx512_supported() && bf16_supported()) {
        eprintln!("half_gemm: this CPU lacks AVX-512 BF16; the vdpbf16ps kernel was not run");
        return;
    }
    let mut next = uniform(11u64);
    for (rows, in_dim, tokens) in [(1, 32, 1), (7, 96, 13), (19, 160, 8), (33, 64, 20), (5, 1056, 9)] {
        let w = half_bytes(DType::BF16, &(0..rows * in_dim).map(|_| next()).collect::<Vec<_>>());
        let x: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
        let mut inputs = Bf16Rows::new();
        inputs.fill(&x, in_dim);
        let mut y = vec![0f32; tokens * rows];
        half_gemm(DType::BF16, &w, in_dim, HalfInputs::Bf16(&inputs), tokens, &mut y);
        for t in 0..tokens {
            let mut one = Bf16Rows::new();
            one.fill(&x[t * in_dim..(t + 1) * in_dim], in_dim);
            let mut alone = vec![0f32; rows];
            half_gemm(DType::BF16, &w, in_dim, HalfInputs::Bf16(&one), 1, &mut alone);
            let rounded = one.row_f32(0);
            for o in 0..rows {
                let what = format!("{rows}x{in_dim}, token {t} of {tokens}, row {o}");
                assert_eq!(y[t * rows + o].to_bits(), alone[o].to_bits(), "{what}");
                let weights = &w[2 * o * in_dim..2 * (o + 1) * in_dim];
                let (exact, scale) = (0..in_dim).fold((0f64, 0f64), |(sum, scale), i| {
                    let bits = u16::from_le_bytes([weights[2 * i], weights[2 * i + 1]]);
                    let product = half::bf16::from_bits(bits).to_f64() * rounded[i] as f64;
                    (sum + product, scale + product.abs())
                });
                assert!((alone[o] as f64 - exact).abs() <= 1e-6 * scale, "{what}: {} vs {exact}", alone[o]);
            }
        }
    }
}

/// `a + b` and its rounding error, exactly (Knuth's two-sum).
fn two_sum(a: f64, b: f64) -> (f64, f64) {
    let sum = a + b;
    let b_part = sum - a;
    (sum, (a - (sum - b_part)) + (b - b_part))
}

/// `sum + error` (an exact value held as an f64 and a much smaller
/// remainder) rounded once to f16, to nearest with ties to even.
fn round_to_f16(sum: f64, error: f64) -> half::f16 {
    if sum == 0.0 {
        return half::f16::from_f64(sum + error);
    }
    let exponent = ((sum.abs().to_bits() >> 52) as i32 - 1023).max(-14);
    let ulp = 2f64.powi(exponent - 10);
    let scaled = sum / ulp;
    let below = scaled.floor();
    let above_half = match (scaled - below).partial_cmp(&0.5) {
        Some(std::cmp::Ordering::Greater) => true,
        Some(std::cmp::Ordering::Less) => false,
        _ if error != 0.0 => error > 0.0,
        _ => below % 2.0 != 0.0,
    };
    half::f16::from_f64((below + f64::from(u8::from(above_half))) * ulp)
}

/// One `vfmadd231ph` lane: `w · x + acc`, rounded once to f16.
fn f16_fma(w: half::f16, x: half::f16, acc: half::f16) -> half::f16 {
    let (sum, error) = two_sum(w.to_f64() * x.to_f64(), acc.to_f64());
    round_to_f16(sum, error)
}

/// The f16 product kernel's sum of one (row, token): f16 chains of 32
/// lanes over each pass of [`AVX512_PASS`] inputs, each pass's low and
/// then high 16 lanes added to 16 f32 lanes, reduced as the kernels do.
fn f16_products_reference(row: &[u8], x: &[f32]) -> f32 {
    let mut lanes = [0f32; LANES];
    for (pass, inputs) in x.chunks(AVX512_PASS).enumerate() {
        let mut chains = [half::f16::ZERO; 2 * LANES];
        for (i, &input) in inputs.iter().enumerate() {
            let at = 2 * (pass * AVX512_PASS + i);
            let weight = half::f16::from_bits(u16::from_le_bytes([row[at], row[at + 1]]));
            let lane = i % chains.len();
            chains[lane] = f16_fma(weight, half::f16::from_f32(input), chains[lane]);
        }
        for (l, lane) in lanes.iter_mut().enumerate() {
            *lane = *lane + chains[l].to_f32() + chains[l + LANES].to_f32();
        }
    }
    reduce_lanes(&lanes)
}

/// The f16 product kernel (AVX-512 FP16): every tile shape and passes
/// that end mid-row, each result equal to the reference bit for bit and
/// each token's the same whatever the token count of the call; a token
/// whose f16 sums overflow gets the widening kernel's result, the others
/// keep theirs.
#[test]
fn f16_products_equal_the_reference_whatever_the_token_count() {
    if !takes_f16_products(DType::F16, 2 * LANES) {
        eprintln!("half_gemm: this CPU lacks AVX-512 FP16; the f16 product kernel was not run");
        return;
    }
    let mut next = uniform(13u64);
    for (rows, in_dim, tokens) in [(1, 32, 1), (7, 96, 13), (19, 160, 8), (33, 64, 20), (5, 1056, 9), (9, 576, 7)] {
        let w = half_bytes(DType::F16, &(0..rows * in_dim).map(|_| next()).collect::<Vec<_>>());
        let mut x: Vec<f32> = (0..tokens * in_dim).map(|_| next()).collect();
        let overflowing = tokens / 2;
        x[overflowing * in_dim] = 1e6;
        let mut y = vec![0f32; tokens * rows];
        half_gemm(DType::F16, &w, in_dim, HalfInputs::F16(&x), tokens, &mut y);
        for t in 0..tokens {
            let input = &x[t * in_dim..(t + 1) * in_dim];
            let mut alone = vec![0f32; rows];
            half_gemm(DType::F16, &w, in_dim, HalfInputs::F16(input), 1, &mut alone);
            let mut widened = vec![0f32; rows];
            half_gemm_on(HalfKernel::Avx512, DType::F16, &w, in_dim, HalfInputs::F32(input), 1, &mut widened);
            for o in 0..rows {
                let row = &w[2 * o * in_dim..2 * (o + 1) * in_dim];
                let want = match t == overflowing {
                    true => widened[o],
                    false => f16_products_reference(row, input),
                };
                let what = format!("{rows}x{in_dim}, token {t} of {tokens}, row {o}");
                assert_eq!(y[t * rows + o].to_bits(), want.to_bits(), "{what}: {} vs {want}", y[t * rows + o]);
                assert_eq!(alone[o].to_bits(), want.to_bits(), "{what}, alone");
            }
        }
    }
}

/// The reference's f16 rounding: ties go to even unless the remainder
/// says which side the exact value lies on.
#[test]
fn f16_rounding_of_the_reference_breaks_ties_by_the_remainder() {
    let one = 1.0f64;
    let half_ulp = 2f64.powi(-11);
    assert_eq!(round_to_f16(one + half_ulp, 0.0).to_f64(), one);
    assert_eq!(round_to_f16(one + half_ulp, 1e-30).to_f64(), one + 2.0 * half_ulp);
    assert_eq!(round_to_f16(one + 3.0 * half_ulp, 0.0).to_f64(), one + 4.0 * half_ulp);
    assert_eq!(round_to_f16(one + 3.0 * half_ulp, -1e-30).to_f64(), one + 2.0 * half_ulp);
    assert_eq!(round_to_f16(70000.0, 0.0), half::f16::INFINITY);
    assert_eq!(round_to_f16(3.0 * 2f64.powi(-25), 0.0).to_f64(), 2f64.powi(-23));
}
