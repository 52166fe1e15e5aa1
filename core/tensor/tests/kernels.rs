//! Every CPU kernel against a plain scalar reference, on random data and
//! odd shapes (the quantized formats' own tests are in quant_formats.rs).

mod common;

use common::{quantized_formats, Rng};
use tailor_tensor::cpu::{self, AttentionShape, BackwardScratch, BlockCompute, LinearScratch, RopeTable};
use tailor_tensor::quant::layout::WeightLayout;
use tailor_tensor::{DType, Tensor};

/// Every weight layout, each forced (or the one this CPU runs instead), so
/// every kernel path this machine can run is tested whatever the default.
const LAYOUTS: [WeightLayout; 3] = [WeightLayout::Rows, WeightLayout::Packed, WeightLayout::Interleaved];

fn naive_linear(x: &[f32], tokens: usize, w: &[f32], out: usize) -> Vec<f32> {
    let inp = x.len() / tokens;
    let mut y = vec![0f32; tokens * out];
    for t in 0..tokens {
        for o in 0..out {
            y[t * out + o] = (0..inp).map(|i| x[t * inp + i] as f64 * w[o * inp + i] as f64).sum::<f64>() as f32;
        }
    }
    y
}

fn assert_close(got: &[f32], want: &[f32], rel: f32, what: &str) {
    let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
    for (i, (a, b)) in got.iter().zip(want).enumerate() {
        assert!((a - b).abs() <= rel * scale, "{what}[{i}]: {a} vs {b} (scale {scale})");
    }
    assert_eq!(got.len(), want.len(), "{what}: length");
}

#[test]
fn dense_linear_matches_naive_on_odd_shapes() {
    let mut rng = Rng(3);
    let mut scratch = LinearScratch::default();
    for (tokens, inp, out) in [(1, 37, 19), (2, 64, 3), (5, 129, 77), (13, 31, 257)] {
        let x = rng.vec(tokens * inp);
        let w = rng.vec(out * inp);
        let tensor = Tensor::from_f32(w.clone(), &[out, inp]).unwrap();
        let mut y = vec![0f32; tokens * out];
        cpu::linear(&x, tokens, &tensor, &mut y, &mut scratch).unwrap();
        assert_close(&y, &naive_linear(&x, tokens, &w, out), 1e-5, "dense linear");
    }
}

#[test]
fn quantized_linear_matches_dequantized_reference() {
    let mut rng = Rng(4);
    let mut scratch = LinearScratch::default();
    for dtype in quantized_formats() {
        for (tokens, inp, out) in [(1, 256, 33), (3, 512, 7), (9, 256, 65)] {
            let x = rng.vec(tokens * inp);
            let tensor = Tensor::from_f32(rng.vec(out * inp), &[out, inp]).unwrap().to_dtype(dtype).unwrap();
            let dense = tensor.to_f32().unwrap().into_owned();
            let want = naive_linear(&x, tokens, &dense, out);
            for t in std::iter::once(tensor.clone()).chain(LAYOUTS.map(|l| tensor.clone().in_layout(l))) {
                let mut y = vec![0f32; tokens * out];
                cpu::linear(&x, tokens, &t, &mut y, &mut scratch).unwrap();
                // Activations are quantized to 8 bits below QUANT_GEMM_MIN_TOKENS,
                // and at any count for weights with an interleaved copy.
                let eight_bit = tokens < cpu::QUANT_GEMM_MIN_TOKENS || t.interleaved().is_some();
                let rel = if eight_bit { 2e-2 } else { 1e-5 };
                assert_close(&y, &want, rel, &format!("{dtype} linear t={tokens}"));
            }
        }
    }
}

/// The training forward's products (token lanes on AVX-512 from 32 tokens,
/// QLoRA's nf4 through dequantized pieces, in f32 or in bf16) against the
/// naive sum of the weights' values: dense f32 and nf4 in f32 to f32
/// rounding, bf16 and nf4 in bf16 to the rounding of their inputs. Where
/// the CPU lacks the kernels, the same holds of the path the call falls
/// back to.
#[test]
fn training_forward_matches_naive_for_every_weight_kind() {
    let mut rng = Rng(8);
    // 2,100 rows: nf4 in two dequantized pieces (2,048 rows each).
    for (tokens, inp, out) in [(7, 128, 70), (32, 128, 70), (45, 64, 2100)] {
        let x = rng.vec(tokens * inp);
        for dtype in [DType::F32, DType::BF16, DType::NF4, DType::NF4DQ] {
            let weight = Tensor::from_f32(rng.vec(out * inp), &[out, inp]).unwrap().to_dtype(dtype).unwrap();
            let values = weight.to_f32().unwrap().into_owned();
            let other = Tensor::from_f32(rng.vec(3 * inp), &[3, inp]).unwrap();
            for block_compute in [BlockCompute::F32, BlockCompute::Bf16] {
                let mut scratch = LinearScratch::default();
                scratch.block_compute = block_compute;
                let (mut y, mut y_other) = (vec![0f32; tokens * out], vec![0f32; tokens * 3]);
                let mut outputs = [(&weight, &mut y[..]), (&other, &mut y_other[..])];
                cpu::linear_many_train(&x, tokens, &mut outputs, &mut scratch).unwrap();
                let in_bf16 = dtype == DType::BF16 || (dtype.is_quantized() && block_compute == BlockCompute::Bf16);
                let rel = if in_bf16 { 2e-2 } else { 1e-5 };
                let what = format!("{dtype} in {block_compute:?}, t={tokens}");
                assert_close(&y, &naive_linear(&x, tokens, &values, out), rel, &what);
                let other_values = other.to_f32().unwrap().into_owned();
                assert_close(&y_other, &naive_linear(&x, tokens, &other_values, 3), 1e-5, "second output");
            }
        }
    }
}

#[test]
fn linear_rejects_mismatched_shapes() {
    let w = Tensor::from_f32(vec![0.0; 12], &[3, 4]).unwrap();
    let mut y = vec![0f32; 3];
    assert!(cpu::linear(&[0.0; 5], 1, &w, &mut y, &mut LinearScratch::default()).is_err());
}

#[test]
fn norms_and_activations_match_scalar_reference() {
    let mut rng = Rng(5);
    let (rows, dim) = (3, 67);
    let x = rng.vec(rows * dim);
    let weight = rng.vec(dim);
    let mut out = vec![0f32; rows * dim];
    cpu::rms_norm(&x, &weight, 1e-5, &mut out);
    for r in 0..rows {
        let row = &x[r * dim..(r + 1) * dim];
        let ms = row.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / dim as f64;
        for i in 0..dim {
            let want = (row[i] as f64 / (ms + 1e-5).sqrt() * weight[i] as f64) as f32;
            assert!((out[r * dim + i] - want).abs() < 1e-5, "rms_norm");
        }
    }
    let mut s = rng.vec(101);
    let orig = s.clone();
    cpu::softmax_in_place(&mut s);
    let total: f64 = orig.iter().map(|v| (*v as f64).exp()).sum();
    for (a, o) in s.iter().zip(&orig) {
        assert!((*a as f64 - (*o as f64).exp() / total).abs() < 1e-6, "softmax");
    }
    let mut big = vec![1000.0, 1001.0];
    cpu::softmax_in_place(&mut big);
    assert!(big.iter().all(|v| v.is_finite()), "softmax must be stable for large inputs");
    let mut gate = rng.vec(50);
    let up = rng.vec(50);
    let g0 = gate.clone();
    cpu::silu_mul(&mut gate, &up);
    for i in 0..50 {
        let want = g0[i] as f64 / (1.0 + (-g0[i] as f64).exp()) * up[i] as f64;
        assert!((gate[i] as f64 - want).abs() < 1e-5, "silu_mul");
    }
}

#[test]
fn rope_matches_rotate_half_reference() {
    let mut rng = Rng(6);
    let (heads, dim, tokens, start) = (3, 8, 4, 5);
    let inv = RopeTable::default_inv_freq(dim, 10_000.0);
    let table = RopeTable::new(dim, &inv, 64);
    let x = rng.vec(tokens * heads * dim);
    let mut y = x.clone();
    table.apply(&mut y, heads, start);
    for t in 0..tokens {
        for h in 0..heads {
            let base = (t * heads + h) * dim;
            for i in 0..dim / 2 {
                let angle = (start + t) as f64 * inv[i] as f64;
                let (a, b) = (x[base + i] as f64, x[base + i + dim / 2] as f64);
                assert!((y[base + i] as f64 - (a * angle.cos() - b * angle.sin())).abs() < 1e-4);
                assert!((y[base + i + dim / 2] as f64 - (b * angle.cos() + a * angle.sin())).abs() < 1e-4);
            }
        }
    }
}

#[test]
fn attention_matches_naive_grouped_query_reference() {
    let mut rng = Rng(7);
    let shape = AttentionShape { n_head: 6, n_kv_head: 2, head_dim: 5 };
    let (start, tokens) = (4, 3);
    let positions = start + tokens;
    let q = rng.vec(tokens * shape.n_head * shape.head_dim);
    let keys = rng.vec(positions * shape.n_kv_head * shape.head_dim);
    let values = rng.vec(positions * shape.n_kv_head * shape.head_dim);
    let mut out = vec![0f32; q.len()];
    cpu::causal_attention(&q, &keys, &values, start, shape, &mut out);
    let (hd, kvs) = (shape.head_dim, shape.n_kv_head * shape.head_dim);
    for t in 0..tokens {
        for h in 0..shape.n_head {
            let g = h / (shape.n_head / shape.n_kv_head);
            let qv = &q[(t * shape.n_head + h) * hd..][..hd];
            let scores: Vec<f64> = (0..=start + t)
                .map(|p| {
                    (0..hd).map(|d| qv[d] as f64 * keys[p * kvs + g * hd + d] as f64).sum::<f64>() / (hd as f64).sqrt()
                })
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for d in 0..hd {
                let want: f64 = scores
                    .iter()
                    .enumerate()
                    .map(|(p, s)| (s - max).exp() / total * values[p * kvs + g * hd + d] as f64)
                    .sum();
                let got = out[(t * shape.n_head + h) * hd + d] as f64;
                assert!((got - want).abs() < 1e-5, "attention t={t} h={h} d={d}: {got} vs {want}");
            }
        }
    }
}

#[test]
fn gemm_matches_naive() {
    let mut rng = Rng(8);
    for (m, k, n) in [(1, 1, 1), (7, 33, 5), (64, 70, 129)] {
        let x = rng.vec(m * k);
        let w = rng.vec(n * k);
        let mut y = vec![0f32; m * n];
        cpu::gemm_f32(&x, m, k, &w, n, &mut y);
        assert_close(&y, &naive_linear(&x, m, &w, n), 1e-5, "gemm");
    }
}

#[test]
fn spin_pool_runs_every_index_once_and_propagates_panics() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    let pool = cpu::pool::SpinPool::new(3);
    for _ in 0..1000 {
        let hits: Vec<AtomicUsize> = (0..100).map(|_| AtomicUsize::new(0)).collect();
        pool.run(&|i, n| {
            for k in cpu::pool::split_range(100, i, n) {
                hits[k].fetch_add(1, Ordering::Relaxed);
            }
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1));
    }
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        pool.run(&|i, _| assert!(i != 1, "worker panics"));
    }));
    assert!(result.is_err(), "a panic in a worker must reach the caller");
    let count = AtomicUsize::new(0);
    pool.run(&|_, _| {
        count.fetch_add(1, Ordering::Relaxed);
    });
    assert_eq!(count.load(Ordering::Relaxed), 3, "the pool keeps working after a panic");
}

#[test]
fn an_unavailable_cuda_device_falls_back_to_the_cpu_with_a_note_and_a_bad_name_is_refused() {
    match tailor_tensor::Device::select("cuda").unwrap() {
        (tailor_tensor::Device::Cpu, Some(note)) => {
            assert!(note.contains("cuda:0") && note.contains("running on the CPU"), "{note}")
        }
        // A build with the feature, on a machine with a driver.
        (tailor_tensor::Device::Cuda(0), None) if cfg!(feature = "cuda") => {}
        other => panic!("select(\"cuda\") gave {other:?}"),
    }
    assert_eq!(tailor_tensor::Device::select("cpu").unwrap(), (tailor_tensor::Device::Cpu, None));
    assert!(tailor_tensor::Device::select("tpu").is_err() && tailor_tensor::Device::select("cuda:x").is_err());
}

#[test]
fn a_cuda_device_without_cuda_support_reports_itself_unavailable() {
    if cfg!(feature = "cuda") {
        return; // whether it is available depends on the machine's driver
    }
    let err = tailor_tensor::Device::cuda(0).unwrap_err().to_string();
    assert!(err.contains("cuda:0") && err.contains("unavailable") && err.contains("--features cuda"), "{err}");
    assert!(tailor_tensor::Device::Cpu.is_available());
}

#[test]
fn erf_matches_known_values_and_fast_erf_tracks_it() {
    for (x, want) in [
        (0.0, 0.0),
        (0.3, 0.328_626_759_459_127_4),
        (1.0, 0.842_700_792_949_714_9),
        (2.0, 0.995_322_265_018_952_7),
        (-1.5, -0.966_105_146_475_310_7),
        (5.0, 0.999_999_999_998_462_6),
    ] {
        assert!((cpu::erf(x) - want).abs() < 1e-14, "erf({x}) = {} vs {want}", cpu::erf(x));
    }
    for i in -800..800 {
        let x = i as f32 / 100.0;
        let (fast, exact) = (cpu::erf_f32(x) as f64, cpu::erf(x as f64));
        assert!((fast - exact).abs() < 3e-7, "erf_f32({x}) = {fast} vs {exact}");
    }
    for i in -8700..8800 {
        let x = i as f32 / 100.0;
        let (fast, exact) = (cpu::exp_fast(x) as f64, (x as f64).exp());
        assert!(((fast - exact) / exact).abs() < 3e-7, "exp_fast({x}) = {fast} vs {exact}");
    }
    let mut g = vec![-3.0f32, -0.5, 0.0, 0.5, 3.0];
    cpu::gelu_in_place(&mut g);
    let want = [-0.004_049_694, -0.154_268_77, 0.0, 0.345_731_23, 2.995_950_3];
    for (a, b) in g.iter().zip(want) {
        assert!((a - b).abs() < 1e-6, "gelu {a} vs {b}");
    }
}

#[test]
fn full_attention_matches_naive_reference() {
    let mut rng = Rng(9);
    let shape = AttentionShape { n_head: 4, n_kv_head: 2, head_dim: 8 };
    let positions = 11;
    let q = rng.vec(positions * 4 * 8);
    let keys = rng.vec(positions * 2 * 8);
    let values = rng.vec(positions * 2 * 8);
    let mut out = vec![0f32; q.len()];
    cpu::full_attention(&q, &keys, &values, shape, &mut out);
    for t in 0..positions {
        for h in 0..4 {
            let g = h / 2;
            let qv = &q[(t * 4 + h) * 8..][..8];
            let scores: Vec<f64> = (0..positions)
                .map(|p| (0..8).map(|d| qv[d] as f64 * keys[p * 16 + g * 8 + d] as f64).sum::<f64>() / 8f64.sqrt())
                .collect();
            let max = scores.iter().cloned().fold(f64::MIN, f64::max);
            let total: f64 = scores.iter().map(|s| (s - max).exp()).sum();
            for d in 0..8 {
                let want: f64 = scores
                    .iter()
                    .enumerate()
                    .map(|(p, s)| (s - max).exp() / total * values[p * 16 + g * 8 + d] as f64)
                    .sum();
                assert!((out[(t * 4 + h) * 8 + d] as f64 - want).abs() < 1e-5, "t={t} h={h} d={d}");
            }
        }
    }
}

#[test]
fn decode_batch_linear_gives_each_row_its_solo_result_bit_for_bit() {
    let mut rng = Rng(11);
    let mut scratch = LinearScratch::default();
    let (inp, out_a, out_b) = (256, 37, 20);
    let mut formats = quantized_formats();
    formats.extend([DType::F32, DType::F16, DType::BF16]);
    for dtype in formats {
        for layout in LAYOUTS {
            let make = |rng: &mut Rng, rows: usize| {
                let t = Tensor::from_f32(rng.vec(rows * inp), &[rows, inp]).unwrap().to_dtype(dtype).unwrap();
                t.in_layout(layout)
            };
            let (wa, wb) = (make(&mut rng, out_a), make(&mut rng, out_b));
            // 12 rows: past QUANT_GEMM_MIN_TOKENS, where plain linear would switch to gemm.
            let tokens = 12;
            let x = rng.vec(tokens * inp);
            let (mut ya, mut yb) = (vec![0f32; tokens * out_a], vec![0f32; tokens * out_b]);
            cpu::linear_many_decode(&x, tokens, &mut [(&wa, &mut ya), (&wb, &mut yb)], &mut scratch).unwrap();
            for t in 0..tokens {
                let row = &x[t * inp..(t + 1) * inp];
                let (mut sa, mut sb) = (vec![0f32; out_a], vec![0f32; out_b]);
                cpu::linear_many(row, 1, &mut [(&wa, &mut sa), (&wb, &mut sb)], &mut scratch).unwrap();
                assert_eq!(&ya[t * out_a..(t + 1) * out_a], &sa[..], "{dtype} {layout:?} row {t}");
                assert_eq!(&yb[t * out_b..(t + 1) * out_b], &sb[..], "{dtype} {layout:?} row {t}");
            }
        }
    }
}

#[test]
fn decode_attention_gives_each_sequence_its_solo_result_bit_for_bit() {
    let mut rng = Rng(12);
    let shape = AttentionShape { n_head: 6, n_kv_head: 2, head_dim: 16 };
    let (q_width, kv_width) = (6 * 16, 2 * 16);
    let lengths = [1usize, 5, 17, 3];
    let caches: Vec<(Vec<f32>, Vec<f32>)> =
        lengths.iter().map(|&n| (rng.vec(n * kv_width), rng.vec(n * kv_width))).collect();
    let q = rng.vec(lengths.len() * q_width);
    let sequences: Vec<(&[f32], &[f32])> = caches.iter().map(|(k, v)| (&k[..], &v[..])).collect();
    let mut batched = vec![0f32; q.len()];
    cpu::decode_attention(&q, &sequences, shape, &mut batched);
    for (i, (keys, values)) in caches.iter().enumerate() {
        let mut solo = vec![0f32; q_width];
        let start = lengths[i] - 1; // the query is the last cached position
        cpu::causal_attention(&q[i * q_width..(i + 1) * q_width], keys, values, start, shape, &mut solo);
        assert_eq!(&batched[i * q_width..(i + 1) * q_width], &solo[..], "sequence {i}");
    }
}

/// `v` rounded to bf16 (nearest, ties to even) and widened back.
fn bf16_round(v: f32) -> f32 {
    let bits = v.to_bits();
    f32::from_bits(((bits + 0x7fff + ((bits >> 16) & 1)) >> 16) << 16)
}

fn bf16_gemm(x: &[f32], inp: usize, w: &cpu::Bf16Weights, epilogue: cpu::Epilogue<'_>) -> Vec<f32> {
    bf16_gemm_on(cpu::Bf16Kernel::best(), x, inp, w, epilogue)
}

fn bf16_gemm_on(
    kernel: cpu::Bf16Kernel,
    x: &[f32],
    inp: usize,
    w: &cpu::Bf16Weights,
    epilogue: cpu::Epilogue<'_>,
) -> Vec<f32> {
    let mut rows = cpu::Bf16Rows::new();
    rows.fill(x, inp);
    let mut y = vec![0f32; rows.rows() * w.out_features()];
    cpu::gemm_bf16_on(kernel, &rows, w, epilogue, cpu::Bf16Out::F32(&mut y));
    y
}

#[test]
fn bf16_gemm_matches_rounded_operands_reference() {
    let mut rng = Rng(11);
    for (tokens, inp, out) in [(1, 37, 19), (9, 64, 33), (17, 129, 77), (8, 384, 64), (30, 6, 100)] {
        let (x, w, bias) = (rng.vec(tokens * inp), rng.vec(out * inp), rng.vec(out));
        let packed = cpu::Bf16Weights::pack(&w, out, inp);
        let rounded_x: Vec<f32> = x.iter().map(|&v| bf16_round(v)).collect();
        let rounded_w: Vec<f32> = w.iter().map(|&v| bf16_round(v)).collect();
        let mut want = naive_linear(&rounded_x, tokens, &rounded_w, out);
        for (v, b) in want.iter_mut().zip(bias.iter().cycle()) {
            *v += b;
        }
        let epilogue = cpu::Epilogue { bias: Some(&bias), gelu: false };
        let gelu = |v: f32| (0.5 * v as f64 * (1.0 + cpu::erf(v as f64 / std::f64::consts::SQRT_2))) as f32;
        let want_gelu: Vec<f32> = want.iter().map(|&v| gelu(v)).collect();
        for kernel in [cpu::Bf16Kernel::Avx512, cpu::Bf16Kernel::Portable] {
            let what = format!("{kernel:?} bf16 gemm {tokens}×{inp}→{out}");
            assert_close(&bf16_gemm_on(kernel, &x, inp, &packed, epilogue), &want, 1e-5, &what);
            let with_gelu = cpu::Epilogue { bias: Some(&bias), gelu: true };
            assert_close(
                &bf16_gemm_on(kernel, &x, inp, &packed, with_gelu),
                &want_gelu,
                1e-5,
                &format!("{what} + gelu"),
            );
        }
        let mut input = cpu::Bf16Rows::new();
        input.fill(&x, inp);
        for kernel in [cpu::Bf16Kernel::Avx512, cpu::Bf16Kernel::Portable] {
            let got = bf16_gemm_on(kernel, &x, inp, &packed, epilogue);
            let mut as_bf16 = cpu::Bf16Rows::new();
            cpu::gemm_bf16_on(kernel, &input, &packed, epilogue, cpu::Bf16Out::Bf16(&mut as_bf16));
            assert_eq!((as_bf16.rows(), as_bf16.cols()), (tokens, out));
            for t in 0..tokens {
                let expected: Vec<f32> = got[t * out..(t + 1) * out].iter().map(|&v| bf16_round(v)).collect();
                assert_eq!(as_bf16.row_f32(t), expected, "{kernel:?}: bf16 output row {t} is the rounded f32 output");
            }
        }
    }
}

#[test]
fn bf16_gemm_of_no_rows_writes_nothing() {
    let packed = cpu::Bf16Weights::pack(&[1.0; 6], 2, 3);
    assert!(bf16_gemm(&[], 3, &packed, cpu::Epilogue::default()).is_empty());
}

#[test]
fn bf16_gemm_rows_do_not_depend_on_their_neighbours() {
    let mut rng = Rng(12);
    let (tokens, inp, out) = (19, 96, 64);
    let (x, w) = (rng.vec(tokens * inp), rng.vec(out * inp));
    let packed = cpu::Bf16Weights::pack(&w, out, inp);
    let together = bf16_gemm(&x, inp, &packed, cpu::Epilogue::default());
    for t in [0, 7, 8, 18] {
        let alone = bf16_gemm(&x[t * inp..(t + 1) * inp], inp, &packed, cpu::Epilogue::default());
        assert_eq!(alone, together[t * out..(t + 1) * out], "row {t}");
    }
}

#[test]
fn packed_attention_keeps_each_sequence_to_itself() {
    let mut rng = Rng(13);
    let shape = AttentionShape { n_head: 4, n_kv_head: 2, head_dim: 8 };
    let lengths = [5, 1, 12, 7];
    let total: usize = lengths.iter().sum();
    let (q, keys, values) = (rng.vec(total * 32), rng.vec(total * 16), rng.vec(total * 16));
    let mut packed = vec![0f32; q.len()];
    cpu::full_attention_packed(&q, &keys, &values, shape, &lengths, &mut packed);
    let mut start = 0;
    for len in lengths {
        let (qs, kvs) = (start * 32..(start + len) * 32, start * 16..(start + len) * 16);
        let mut alone = vec![0f32; len * 32];
        cpu::full_attention(&q[qs.clone()], &keys[kvs.clone()], &values[kvs], shape, &mut alone);
        assert_eq!(alone, packed[qs], "sequence at {start} of length {len}");
        start += len;
    }
}

#[test]
fn tiled_prefill_attention_gives_every_query_its_decode_result_bit_for_bit() {
    let mut rng = Rng(21);
    for head_dim in [64, 128, 16] {
        let shape = AttentionShape { n_head: 6, n_kv_head: 2, head_dim };
        let (q_width, kv_width) = (6 * head_dim, 2 * head_dim);
        let (start, tokens) = (5, 21); // three tiles, the last one partial
        let keys = rng.vec((start + tokens) * kv_width);
        let values = rng.vec((start + tokens) * kv_width);
        let q = rng.vec(tokens * q_width);
        let mut prefill = vec![0f32; q.len()];
        cpu::causal_attention(&q, &keys, &values, start, shape, &mut prefill);
        for t in 0..tokens {
            let seen = (start + t + 1) * kv_width;
            let mut alone = vec![0f32; q_width];
            let row = &q[t * q_width..(t + 1) * q_width];
            cpu::decode_attention(row, &[(&keys[..seen], &values[..seen])], shape, &mut alone);
            assert_eq!(&prefill[t * q_width..(t + 1) * q_width], &alone[..], "head_dim {head_dim}, token {t}");
        }
    }
}

#[test]
fn an_oversubscribed_spin_pool_still_runs_every_slot_once() {
    use std::sync::atomic::{AtomicUsize, Ordering};
    // More participants than cores: workers are often descheduled, arrive
    // late to a job whose slots are gone, or take a slot of the next one.
    let pool = cpu::pool::SpinPool::new(8);
    for round in 0..3000 {
        let hits: Vec<AtomicUsize> = (0..8).map(|_| AtomicUsize::new(0)).collect();
        pool.run(&|slot, threads| {
            assert_eq!(threads, 8);
            hits[slot].fetch_add(1, Ordering::Relaxed);
        });
        assert!(hits.iter().all(|h| h.load(Ordering::Relaxed) == 1), "round {round}");
    }
}

#[test]
fn work_run_with_niceness_returns_its_value_and_its_panic() {
    let niceness = || {
        let stat = std::fs::read_to_string("/proc/thread-self/stat").unwrap();
        let fields: Vec<&str> = stat.rsplit_once(')').unwrap().1.split_whitespace().collect();
        fields[16].parse::<i32>().unwrap() // field 19 of stat: nice
    };
    let before = niceness();
    let inside = cpu::pool::run_with_niceness(before + 5, niceness);
    assert_eq!(inside, (before + 5).min(19), "the work ran at the lower priority");
    assert_eq!(niceness(), before, "the calling thread keeps its priority");
    let panicked = std::panic::catch_unwind(|| cpu::pool::run_with_niceness(1, || panic!("inside")));
    assert!(panicked.is_err());
}

/// The f64 reference of one row's LoRA delta: `B·(A·x)`.
fn lora_reference(a: &[f32], b: &[f32], rank: usize, x: &[f32]) -> Vec<f32> {
    let inp = x.len();
    let low: Vec<f64> = (0..rank).map(|j| (0..inp).map(|k| a[j * inp + k] as f64 * x[k] as f64).sum()).collect();
    let out = b.len() / rank;
    (0..out).map(|o| (0..rank).map(|j| b[o * rank + j] as f64 * low[j]).sum::<f64>() as f32).collect()
}

/// A pair in `dtype`'s precision, with its values as f32 (A `[rank, in]`, B `[out, rank]`).
fn lora_pair(rng: &mut Rng, dtype: DType, rank: usize, inp: usize, out: usize) -> (cpu::LoraPair, Vec<f32>, Vec<f32>) {
    let make = |values: Vec<f32>| match dtype {
        DType::F16 => cpu::LoraMatrix::F16(values.iter().map(|&v| half::f16::from_f32(v)).collect()),
        DType::BF16 => cpu::LoraMatrix::Bf16(values.iter().map(|&v| half::bf16::from_f32(v)).collect()),
        _ => cpu::LoraMatrix::F32(values),
    };
    let (a, b) = (make(rng.vec(rank * inp)), make(rng.vec(out * rank)));
    let (a_f32, b_f32) = (a.to_f32(), b.to_f32());
    (cpu::LoraPair::new(rank, inp, out, a, b).unwrap(), a_f32, b_f32)
}

#[test]
fn lora_deltas_match_the_reference_on_both_kernels_and_every_precision() {
    let mut rng = Rng(41);
    // Odd widths: in not a multiple of 16, outputs not multiples of 8.
    let (rows, inp) = (7, 90);
    let x = rng.vec(rows * inp);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let (p0, a0, b0) = lora_pair(&mut rng, dtype, 3, inp, 37);
        let (p1, a1, b1) = lora_pair(&mut rng, dtype, 8, inp, 37);
        let (p2, a2, b2) = lora_pair(&mut rng, dtype, 5, inp, 20);
        // Output 0: rows 0, 2, 3, 4, 6 with p0 (more than a block), row 5 with p1; output 1: rows 1..=5 with p2.
        let (g0, g1, g2) = ([0usize, 2, 3, 4, 6], [5usize], [1usize, 2, 3, 4, 5]);
        let groups = [
            cpu::LoraGroup { pair: &p0, rows: &g0, output: 0 },
            cpu::LoraGroup { pair: &p1, rows: &g1, output: 0 },
            cpu::LoraGroup { pair: &p2, rows: &g2, output: 1 },
        ];
        for kernel in [cpu::LoraKernel::Scalar, cpu::LoraKernel::detect()] {
            let (mut y0, mut y1, mut low) = (vec![7.0f32; rows * 37], vec![7.0f32; rows * 20], Vec::new());
            cpu::lora_deltas_on(kernel, &x, rows, &groups, &mut [&mut y0[..], &mut y1[..]], &mut low).unwrap();
            let row = |r: usize| &x[r * inp..(r + 1) * inp];
            for r in 0..rows {
                let what = format!("{dtype:?} {kernel:?} row {r}");
                let (a, b, rank) = if r == 5 { (&a1, &b1, 8) } else { (&a0, &b0, 3) };
                match r {
                    1 => assert!(y0[r * 37..(r + 1) * 37].iter().all(|&v| v == 7.0), "{what}: untouched"),
                    _ => assert_close(&y0[r * 37..(r + 1) * 37], &lora_reference(a, b, rank, row(r)), 1e-5, &what),
                }
                match r {
                    1..=5 => assert_close(&y1[r * 20..(r + 1) * 20], &lora_reference(&a2, &b2, 5, row(r)), 1e-5, &what),
                    _ => assert!(y1[r * 20..(r + 1) * 20].iter().all(|&v| v == 7.0), "{what}: untouched"),
                }
            }
        }
    }
}

#[test]
fn lora_delta_rows_do_not_depend_on_their_neighbours() {
    let mut rng = Rng(43);
    let (rows, inp, out) = (6, 64, 48);
    let x = rng.vec(rows * inp);
    let (pair, _, _) = lora_pair(&mut rng, DType::F16, 16, inp, out);
    let all: Vec<usize> = (0..rows).collect();
    for kernel in [cpu::LoraKernel::Scalar, cpu::LoraKernel::detect()] {
        let (mut batch, mut low) = (vec![0f32; rows * out], Vec::new());
        let group = [cpu::LoraGroup { pair: &pair, rows: &all, output: 0 }];
        cpu::lora_deltas_on(kernel, &x, rows, &group, &mut [&mut batch[..]], &mut low).unwrap();
        for r in 0..rows {
            let mut alone = vec![0f32; out];
            let group = [cpu::LoraGroup { pair: &pair, rows: &[0], output: 0 }];
            let input = &x[r * inp..(r + 1) * inp];
            cpu::lora_deltas_on(kernel, input, 1, &group, &mut [&mut alone[..]], &mut low).unwrap();
            assert_eq!(&batch[r * out..(r + 1) * out], &alone[..], "{kernel:?} row {r}: batched differs from alone");
        }
    }
}

#[test]
fn lora_deltas_refuse_mismatched_shapes() {
    let mut rng = Rng(47);
    let (pair, _, _) = lora_pair(&mut rng, DType::F32, 2, 16, 8);
    let group = [cpu::LoraGroup { pair: &pair, rows: &[0, 1], output: 0 }];
    let (x, mut low) = (vec![0f32; 2 * 16], Vec::new());
    let mut short = [0f32; 8];
    assert!(cpu::lora_deltas(&x, 2, &group, &mut [&mut short[..]], &mut low).is_err());
    assert!(cpu::lora_deltas(&x[..16], 2, &group, &mut [&mut vec![0f32; 16][..]], &mut low).is_err());
    let past = [cpu::LoraGroup { pair: &pair, rows: &[2], output: 0 }];
    assert!(cpu::lora_deltas(&x, 2, &past, &mut [&mut vec![0f32; 16][..]], &mut low).is_err());
    assert!(
        cpu::LoraPair::new(2, 16, 8, cpu::LoraMatrix::F32(vec![0.0; 31]), cpu::LoraMatrix::F32(vec![0.0; 16])).is_err()
    );
}

#[test]
fn attention_backward_gemm_kernel_matches_the_row_reference() {
    let mut rng = Rng(77);
    for (shape, lengths) in [
        (AttentionShape { n_head: 4, n_kv_head: 2, head_dim: 8 }, vec![5usize, 1, 13]),
        (AttentionShape { n_head: 9, n_kv_head: 3, head_dim: 64 }, vec![37, 64]),
        (AttentionShape { n_head: 2, n_kv_head: 2, head_dim: 6 }, vec![1]),
    ] {
        let tokens: usize = lengths.iter().sum();
        let (q_len, kv_len) = (tokens * shape.n_head * shape.head_dim, tokens * shape.n_kv_head * shape.head_dim);
        let (q, k, v, dout) = (rng.vec(q_len), rng.vec(kv_len), rng.vec(kv_len), rng.vec(q_len));
        let run = |kernel| {
            let (mut dq, mut dk, mut dv) = (vec![0f32; q_len], vec![0f32; kv_len], vec![0f32; kv_len]);
            cpu::causal_attention_backward_on(kernel, &q, &k, &v, &dout, shape, &lengths, &mut dq, &mut dk, &mut dv);
            [dq, dk, dv]
        };
        let reference = run(cpu::AttentionBackwardKernel::Rows);
        let fast = run(cpu::AttentionBackwardKernel::Gemm);
        for (name, (a, b)) in ["dq", "dk", "dv"].iter().zip(fast.iter().zip(&reference)) {
            let scale = b.iter().fold(0f32, |m, x| m.max(x.abs()));
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 1e-4 * scale, "{name} {lengths:?}: gemm {x} vs rows {y}");
            }
        }
    }
}

#[test]
fn cross_entropy_of_non_finite_logits_is_nan() {
    let mut logits = vec![0.5f32, f32::NAN, 1.0, 2.0, f32::INFINITY, 0.0];
    let loss = cpu::softmax_cross_entropy(&mut logits, 3, &[0, 1], 1.0).unwrap();
    assert!(loss.is_nan());
    let mut finite = vec![0.0f32, 0.0, 0.0];
    let loss = cpu::softmax_cross_entropy(&mut finite, 3, &[2], 1.0).unwrap();
    assert!((loss - 3f64.ln()).abs() < 1e-6, "{loss}");
}

/// bf16 weights: on a CPU with AVX-512 BF16 `dy` is rounded to bf16 and
/// multiplied with the stored rows (elsewhere the rows are widened for the
/// f32 gemm); either way each gradient is within bf16 rounding of `dy`
/// (2⁻⁸ of Σ|w·dy|) of the f32 product with the same weights.
#[test]
fn linear_backward_input_on_bf16_weights_is_within_bf16_rounding_of_f32() {
    let (tokens, out_dim, in_dim) = (19, 1031, 72);
    let mut rng = Rng(37);
    let stored =
        Tensor::from_f32(rng.vec(out_dim * in_dim), &[out_dim, in_dim]).unwrap().to_dtype(DType::BF16).unwrap();
    let widened = stored.to_dtype(DType::F32).unwrap();
    let weights = widened.to_f32().unwrap();
    let dy = rng.vec(tokens * out_dim);
    let run = |w: &Tensor| {
        let mut dx = vec![0.25f32; tokens * in_dim];
        cpu::linear_backward_input(&dy, tokens, w, &mut dx, &mut Default::default()).unwrap();
        dx
    };
    let (from_bf16, from_f32) = (run(&stored), run(&widened));
    for t in 0..tokens {
        for i in 0..in_dim {
            let magnitude: f32 = (0..out_dim).map(|o| (weights[o * in_dim + i] * dy[t * out_dim + o]).abs()).sum();
            let (a, b) = (from_bf16[t * in_dim + i], from_f32[t * in_dim + i]);
            assert!((a - b).abs() <= magnitude / 256.0, "token {t}, column {i}: {a} vs {b}");
        }
    }
}

/// The weight gradient `dW += dyᵀ·x` against the naive sum, on odd shapes.
#[test]
fn linear_backward_weight_matches_naive() {
    let mut rng = Rng(41);
    for (tokens, out_dim, in_dim) in [(1, 3, 5), (13, 37, 70), (600, 25, 33)] {
        let (dy, x) = (rng.vec(tokens * out_dim), rng.vec(tokens * in_dim));
        let start = rng.vec(out_dim * in_dim);
        let mut dw = start.clone();
        cpu::linear_backward_weight(&dy, &x, tokens, &mut dw);
        let want: Vec<f32> = (0..out_dim * in_dim)
            .map(|k| {
                let (o, i) = (k / in_dim, k % in_dim);
                let sum: f64 = (0..tokens).map(|t| dy[t * out_dim + o] as f64 * x[t * in_dim + i] as f64).sum();
                start[k] + sum as f32
            })
            .collect();
        assert_close(&dw, &want, 1e-5, &format!("dW of {tokens} tokens, {out_dim}×{in_dim}"));
    }
}

/// Block-quantized weights' input gradient through dequantized pieces: in
/// f32 it is the dense f32 path's to f32 rounding; in bf16 (on AVX-512
/// BF16) within bf16 rounding of the weights and `dy` (2⁻⁷ of Σ|w·dy|).
#[test]
fn linear_backward_input_on_quantized_weights_matches_the_dequantized_f32_path() {
    // 2,601 output rows: two pieces of the dequantized weight (2,048 + 553).
    let (tokens, out_dim, in_dim) = (5, 2601, 64);
    let mut rng = Rng(31);
    let quantized =
        Tensor::from_f32(rng.vec(out_dim * in_dim), &[out_dim, in_dim]).unwrap().to_dtype(DType::Q4_1).unwrap();
    let dense = quantized.to_dtype(DType::F32).unwrap();
    let weights = dense.to_f32().unwrap();
    let dy = rng.vec(tokens * out_dim);
    let run = |w: &Tensor, block_compute| {
        let mut dx = vec![0.5f32; tokens * in_dim]; // accumulates onto what is there
        let mut scratch = BackwardScratch::default();
        scratch.block_compute = block_compute;
        cpu::linear_backward_input(&dy, tokens, w, &mut dx, &mut scratch).unwrap();
        dx
    };
    let from_f32 = run(&dense, BlockCompute::F32);
    let scale = from_f32.iter().fold(0f32, |m, v| m.max(v.abs()));
    for (a, b) in run(&quantized, BlockCompute::F32).iter().zip(&from_f32) {
        assert!((a - b).abs() <= 1e-5 * scale, "f32 pieces: {a} vs {b}");
    }
    let from_bf16 = run(&quantized, BlockCompute::Bf16);
    for t in 0..tokens {
        for i in 0..in_dim {
            let magnitude: f32 = (0..out_dim).map(|o| (weights[o * in_dim + i] * dy[t * out_dim + o]).abs()).sum();
            let (a, b) = (from_bf16[t * in_dim + i], from_f32[t * in_dim + i]);
            assert!((a - b).abs() <= magnitude / 128.0, "bf16 pieces, token {t}, column {i}: {a} vs {b}");
        }
    }
}
