//! Training's backward ops on the device against their CPU twins (the ops
//! tailor-train runs), on random values and shapes that cross every tile of
//! the kernels: on the GPU with the feature `cuda` and TAILOR_CUDA_TESTS=1,
//! and on the CPU emulation of the same kernel source everywhere.
#![cfg(feature = "cuda")]

mod common;

use common::{assert_close, Rng};
use tailor_tensor::cpu::{self, AttentionShape, BackwardScratch, LoraBackward, LoraMatrix, LoraPair, RopeTable};
use tailor_tensor::cuda::backend::{Backend, Executor, LINEAR_DTYPES};
use tailor_tensor::Tensor;

tailor_tensor::on_gpu_and_emulator!(
    linear_input_gradient_matches_the_cpu_for_every_stored_type,
    linear_backward_gpu,
    linear_backward_emulated
);
tailor_tensor::on_gpu_and_emulator!(
    weight_and_adapter_gradients_match_the_cpu,
    weight_grads_gpu,
    weight_grads_emulated
);
tailor_tensor::on_gpu_and_emulator!(
    attention_backward_matches_the_cpu_over_packed_sequences_and_grouped_heads,
    attention_backward_gpu,
    attention_backward_emulated
);
tailor_tensor::on_gpu_and_emulator!(
    rope_and_embedding_backward_match_the_cpu,
    rope_embedding_backward_gpu,
    rope_embedding_backward_emulated
);

/// Magnitudes to compare against: each value's own, plus `floor`.
fn magnitudes(values: &[f32], floor: f32) -> Vec<f32> {
    values.iter().map(|v| v.abs() + floor).collect()
}

fn linear_input_gradient_matches_the_cpu_for_every_stored_type<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(47);
    // 40 rows: two stages of 32; 11 tokens: two blocks of 8; 288 inputs:
    // 9 units, a block of 8 and one of 1 (the k-quants' 256-element super
    // blocks take 768: three whole blocks).
    let (rows, tokens) = (40, 11);
    for dtype in LINEAR_DTYPES {
        let cols = if dtype.block_size() == 256 { 768 } else { 288 };
        let weights = Tensor::from_f32(rng.vec(rows * cols), &[rows, cols]).unwrap().to_dtype(dtype).unwrap();
        let (dy, dx0) = (rng.vec(tokens * rows), rng.vec(tokens * cols));
        // The device multiplies in f32: so does the reference, on the
        // weights dequantized exactly (on AVX-512 BF16 the CPU would
        // otherwise multiply bf16 and block formats in bf16).
        let dense = Tensor::from_f32(weights.to_f32().unwrap().into_owned(), &[rows, cols]).unwrap();
        let mut want = dx0.clone();
        cpu::linear_backward_input(&dy, tokens, &dense, &mut want, &mut BackwardScratch::default()).unwrap();
        let mut dx = gpu.upload(&dx0).unwrap();
        let on_device = gpu.upload_matrix(&weights).unwrap();
        gpu.linear_backward_input(&on_device, &gpu.upload(&dy).unwrap(), tokens, &mut dx).unwrap();
        let got: Vec<f32> = gpu.download(&dx, tokens * cols).unwrap();
        // Scale: Σ|dy·w| over the rows, bounded by √rows·max as a simpler
        // stand-in (values are unit normals).
        let scale = vec![(rows as f32).sqrt() * 4.0; got.len()];
        assert_close(&format!("linear_backward_input {dtype:?}"), &got, &want, &scale, 1e-5);
    }
}

fn weight_and_adapter_gradients_match_the_cpu<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(53);
    let (tokens, in_dim, out_dim, rank, scaling) = (19, 72, 40, 8, 2.0f32);
    let upload = |v: &[f32]| gpu.upload(v).unwrap();
    let (x, dy) = (rng.vec(tokens * in_dim), rng.vec(tokens * out_dim));

    let dw0 = rng.vec(out_dim * in_dim);
    let mut want_dw = dw0.clone();
    cpu::linear_backward_weight(&dy, &x, tokens, &mut want_dw);
    let mut dw = upload(&dw0);
    gpu.linear_backward_weight(&upload(&dy), &upload(&x), tokens, &mut dw, [out_dim, in_dim]).unwrap();
    let got_dw: Vec<f32> = gpu.download(&dw, dw0.len()).unwrap();
    assert_close("linear_backward_weight", &got_dw, &want_dw, &vec![tokens as f32; dw0.len()], 1e-5);

    let (a, b) = (rng.vec(rank * in_dim), rng.vec(out_dim * rank));
    let (da0, db0, dx0) = (rng.vec(rank * in_dim), rng.vec(out_dim * rank), rng.vec(tokens * in_dim));
    let (mut want_da, mut want_db, mut want_dx) = (da0.clone(), db0.clone(), dx0.clone());
    let cpu_backward = LoraBackward { a: &a, b: &b, rank, scaling };
    cpu_backward.run(&x, &dy, tokens, &mut want_da, &mut want_db, &mut want_dx, &mut Vec::new());
    let pair = LoraPair::new(rank, in_dim, out_dim, LoraMatrix::F32(a.clone()), LoraMatrix::F32(b.clone())).unwrap();
    let lora = gpu.upload_lora(&pair).unwrap();
    let (mut da, mut db, mut dx) = (upload(&da0), upload(&db0), upload(&dx0));
    gpu.lora_backward(&lora, scaling, &upload(&x), &upload(&dy), tokens, &mut da, &mut db, &mut dx).unwrap();
    // Each gradient is a sum of a few hundred products of unit normals.
    let scale = |n: usize| vec![200.0f32; n];
    assert_close("lora dA", &gpu.download::<f32>(&da, da0.len()).unwrap(), &want_da, &scale(da0.len()), 1e-5);
    assert_close("lora dB", &gpu.download::<f32>(&db, db0.len()).unwrap(), &want_db, &scale(db0.len()), 1e-5);
    assert_close("lora dx", &gpu.download::<f32>(&dx, dx0.len()).unwrap(), &want_dx, &scale(dx0.len()), 1e-5);
}

fn attention_backward_matches_the_cpu_over_packed_sequences_and_grouped_heads<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(59);
    for (shape, lengths) in [
        (AttentionShape { n_head: 4, n_kv_head: 2, head_dim: 64 }, vec![5usize, 13, 1]),
        (AttentionShape { n_head: 2, n_kv_head: 1, head_dim: 32 }, vec![9]),
        (AttentionShape { n_head: 1, n_kv_head: 1, head_dim: 128 }, vec![3, 4]),
    ] {
        let tokens: usize = lengths.iter().sum();
        let (q_len, kv_len) = (tokens * shape.n_head * shape.head_dim, tokens * shape.n_kv_head * shape.head_dim);
        let (q, k, v, dout) = (rng.vec(q_len), rng.vec(kv_len), rng.vec(kv_len), rng.vec(q_len));
        let (mut want_dq, mut want_dk, mut want_dv) = (vec![0f32; q_len], vec![0f32; kv_len], vec![0f32; kv_len]);
        cpu::causal_attention_backward(&q, &k, &v, &dout, shape, &lengths, &mut want_dq, &mut want_dk, &mut want_dv);
        let upload = |values: &[f32]| gpu.upload(values).unwrap();
        let (q_d, k_d, v_d, dout_d) = (upload(&q), upload(&k), upload(&v), upload(&dout));
        // Written over: start from garbage.
        let (mut dq, mut dk, mut dv) =
            (upload(&vec![7.0; q_len]), upload(&vec![7.0; kv_len]), upload(&vec![7.0; kv_len]));
        gpu.causal_attention_backward([&q_d, &k_d, &v_d, &dout_d], shape, &lengths, &mut dq, &mut dk, &mut dv).unwrap();
        let what = |grad: &str| format!("attention {grad} {shape:?} {lengths:?}");
        let got_dq: Vec<f32> = gpu.download(&dq, q_len).unwrap();
        assert_close(&what("dq"), &got_dq, &want_dq, &magnitudes(&want_dq, 1.0), 1e-4);
        let got_dk: Vec<f32> = gpu.download(&dk, kv_len).unwrap();
        assert_close(&what("dk"), &got_dk, &want_dk, &magnitudes(&want_dk, 1.0), 1e-4);
        let got_dv: Vec<f32> = gpu.download(&dv, kv_len).unwrap();
        assert_close(&what("dv"), &got_dv, &want_dv, &magnitudes(&want_dv, 1.0), 1e-4);
    }
}

fn rope_and_embedding_backward_match_the_cpu<E: Executor>(gpu: &Backend<E>) {
    let mut rng = Rng(61);
    let (head_dim, n_heads, start, tokens) = (64, 3, 5, 7);
    let table = RopeTable::new(head_dim, &RopeTable::default_inv_freq(head_dim, 10000.0), 64);
    let grad = rng.vec(tokens * n_heads * head_dim);
    let mut want = grad.clone();
    table.apply_inverse(&mut want, n_heads, start);
    let positions: Vec<usize> = (start..start + tokens).collect();
    let mut on_device = gpu.upload(&grad).unwrap();
    gpu.rope_backward(&mut on_device, &gpu.upload_rope(&table).unwrap(), &positions, n_heads).unwrap();
    let got: Vec<f32> = gpu.download(&on_device, grad.len()).unwrap();
    assert_close("rope_backward", &got, &want, &vec![1.0; grad.len()], 1e-6);

    let (vocab, dim) = (50, 300);
    let ids = [3u32, 49, 0, 3, 3];
    let (dy, dtable0) = (rng.vec(ids.len() * dim), rng.vec(vocab * dim));
    let mut want = dtable0.clone();
    for (t, &id) in ids.iter().enumerate() {
        for d in 0..dim {
            want[id as usize * dim + d] += dy[t * dim + d];
        }
    }
    let mut dtable = gpu.upload(&dtable0).unwrap();
    gpu.embedding_backward(&gpu.upload(&dy).unwrap(), &ids, &mut dtable, vocab, dim).unwrap();
    assert_eq!(gpu.download::<f32>(&dtable, vocab * dim).unwrap(), want, "embedding_backward, tokens in order");
    let err = gpu.embedding_backward(&gpu.upload(&dy).unwrap(), &[50], &mut dtable, vocab, dim).unwrap_err();
    assert!(err.to_string().contains("past the vocabulary"), "{err}");
}
