//! The continuous-batching engine on the device (the CPU emulation of the
//! kernels everywhere; a GPU with TAILOR_CUDA_TESTS=1): requests with
//! different adapters, greedy and sampled, joining a running batch and
//! reusing a cached prefix, each produce what it produces alone on the
//! device and what the CPU engine produces; past the device memory budget
//! a request fails alone and the engine serves on; a model the device
//! cannot take is refused before any request.
#![cfg(feature = "cuda")]

#[path = "../../model/tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tailor_engine::{Engine, EngineOptions, Event};
use tailor_model::device::{DeviceDecoder, DeviceLlama, DeviceOptions};
use tailor_model::{ActiveAdapter, Adapter, AdapterLimits, GenerateParams, LoadOptions, Model, SamplingParams};
use tailor_tensor::cuda::backend::{Backend, Executor};
use tailor_tensor::cuda::testing::{emulated, gpu_if_asked};
use tailor_tensor::DType;

#[test]
fn batched_requests_on_the_gpu_match_their_solo_runs() {
    if let Some(gpu) = gpu_if_asked(8 << 30) {
        batched_requests_match_solo_runs_and_the_cpu(gpu, || gpu_if_asked(8 << 30).unwrap());
    }
}

#[test]
fn batched_requests_on_the_emulator_match_their_solo_runs() {
    batched_requests_match_solo_runs_and_the_cpu(emulated(1 << 30), || emulated(1 << 30));
}

/// Device options keeping `adapter_slots` adapters.
fn slots(adapter_slots: usize) -> DeviceOptions {
    DeviceOptions { adapter_slots, ..DeviceOptions::default() }
}

/// A prompt of `len` tokens from `seed` (bytes of the tiny vocabulary).
fn prompt(seed: u32, len: usize) -> Vec<u32> {
    (0..len as u32).map(|i| 97 + (i * 7 + seed * 13) % 26).collect()
}

fn load(dir: &Path, dtype: Option<DType>) -> Arc<Model> {
    let path = common::write_gguf(dir, &common::device_config(), "llama", 41);
    Arc::new(Model::load(&path, LoadOptions { dtype, ..LoadOptions::default() }).unwrap())
}

fn adapters(dir: &Path, model: &Model) -> Vec<ActiveAdapter> {
    [(1, 1.0), (2, 0.5)]
        .into_iter()
        .map(|(seed, scale)| {
            let folder = dir.join(format!("adapter-{seed}"));
            common::write_adapter(&folder, model.llama.config(), seed);
            let adapter = Adapter::load(&folder, &model.llama, AdapterLimits::default()).unwrap();
            ActiveAdapter::new(Arc::new(adapter), scale).unwrap()
        })
        .collect()
}

/// Tokens and finish reason of one generation.
fn collect(events: tailor_engine::Submission) -> (Vec<u32>, String) {
    let mut tokens = Vec::new();
    for event in events {
        match event {
            Event::Token(t) => tokens.push(t.id),
            Event::Done(g) => return (tokens, format!("{:?}", g.finish)),
            Event::Failed(e) => return (tokens, format!("failed: {e}")),
        }
    }
    (tokens, "no end event".into())
}

/// One generation alone on the device, through the same `Sequence` and
/// `Decoder` the engine drives (`generate_on`, as `tailor --device cuda
/// generate` runs it).
fn solo<E: Executor>(
    model: &Model,
    decoder: &mut DeviceDecoder<'_, E>,
    prompt: &[u32],
    params: &GenerateParams,
) -> Vec<u32> {
    tailor_model::generate_on(model, decoder, prompt, params, &mut |_| true).unwrap().tokens
}

fn batched_requests_match_solo_runs_and_the_cpu<E>(backend: Backend<E>, another: impl Fn() -> Backend<E>)
where
    E: Executor + 'static,
    Backend<E>: Send,
{
    let dir = common::scratch_dir("device-engine");
    let model = load(&dir, None);
    let actives = adapters(&dir, &model);
    let greedy = SamplingParams::default();
    let sampled = SamplingParams { temperature: 0.8, top_p: 0.9, seed: 7, ..SamplingParams::default() };
    let with = |max_tokens, sampling: &SamplingParams, adapter: Option<&ActiveAdapter>| GenerateParams {
        max_tokens,
        sampling: sampling.clone(),
        adapter: adapter.cloned(),
        ..GenerateParams::default()
    };
    let first = prompt(1, 20);
    let shares_first = [&first[..16], &prompt(5, 6)[..]].concat();
    // A batch of at most 2: the others wait and join as earlier ones leave;
    // the last shares the first's 16 opening tokens (a prefix reuse).
    let requests = [
        (first.clone(), with(5, &greedy, None)),
        (prompt(2, 9), with(6, &sampled, Some(&actives[0]))),
        (prompt(3, 14), with(4, &greedy, Some(&actives[1]))),
        (shares_first, with(5, &greedy, None)),
    ];
    let options = EngineOptions { max_batch: 2, ..EngineOptions::default() };
    let engine = Engine::start_on_device(model.clone(), backend, options, slots(4)).unwrap();
    let submissions: Vec<_> = requests.iter().map(|(p, params)| engine.submit(p.clone(), params.clone())).collect();
    let batched: Vec<(Vec<u32>, String)> = submissions.into_iter().map(collect).collect();
    let cpu = Engine::start(model.clone(), options);
    let alone = another();
    let mut decoder = DeviceDecoder::new(DeviceLlama::upload(&model.llama, &alone).unwrap(), 4);
    for (i, ((p, params), (tokens, finish))) in requests.iter().zip(&batched).enumerate() {
        assert!(!finish.starts_with("failed"), "request {i}: {finish}");
        assert_eq!(tokens, &solo(&model, &mut decoder, p, params), "request {i}: batched on the device vs alone");
        let (on_cpu, _) = collect(cpu.submit(p.clone(), params.clone()));
        assert_eq!(tokens, &on_cpu, "request {i}: device engine vs CPU engine");
    }
    let stats = engine.stats();
    let (steps, tokens) = (stats.steps.load(Ordering::Relaxed), stats.decoded_tokens.load(Ordering::Relaxed));
    assert!(tokens > steps, "requests shared decode steps ({tokens} tokens in {steps} steps)");
    assert_eq!(stats.prefix_hits.load(Ordering::Relaxed), 1, "the last prompt reused the first's prefix");
}

/// A pool with room for the weights and a little work: a prompt whose
/// keys and values do not fit fails alone, with the device's typed error,
/// and the engine serves the next request (the emulator only: the pool
/// counts the same way on a GPU).
#[test]
fn past_the_device_budget_a_request_fails_and_the_engine_serves_on() {
    let dir = common::scratch_dir("device-engine-oom");
    let model = load(&dir, None);
    let probe = emulated(1 << 30);
    DeviceLlama::upload(&model.llama, &probe).unwrap();
    let weights = probe.pool_stats().peak;
    let options = EngineOptions { prefix_cache_bytes: 0, ..EngineOptions::default() };
    let engine = Engine::start_on_device(model.clone(), emulated(weights + (160 << 10)), options, slots(4)).unwrap();
    let params = GenerateParams { max_tokens: 2, ..GenerateParams::default() };
    let long = prompt(4, model.llama.context_length() - 8);
    let (_, failed) = collect(engine.submit(long, params.clone()));
    assert!(failed.contains("out of device memory"), "{failed}");
    let (tokens, finish) = collect(engine.submit(prompt(1, 10), params));
    assert!(!finish.starts_with("failed") && !tokens.is_empty(), "the engine serves on: {finish}");
}

/// Two sequences decode together while their caches grow (from 2
/// positions, doubling); the device has room for one cache of 64
/// positions and a little more, not for that and the other's 32. When the
/// longer one's growth fails, it alone fails with the device's typed
/// error: the step is taken again without it and the other runs to its
/// end (emulator only: the pool counts the same way on a GPU).
#[test]
fn a_decode_step_past_the_device_budget_fails_only_the_largest_sequence() {
    let dir = common::scratch_dir("device-engine-decode-oom");
    let model = load(&dir, None);
    let probe = emulated(1 << 30);
    DeviceLlama::upload(&model.llama, &probe).unwrap();
    let weights = probe.pool_stats().peak;
    // 2 layers × (keys, values) × 64 values × 4 bytes: 1 KiB a position.
    let cache_bytes = |positions: usize| positions << 10;
    // Growing 32 → 64 takes 64 KiB plus one old buffer (8 KiB) at the
    // peak; with the other's 32 KiB that is 104 KiB: the room is between.
    let room = cache_bytes(64) + (24 << 10);
    let device = DeviceOptions { first_cache_positions: 2, ..slots(4) };
    let options = EngineOptions { prefix_cache_bytes: 0, max_batch: 2, ..EngineOptions::default() };
    let engine = Engine::start_on_device(model.clone(), emulated(weights + room), options, device).unwrap();
    let params = GenerateParams { max_tokens: 50, ..GenerateParams::default() };
    // Prompts whose 50 greedy tokens hold no end of sequence.
    let longer = engine.submit(prompt(1, 4), params.clone());
    let shorter = engine.submit(prompt(0, 3), params);
    let (longer_tokens, longer_end) = collect(longer);
    let (shorter_tokens, shorter_end) = collect(shorter);
    assert!(longer_end.contains("out of device memory"), "the longer sequence fails: {longer_end}");
    assert!(longer_tokens.len() >= 28, "it failed growing past 32 positions: {} tokens", longer_tokens.len());
    assert!(!shorter_end.starts_with("failed"), "the other one runs on: {shorter_end}");
    assert!(shorter_tokens.len() > 30, "past its own growth to 64 positions: {} tokens", shorter_tokens.len());
}

/// A model whose weights the device kernels do not take is refused when
/// the engine starts, with an error naming the dtype.
#[test]
fn an_engine_on_a_device_that_cannot_take_the_model_is_refused_at_start() {
    let dir = common::scratch_dir("device-engine-refused");
    let model = load(&dir, Some(DType::Q5_0));
    let refused = Engine::start_on_device(model, emulated(1 << 30), EngineOptions::default(), slots(4)).err();
    let refused = refused.expect("q5_0 has no device kernel").to_string();
    assert!(refused.contains("Q5_0"), "{refused}");
}
