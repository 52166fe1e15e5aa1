//! The decoder on the device against the same decoder on the CPU, on a
//! small random Llama (heads of 32, GQA) written as a real GGUF and loaded
//! as stored or quantized: prefill logits, greedy decoding, a decode batch
//! of sequences at different lengths with different adapters, and the
//! typed errors. Each check runs on the CPU emulation of the kernels
//! (everywhere) and on a GPU with TAILOR_CUDA_TESTS=1 (benches/cuda/run.sh).
#![cfg(feature = "cuda")]

mod common;

use std::path::Path;
use std::sync::Arc;
use tailor_model::device::{DeviceAdapter, DeviceKvCache, DeviceLlama};
use tailor_model::llama::Logits;
use tailor_model::lora::{ActiveAdapter, Adapter, AdapterLimits};
use tailor_model::{LoadOptions, Model};
use tailor_tensor::cuda::backend::{Backend, Executor};
use tailor_tensor::cuda::testing::emulated;
use tailor_tensor::DType;

tailor_tensor::on_gpu_and_emulator!(
    prefill_logits_match_the_cpu_for_stored_and_quantized_weights,
    prefill_gpu,
    prefill_emulated
);
tailor_tensor::on_gpu_and_emulator!(greedy_decoding_matches_the_cpu_token_for_token, greedy_gpu, greedy_emulated);
tailor_tensor::on_gpu_and_emulator!(
    a_decode_batch_with_different_adapters_matches_each_sequence_on_the_cpu,
    batch_gpu,
    batch_emulated
);
tailor_tensor::on_gpu_and_emulator!(
    bad_input_is_a_typed_error_and_the_device_model_serves_on,
    errors_gpu,
    errors_emulated
);

/// Past the memory budget: a prompt whose keys and values do not fit is a
/// typed out-of-memory error, its cache keeps what it held, and shorter
/// work runs on (the emulator only: the budget is counted the same way on
/// a GPU, whose pool tests are in tailor-tensor).
#[test]
fn past_the_device_memory_budget_a_request_fails_typed_and_the_model_serves_on() {
    let dir = common::scratch_dir(&format!("device-oom-{}", std::process::id()));
    let model = load(&dir, None);
    let probe = emulated(1 << 30);
    DeviceLlama::upload(&model.llama, &probe).unwrap();
    let weights = probe.pool_stats().peak;
    // Room for the weights and about half a context of work, not a whole one.
    let backend = emulated(weights + (160 << 10));
    let on_device = DeviceLlama::upload(&model.llama, &backend).unwrap();
    let mut cache = on_device.new_cache(4).unwrap();
    on_device.forward(&PROMPT, &mut cache, Logits::Last, None).unwrap();
    let long = vec![104u32; model.llama.context_length() - PROMPT.len()];
    let err = on_device.forward(&long, &mut cache, Logits::Last, None).expect_err("the budget is exceeded");
    assert!(
        matches!(err, tailor_model::ModelError::Tensor(tailor_tensor::TensorError::DeviceOutOfMemory { .. })),
        "{err:?}"
    );
    assert_eq!(cache.len(), PROMPT.len(), "the failed prompt left the cache as it was");
    let next = on_device.forward_decode(&[101], &mut [&mut cache], &[]).unwrap();
    assert_eq!(next.len(), model.llama.config().vocab_size, "decoding goes on after the failure");
}

fn load(dir: &Path, dtype: Option<DType>) -> Model {
    let path = common::write_gguf(dir, &common::device_config(), "llama", 41);
    Model::load(&path, LoadOptions { dtype, ..LoadOptions::default() }).unwrap()
}

/// The largest |a − b| over the largest |b|.
fn relative_gap(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let gap = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max);
    gap / b.iter().map(|v| v.abs()).fold(1e-6, f32::max)
}

fn argmax(values: &[f32]) -> u32 {
    values.iter().enumerate().max_by(|a, b| a.1.total_cmp(b.1)).map(|(i, _)| i as u32).unwrap()
}

const PROMPT: [u32; 11] = [257, 104, 101, 108, 108, 111, 32, 119, 111, 114, 108];

fn prefill_logits_match_the_cpu_for_stored_and_quantized_weights<E: Executor>(backend: &Backend<E>) {
    let dir = common::scratch_dir(&format!("device-prefill-{}", std::process::id()));
    // f32 products agree to rounding (and so do the top tokens); an f16
    // cache rounds keys and values to 11 bits, a bf16 one to 8; quantized
    // weights differ in how the activations are taken (the CPU quantizes
    // them to 8 bits, the device keeps f32), within what 8-bit activations
    // cost (a random model's near-ties may then swap). Every stored type's
    // kernel is checked on its own in tailor-tensor's cuda_kernels.
    for (dtype, kv, tolerance) in [
        (None, DType::F32, 1e-4),
        (None, DType::F16, 5e-3),
        (None, DType::BF16, 4e-2),
        (Some(DType::Q4_0), DType::F32, 3e-2),
    ] {
        let model = load(&dir, dtype);
        let llama = &model.llama;
        let want = llama.forward(&PROMPT, &mut llama.new_cache(), Logits::All).unwrap();
        let mut on_device = DeviceLlama::upload(llama, backend).unwrap();
        on_device.set_kv_dtype(kv).unwrap();
        let mut cache = on_device.new_cache(4).unwrap();
        let got = on_device.forward(&PROMPT, &mut cache, Logits::All, None).unwrap();
        // A few steps after it, through the cache.
        let mut cpu_cache = llama.new_cache();
        llama.forward(&PROMPT, &mut cpu_cache, Logits::Last).unwrap();
        for token in [101u32, 108, 32] {
            let want = llama.forward(&[token], &mut cpu_cache, Logits::Last).unwrap();
            let got = on_device.forward_decode(&[token], &mut [&mut cache], &[]).unwrap();
            let gap = relative_gap(&got, &want);
            assert!(gap <= tolerance, "{dtype:?}, {kv:?} cache: a decode step differs from the CPU's by {gap}");
        }
        let gap = relative_gap(&got, &want);
        assert!(gap <= tolerance, "{dtype:?}, {kv:?} cache: device logits differ from the CPU's by {gap} (relative)");
        assert_eq!(cache.len(), PROMPT.len() + 3);
        assert!(cache.capacity() >= cache.len(), "the cache grew to hold the prompt");
        let vocab = llama.config().vocab_size;
        for row in (0..PROMPT.len()).filter(|_| dtype.is_none() && kv == DType::F32) {
            let (g, w) = (&got[row * vocab..(row + 1) * vocab], &want[row * vocab..(row + 1) * vocab]);
            assert_eq!(argmax(g), argmax(w), "{dtype:?}: top token of position {row}");
        }
    }
    let model = load(&dir, None);
    let mut on_device = DeviceLlama::upload(&model.llama, backend).unwrap();
    assert!(on_device.set_kv_dtype(DType::Q8_0).is_err(), "a q8_0 cache is refused");
}

fn greedy_decoding_matches_the_cpu_token_for_token<E: Executor>(backend: &Backend<E>) {
    let dir = common::scratch_dir(&format!("device-greedy-{}", std::process::id()));
    let model = load(&dir, None);
    let llama = &model.llama;
    let steps = 8;
    let mut cpu_cache = llama.new_cache();
    let mut token = argmax(&llama.forward(&PROMPT, &mut cpu_cache, Logits::Last).unwrap());
    let mut want = vec![token];
    for _ in 1..steps {
        token = argmax(&llama.forward(&[token], &mut cpu_cache, Logits::Last).unwrap());
        want.push(token);
    }
    let on_device = DeviceLlama::upload(llama, backend).unwrap();
    let mut cache = on_device.new_cache(1).unwrap();
    let mut token = argmax(&on_device.forward(&PROMPT, &mut cache, Logits::Last, None).unwrap());
    let mut got = vec![token];
    for _ in 1..steps {
        token = argmax(&on_device.forward_decode(&[token], &mut [&mut cache], &[]).unwrap());
        got.push(token);
    }
    assert_eq!(got, want, "greedy tokens, device vs CPU");
    assert_eq!(cache.len(), PROMPT.len() + steps - 1);
}

fn a_decode_batch_with_different_adapters_matches_each_sequence_on_the_cpu<E: Executor>(backend: &Backend<E>) {
    let dir = common::scratch_dir(&format!("device-batch-{}", std::process::id()));
    let model = load(&dir, Some(DType::Q8_0));
    let llama = &model.llama;
    let actives: Vec<ActiveAdapter> = [(1, 1.0), (2, 0.5)]
        .into_iter()
        .map(|(seed, scale)| {
            let folder = dir.join(format!("adapter-{seed}"));
            common::write_adapter(&folder, llama.config(), seed);
            let adapter = Adapter::load(&folder, llama, AdapterLimits::default()).unwrap();
            ActiveAdapter::new(Arc::new(adapter), scale).unwrap()
        })
        .collect();
    let on_device = DeviceLlama::upload(llama, backend).unwrap();
    let device_adapters: Vec<DeviceAdapter<E::Block>> =
        actives.iter().map(|a| on_device.upload_adapter(a).unwrap()).collect();
    // Three sequences at different lengths: base, adapter 1, adapter 2 at half strength.
    let prompts: [&[u32]; 3] = [&PROMPT[..3], &PROMPT, &PROMPT[2..9]];
    let cpu_adapters = [None, Some(&actives[0]), Some(&actives[1])];
    let row_adapters = [None, Some(&device_adapters[0]), Some(&device_adapters[1])];
    let mut caches: Vec<DeviceKvCache<E::Block>> = Vec::new();
    let mut want = Vec::new();
    for ((prompt, cpu_adapter), device_adapter) in prompts.iter().zip(cpu_adapters).zip(row_adapters) {
        let mut cpu_cache = llama.new_cache();
        llama.forward_adapted(prompt, &mut cpu_cache, Logits::Last, cpu_adapter).unwrap();
        want.extend(llama.forward_adapted(&[100], &mut cpu_cache, Logits::Last, cpu_adapter).unwrap());
        let mut cache = on_device.new_cache(prompt.len()).unwrap();
        on_device.forward(prompt, &mut cache, Logits::Last, device_adapter).unwrap();
        caches.push(cache);
    }
    let mut batch: Vec<&mut DeviceKvCache<E::Block>> = caches.iter_mut().collect();
    let got = on_device.forward_decode(&[100, 100, 100], &mut batch, &row_adapters).unwrap();
    let vocab = llama.config().vocab_size;
    for row in 0..3 {
        let (g, w) = (&got[row * vocab..(row + 1) * vocab], &want[row * vocab..(row + 1) * vocab]);
        let gap = relative_gap(g, w);
        assert!(gap <= 3e-2, "row {row}: the batch's logits differ from its CPU run by {gap} (relative)");
        assert_eq!(argmax(g), argmax(w), "row {row}: top token");
    }
    let base_vs_adapted = relative_gap(&got[vocab..2 * vocab], &got[..vocab]);
    assert!(base_vs_adapted > 0.05, "the adapters change the logits ({base_vs_adapted})");
}

fn bad_input_is_a_typed_error_and_the_device_model_serves_on<E: Executor>(backend: &Backend<E>) {
    let dir = common::scratch_dir(&format!("device-errors-{}", std::process::id()));
    let unsupported = load(&dir, Some(DType::Q5_0));
    let refused = DeviceLlama::upload(&unsupported.llama, backend).err().expect("q5_0 has no device kernel");
    assert!(refused.to_string().contains("Q5_0"), "{refused}");

    let model = load(&dir, None);
    let on_device = DeviceLlama::upload(&model.llama, backend).unwrap();
    let mut cache = on_device.new_cache(8).unwrap();
    let vocab = model.llama.config().vocab_size as u32;
    assert!(on_device.forward(&[], &mut cache, Logits::Last, None).is_err(), "an empty prompt");
    assert!(on_device.forward(&[1, vocab], &mut cache, Logits::Last, None).is_err(), "a token past the vocabulary");
    let too_long = vec![1u32; model.llama.context_length() + 1];
    assert!(on_device.forward(&too_long, &mut cache, Logits::Last, None).is_err(), "past the context");
    assert!(on_device.forward_decode(&[1, 2], &mut [&mut cache], &[]).is_err(), "two tokens for one cache");
    assert_eq!(cache.len(), 0, "nothing failed half way into the cache");
    let logits = on_device.forward(&PROMPT, &mut cache, Logits::Last, None).unwrap();
    assert_eq!(logits.len(), vocab as usize, "it serves on after the errors");
}
