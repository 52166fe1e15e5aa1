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
