//! Every CUDA op against its CPU twin, on random values and odd shapes
//! (row counts that leave warps idle, token counts that cross a launch's
//! chunk, sequences of one position), twice: on the GPU, with the feature
//! `cuda` and TAILOR_CUDA_TESTS=1 (benches/cuda/run.sh sets both; elsewhere
//! they say that they did not run), and on the CPU emulation of the same
//! kernel source (g++, everywhere), which checks the kernels' indexing,
//! masking and reductions and the ops' launch parameters.
#![cfg(feature = "cuda")]

mod common;

use common::{assert_close, Rng};
use tailor_tensor::cpu::{self, AttentionShape, LoraGroup, LoraKernel, LoraMatrix, LoraPair, RopeTable};
use tailor_tensor::cuda::backend::{Backend, DeviceBuffer, Executor, KvView, LoraLaunch, KV_DTYPES};
use tailor_tensor::{DType, Tensor, TensorError};

tailor_tensor::on_gpu_and_emulator!(
    linear_matches_the_dequantized_cpu_product_for_every_stored_type,
    linear_gpu,
    linear_emulated
);
tailor_tensor::on_gpu_and_emulator!(rms_norm_matches_the_cpu, rms_norm_gpu, rms_norm_emulated);
tailor_tensor::on_gpu_and_emulator!(rope_matches_the_cpu_at_each_tokens_own_position, rope_gpu, rope_emulated);
tailor_tensor::on_gpu_and_emulator!(silu_mul_matches_the_cpu, silu_mul_gpu, silu_mul_emulated);
tailor_tensor::on_gpu_and_emulator!(
    embedding_gathers_the_rows_and_refuses_an_id_past_the_vocabulary,
    embedding_gpu,
    embedding_emulated
);
tailor_tensor::on_gpu_and_emulator!(
    decode_attention_matches_the_cpu_for_grouped_heads_and_ragged_lengths,
    attention_decode_gpu,
    attention_decode_emulated
);
tailor_tensor::on_gpu_and_emulator!(
    prefill_attention_matches_the_cpu_after_a_cached_prefix,
    attention_prefill_gpu,
    attention_prefill_emulated
);
tailor_tensor::on_gpu_and_emulator!(
    softmax_cross_entropy_matches_the_cpu_loss_and_gradient,
    softmax_xent_gpu,
    softmax_xent_emulated
);
tailor_tensor::on_gpu_and_emulator!(backward_of_silu_mul_and_rms_norm_match_the_cpu, backward_gpu, backward_emulated);
tailor_tensor::on_gpu_and_emulator!(
    lora_rows_of_different_adapters_in_one_launch_match_the_cpu_deltas,
    lora_gpu,
    lora_emulated
);
tailor_tensor::on_gpu_and_emulator!(
    lora_segments_of_a_prompt_match_rows_bit_for_bit_and_the_cpu,
    lora_segments_gpu,
    lora_segments_emulated
);
tailor_tensor::on_gpu_and_emulator!(additions_match_the_cpu, add_gpu, add_emulated);
tailor_tensor::on_gpu_and_emulator!(
    kv_store_appends_each_row_to_its_own_cache_at_its_length,
    kv_store_gpu,
    kv_store_emulated
);

fn linear_matches_the_dequantized_cpu_product_for_every_stored_type<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(7);
    let (rows, cols) = (13, 512);
    let types = tailor_tensor::cuda::backend::LINEAR_DTYPES;
    for dtype in types {
        let weights = Tensor::from_f32(rng.vec(rows * cols), &[rows, cols]).unwrap().to_dtype(dtype).unwrap();
        let dense = weights.to_f32().unwrap().into_owned();
        let on_device = gpu.upload_matrix(&weights).unwrap();
        // 1 and 3 tokens: the decode kernel; 11: the prefill kernel; 45:
        // two launches of the prefill kernel (32, then 13).
        for tokens in [1, 3, 11, 45] {
            let x = rng.vec(tokens * cols);
            let (mut want, mut scale) = (vec![0f32; tokens * rows], vec![0f32; tokens * rows]);
            for t in 0..tokens {
                for r in 0..rows {
                    let (w_row, x_row) = (&dense[r * cols..(r + 1) * cols], &x[t * cols..(t + 1) * cols]);
                    want[t * rows + r] =
                        w_row.iter().zip(x_row).map(|(a, b)| *a as f64 * *b as f64).sum::<f64>() as f32;
                    scale[t * rows + r] = w_row.iter().zip(x_row).map(|(a, b)| (a * b).abs()).sum();
                }
            }
            let x_device = gpu.upload(&x).unwrap();
            let mut y = gpu.alloc(tokens * rows * 4).unwrap();
            gpu.linear(&on_device, &x_device, tokens, &mut y).unwrap();
            let got: Vec<f32> = gpu.download(&y, tokens * rows).unwrap();
            assert_close(&format!("linear {dtype:?} × {tokens} tokens"), &got, &want, &scale, 1e-4);
            if tokens == 1 {
                continue;
            }
            // The prefill kernel sums each token's products in the decode
            // kernel's order: a token's result does not depend on its launch.
            let last = &x[(tokens - 1) * cols..];
            let mut y_alone = gpu.alloc(rows * 4).unwrap();
            gpu.linear(&on_device, &gpu.upload(last).unwrap(), 1, &mut y_alone).unwrap();
            let got_alone: Vec<f32> = gpu.download(&y_alone, rows).unwrap();
            assert_eq!(
                got[(tokens - 1) * rows..],
                got_alone[..],
                "{dtype:?}: token {} of {tokens} vs alone",
                tokens - 1
            );
        }
    }
}

fn rms_norm_matches_the_cpu<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(11);
    let (rows, dim) = (3, 576);
    let (x, weight) = (rng.vec(rows * dim), rng.vec(dim));
    let mut want = vec![0f32; rows * dim];
    cpu::rms_norm(&x, &weight, 1e-5, &mut want);
    let mut out = gpu.alloc(rows * dim * 4).unwrap();
    gpu.rms_norm(&gpu.upload(&x).unwrap(), &gpu.upload(&weight).unwrap(), &mut out, rows, dim, 1e-5).unwrap();
    let got: Vec<f32> = gpu.download(&out, rows * dim).unwrap();
    let scale: Vec<f32> = want.iter().map(|v| v.abs()).collect();
    assert_close("rms_norm", &got, &want, &scale, 1e-5);
}

fn rope_matches_the_cpu_at_each_tokens_own_position<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(13);
    let (head_dim, n_heads) = (64, 3);
    let table = RopeTable::new(head_dim, &RopeTable::default_inv_freq(head_dim, 10000.0), 64);
    let positions = [0usize, 5, 17, 63];
    let x = rng.vec(positions.len() * n_heads * head_dim);
    let mut want = x.clone();
    for (t, &position) in positions.iter().enumerate() {
        table.apply(&mut want[t * n_heads * head_dim..(t + 1) * n_heads * head_dim], n_heads, position);
    }
    let device_table = gpu.upload_rope(&table).unwrap();
    let mut on_device = gpu.upload(&x).unwrap();
    gpu.rope(&mut on_device, &device_table, &positions, n_heads).unwrap();
    let got: Vec<f32> = gpu.download(&on_device, x.len()).unwrap();
    assert_close("rope", &got, &want, &vec![1.0; x.len()], 1e-6);
    let past = gpu.rope(&mut on_device, &device_table, &[64], 1).unwrap_err();
    assert!(past.to_string().contains("past the table"), "{past}");
}

fn silu_mul_matches_the_cpu<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(17);
    let n = 1000;
    let (gate, up) = (rng.vec(n), rng.vec(n));
    let mut want = gate.clone();
    cpu::silu_mul(&mut want, &up);
    let mut on_device = gpu.upload(&gate).unwrap();
    gpu.silu_mul(&mut on_device, &gpu.upload(&up).unwrap(), n).unwrap();
    let got: Vec<f32> = gpu.download(&on_device, n).unwrap();
    let scale: Vec<f32> = want.iter().map(|v| v.abs()).collect();
    assert_close("silu_mul", &got, &want, &scale, 1e-5);
}

fn additions_match_the_cpu<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(18);
    let (rows, cols) = (3, 300);
    let (x, y, bias) = (rng.vec(rows * cols), rng.vec(rows * cols), rng.vec(cols));
    let mut want = x.clone();
    cpu::add_in_place(&mut want, &y);
    let mut on_device = gpu.upload(&x).unwrap();
    gpu.add(&mut on_device, &gpu.upload(&y).unwrap(), rows * cols).unwrap();
    assert_eq!(gpu.download::<f32>(&on_device, rows * cols).unwrap(), want, "add");
    want.chunks_exact_mut(cols).for_each(|row| cpu::add_in_place(row, &bias));
    gpu.add_bias(&mut on_device, &gpu.upload(&bias).unwrap(), rows, cols).unwrap();
    assert_eq!(gpu.download::<f32>(&on_device, rows * cols).unwrap(), want, "add_bias");
}

fn kv_store_appends_each_row_to_its_own_cache_at_its_length<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(20);
    let width = 200;
    let lengths = [0usize, 3, 3];
    for kv in KV_DTYPES {
        let caches: Vec<(Vec<f32>, Vec<f32>)> = (0..3).map(|_| (rng.vec(5 * width), rng.vec(5 * width))).collect();
        let (keys, values) = (rng.vec(3 * width), rng.vec(3 * width));
        let on_device: Vec<_> = caches.iter().map(|(k, v)| (upload_kv(gpu, k, kv), upload_kv(gpu, v, kv))).collect();
        let views: Vec<KvView<'_, E::Block>> =
            on_device.iter().zip(lengths).map(|((keys, values), length)| KvView { keys, values, length }).collect();
        gpu.kv_store(&gpu.upload(&keys).unwrap(), &gpu.upload(&values).unwrap(), width, &views, kv).unwrap();
        for (r, ((want_k, want_v), (k, v))) in caches.iter().zip(&on_device).enumerate() {
            let (mut want_k, mut want_v) = (want_k.clone(), want_v.clone());
            let at = lengths[r] * width..(lengths[r] + 1) * width;
            want_k[at.clone()].copy_from_slice(&keys[r * width..(r + 1) * width]);
            want_v[at].copy_from_slice(&values[r * width..(r + 1) * width]);
            assert_eq!(download_kv(gpu, k, 5 * width, kv), rounded(&want_k, kv), "{kv:?} row {r} keys");
            assert_eq!(download_kv(gpu, v, 5 * width, kv), rounded(&want_v, kv), "{kv:?} row {r} values");
        }
        let full = [KvView { keys: &on_device[0].0, values: &on_device[0].1, length: 5 }];
        assert!(gpu.kv_store(&gpu.upload(&keys).unwrap(), &gpu.upload(&values).unwrap(), width, &full, kv).is_err());
    }
    let views = [KvView { keys: &gpu.alloc(4096).unwrap(), values: &gpu.alloc(4096).unwrap(), length: 0 }];
    let refused =
        gpu.kv_store(&gpu.upload(&[0f32; 8]).unwrap(), &gpu.upload(&[0f32; 8]).unwrap(), 8, &views, DType::Q8_0);
    assert!(refused.is_err(), "a cache of q8_0 is refused");
}

/// `values` as a cache of `kv` elements holds them: f32 as they are, f16
/// rounded to nearest.
fn rounded(values: &[f32], kv: DType) -> Vec<f32> {
    match kv {
        DType::F16 => values.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect(),
        DType::BF16 => values.iter().map(|&v| half::bf16::from_f32(v).to_f32()).collect(),
        _ => values.to_vec(),
    }
}

/// `values` on the device as a cache of `kv` elements.
fn upload_kv<E: Executor>(gpu: &Backend<E>, values: &[f32], kv: DType) -> DeviceBuffer<E::Block> {
    match kv {
        DType::F16 => gpu.upload(&values.iter().map(|&v| half::f16::from_f32(v).to_bits()).collect::<Vec<u16>>()),
        DType::BF16 => gpu.upload(&values.iter().map(|&v| half::bf16::from_f32(v).to_bits()).collect::<Vec<u16>>()),
        _ => gpu.upload(values),
    }
    .unwrap()
}

/// The first `count` elements of a cache of `kv` elements, as f32.
fn download_kv<E: Executor>(gpu: &Backend<E>, buffer: &DeviceBuffer<E::Block>, count: usize, kv: DType) -> Vec<f32> {
    match kv {
        DType::F16 => {
            gpu.download::<u16>(buffer, count).unwrap().into_iter().map(|b| half::f16::from_bits(b).to_f32()).collect()
        }
        DType::BF16 => {
            gpu.download::<u16>(buffer, count).unwrap().into_iter().map(|b| half::bf16::from_bits(b).to_f32()).collect()
        }
        _ => gpu.download::<f32>(buffer, count).unwrap(),
    }
}

fn embedding_gathers_the_rows_and_refuses_an_id_past_the_vocabulary<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(19);
    let (vocab, dim) = (100, 64);
    for dtype in [DType::F32, DType::F16, DType::BF16] {
        let table = Tensor::from_f32(rng.vec(vocab * dim), &[vocab, dim]).unwrap().to_dtype(dtype).unwrap();
        let dense = table.to_f32().unwrap().into_owned();
        let on_device = gpu.upload_matrix(&table).unwrap();
        let ids = [3u32, 99, 0, 3];
        let mut out = gpu.alloc(ids.len() * dim * 4).unwrap();
        gpu.embedding(&on_device, &ids, &mut out).unwrap();
        let got: Vec<f32> = gpu.download(&out, ids.len() * dim).unwrap();
        let want: Vec<f32> =
            ids.iter().flat_map(|&id| dense[id as usize * dim..(id as usize + 1) * dim].to_vec()).collect();
        assert_eq!(got, want, "embedding {dtype:?}");
        let err = gpu.embedding(&on_device, &[100], &mut out).unwrap_err();
        assert!(err.to_string().contains("past the vocabulary"), "{err}");
    }
}

fn decode_attention_matches_the_cpu_for_grouped_heads_and_ragged_lengths<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(23);
    let shape = AttentionShape { n_head: 8, n_kv_head: 2, head_dim: 64 };
    let kv_stride = shape.n_kv_head * shape.head_dim;
    let lengths = [1usize, 7, 130];
    for kv in KV_DTYPES {
        // The CPU twin reads the values the cache holds.
        let caches: Vec<(Vec<f32>, Vec<f32>)> = lengths
            .iter()
            .map(|&n| (rounded(&rng.vec(n * kv_stride), kv), rounded(&rng.vec(n * kv_stride), kv)))
            .collect();
        let q = rng.vec(lengths.len() * shape.n_head * shape.head_dim);
        let mut want = vec![0f32; q.len()];
        let sequences: Vec<(&[f32], &[f32])> = caches.iter().map(|(k, v)| (k.as_slice(), v.as_slice())).collect();
        cpu::decode_attention(&q, &sequences, shape, &mut want);
        let on_device: Vec<_> = caches.iter().map(|(k, v)| (upload_kv(gpu, k, kv), upload_kv(gpu, v, kv))).collect();
        let views: Vec<KvView<'_, E::Block>> =
            on_device.iter().zip(lengths).map(|((keys, values), length)| KvView { keys, values, length }).collect();
        let mut out = gpu.alloc(q.len() * 4).unwrap();
        gpu.attention_decode(&gpu.upload(&q).unwrap(), &views, shape, kv, &mut out).unwrap();
        let got: Vec<f32> = gpu.download(&out, q.len()).unwrap();
        assert_close(&format!("attention_decode {kv:?}"), &got, &want, &vec![1.0; q.len()], 1e-5);
    }
}

fn prefill_attention_matches_the_cpu_after_a_cached_prefix<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(31);
    for kv in KV_DTYPES {
        for (shape, start, tokens) in [
            (AttentionShape { n_head: 8, n_kv_head: 2, head_dim: 64 }, 5, 19),
            (AttentionShape { n_head: 2, n_kv_head: 2, head_dim: 128 }, 0, 40),
            (AttentionShape { n_head: 2, n_kv_head: 1, head_dim: 32 }, 40, 1),
        ] {
            let kv_len = (start + tokens) * shape.n_kv_head * shape.head_dim;
            let (keys, values) = (rounded(&rng.vec(kv_len), kv), rounded(&rng.vec(kv_len), kv));
            let q = rng.vec(tokens * shape.n_head * shape.head_dim);
            let mut want = vec![0f32; q.len()];
            cpu::causal_attention(&q, &keys, &values, start, shape, &mut want);
            let mut out = gpu.alloc(q.len() * 4).unwrap();
            let (keys, values) = (upload_kv(gpu, &keys, kv), upload_kv(gpu, &values, kv));
            gpu.attention_prefill(&gpu.upload(&q).unwrap(), &keys, &values, start, tokens, shape, kv, &mut out)
                .unwrap();
            let got: Vec<f32> = gpu.download(&out, q.len()).unwrap();
            let what = format!("attention_prefill {kv:?} {shape:?} from {start}");
            assert_close(&what, &got, &want, &vec![1.0; q.len()], 1e-5);
        }
    }
}

fn softmax_cross_entropy_matches_the_cpu_loss_and_gradient<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(37);
    let (vocab, targets) = (49152, [0u32, 17, 49151]);
    let logits: Vec<f32> = rng.vec(targets.len() * vocab).iter().map(|v| 4.0 * v).collect();
    let mut want = logits.clone();
    let want_loss = cpu::softmax_cross_entropy(&mut want, vocab, &targets, 0.5).unwrap();
    let mut on_device = gpu.upload(&logits).unwrap();
    let losses = gpu.softmax_cross_entropy(&mut on_device, vocab, &targets, 0.5).unwrap();
    let loss: f64 = losses.iter().map(|&l| l as f64).sum();
    assert!((loss - want_loss).abs() <= 1e-5 * want_loss.abs(), "loss: GPU {loss}, CPU {want_loss}");
    let got: Vec<f32> = gpu.download(&on_device, logits.len()).unwrap();
    let magnitude: Vec<f32> = want.iter().map(|v| v.abs() + 1e-3).collect();
    assert_close("softmax_xent gradient", &got, &want, &magnitude, 1e-4);
    let err = gpu.softmax_cross_entropy(&mut on_device, vocab, &[vocab as u32], 1.0).unwrap_err();
    assert!(err.to_string().contains("past the vocabulary"), "{err}");
}

fn backward_of_silu_mul_and_rms_norm_match_the_cpu<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(41);
    let n = 777;
    let (gate, up, dact) = (rng.vec(n), rng.vec(n), rng.vec(n));
    let (mut want_dgate, mut want_dup) = (vec![0f32; n], vec![0f32; n]);
    cpu::silu_mul_backward(&gate, &up, &dact, &mut want_dgate, &mut want_dup);
    let (mut dgate, mut dup) = (gpu.alloc(n * 4).unwrap(), gpu.alloc(n * 4).unwrap());
    let upload = |v: &[f32]| gpu.upload(v).unwrap();
    gpu.silu_mul_backward(&upload(&gate), &upload(&up), &upload(&dact), &mut dgate, &mut dup, n).unwrap();
    let scale = |v: &[f32]| v.iter().map(|x| x.abs() + 1e-2).collect::<Vec<f32>>();
    assert_close("dgate", &gpu.download::<f32>(&dgate, n).unwrap(), &want_dgate, &scale(&want_dgate), 1e-5);
    assert_close("dup", &gpu.download::<f32>(&dup, n).unwrap(), &want_dup, &scale(&want_dup), 1e-5);

    let (rows, dim) = (5, 576);
    let (x, weight, dy, dx0) = (rng.vec(rows * dim), rng.vec(dim), rng.vec(rows * dim), rng.vec(rows * dim));
    let (mut want_dx, mut want_dweight) = (dx0.clone(), vec![0.25f32; dim]);
    cpu::rms_norm_backward(&x, &weight, 1e-5, &dy, &mut want_dx, Some(&mut want_dweight));
    let (mut dx, mut dweight) = (upload(&dx0), upload(&vec![0.25f32; dim]));
    gpu.rms_norm_backward(&upload(&x), &upload(&weight), &upload(&dy), &mut dx, Some(&mut dweight), rows, dim, 1e-5)
        .unwrap();
    assert_close("rms_norm dx", &gpu.download::<f32>(&dx, rows * dim).unwrap(), &want_dx, &scale(&want_dx), 1e-4);
    let got_dweight = gpu.download::<f32>(&dweight, dim).unwrap();
    assert_close("rms_norm dweight", &got_dweight, &want_dweight, &scale(&want_dweight), 1e-4);
}

fn lora_rows_of_different_adapters_in_one_launch_match_the_cpu_deltas<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(29);
    let (in_dim, out_dim, rows) = (96, 80, 4);
    let pair = |rng: &mut Rng, rank: usize| {
        let (a, b) = (rng.vec(rank * in_dim), rng.vec(out_dim * rank));
        LoraPair::new(rank, in_dim, out_dim, LoraMatrix::F32(a), LoraMatrix::F32(b)).unwrap()
    };
    let (first, second) = (pair(&mut rng, 8), pair(&mut rng, 4));
    let (x, base) = (rng.vec(rows * in_dim), rng.vec(rows * out_dim));
    let mut delta = vec![0f32; rows * out_dim];
    let groups =
        [LoraGroup { pair: &first, rows: &[0, 2], output: 0 }, LoraGroup { pair: &second, rows: &[1], output: 0 }];
    cpu::lora_deltas_on(LoraKernel::Scalar, &x, rows, &groups, &mut [&mut delta[..]], &mut Vec::new()).unwrap();
    let want: Vec<f32> = base.iter().zip(&delta).map(|(b, d)| b + d).collect();
    let (first_device, second_device) = (gpu.upload_lora(&first).unwrap(), gpu.upload_lora(&second).unwrap());
    let adapters = [Some(&first_device), Some(&second_device), Some(&first_device), None];
    let x_device = gpu.upload(&x).unwrap();
    for launch in [LoraLaunch::Rows, LoraLaunch::Segments] {
        let mut y = gpu.upload(&base).unwrap();
        gpu.lora_on(launch, &x_device, &adapters, &mut y).unwrap();
        let got: Vec<f32> = gpu.download(&y, rows * out_dim).unwrap();
        let scale: Vec<f32> = delta.iter().map(|d| d.abs() + 1.0).collect();
        assert_close(&format!("lora {launch:?}"), &got, &want, &scale, 1e-4);
        assert_eq!(&got[3 * out_dim..], &base[3 * out_dim..], "a row without an adapter is left as it was");
    }
}

fn lora_segments_of_a_prompt_match_rows_bit_for_bit_and_the_cpu<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(43);
    let (in_dim, out_dim) = (64, 96);
    let pair = |rng: &mut Rng, rank: usize| {
        let (a, b) = (rng.vec(rank * in_dim), rng.vec(out_dim * rank));
        LoraPair::new(rank, in_dim, out_dim, LoraMatrix::F32(a), LoraMatrix::F32(b)).unwrap()
    };
    let (first, second) = (pair(&mut rng, 16), pair(&mut rng, 4));
    // Runs of 20 (past one 16-row tile), 1 without, 3, and a lone row.
    let owners: Vec<Option<usize>> =
        [vec![Some(0); 20], vec![None], vec![Some(1); 3], vec![Some(0)]].into_iter().flatten().collect();
    let rows = owners.len();
    let (x, base) = (rng.vec(rows * in_dim), rng.vec(rows * out_dim));
    let rows_of = |adapter: usize| -> Vec<usize> { (0..rows).filter(|&r| owners[r] == Some(adapter)).collect() };
    let (first_rows, second_rows) = (rows_of(0), rows_of(1));
    let groups = [
        LoraGroup { pair: &first, rows: &first_rows, output: 0 },
        LoraGroup { pair: &second, rows: &second_rows, output: 0 },
    ];
    let mut delta = vec![0f32; rows * out_dim];
    cpu::lora_deltas_on(LoraKernel::Scalar, &x, rows, &groups, &mut [&mut delta[..]], &mut Vec::new()).unwrap();
    let want: Vec<f32> = base.iter().zip(&delta).map(|(b, d)| b + d).collect();
    let on_device = [gpu.upload_lora(&first).unwrap(), gpu.upload_lora(&second).unwrap()];
    let adapters: Vec<_> = owners.iter().map(|owner| owner.map(|i| &on_device[i])).collect();
    let x_device = gpu.upload(&x).unwrap();
    let mut results = Vec::new();
    for launch in [LoraLaunch::Rows, LoraLaunch::Segments] {
        let mut y = gpu.upload(&base).unwrap();
        gpu.lora_on(launch, &x_device, &adapters, &mut y).unwrap();
        results.push(gpu.download::<f32>(&y, rows * out_dim).unwrap());
    }
    let scale: Vec<f32> = delta.iter().map(|d| d.abs() + 1.0).collect();
    assert_close("lora segments", &results[1], &want, &scale, 1e-4);
    assert_eq!(results[0], results[1], "SGMV and BGMV sum in the same order");
}

#[test]
fn past_the_pool_budget_a_request_fails_with_a_typed_error_and_the_device_serves_on() {
    let Some(gpu) = tailor_tensor::cuda::testing::gpu_if_asked(4 << 20) else { return };
    let held = gpu.alloc(3 << 20).unwrap();
    let err = gpu.alloc(2 << 20).err().expect("4 + 2 MiB exceed the 4 MiB budget");
    assert!(matches!(err, TensorError::DeviceOutOfMemory { .. }), "{err}");
    drop(held);
    let x = gpu.upload(&[1.0f32, 2.0]).unwrap();
    assert_eq!(gpu.download::<f32>(&x, 2).unwrap(), [1.0, 2.0]);
}
