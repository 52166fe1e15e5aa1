//! The cost of serving many adapters at once, on SmolLM2 (Q4_1): aggregate
//! decode tok/s of 16 sequences stepping together on the bare base, all
//! sharing one rank-16 all-linear adapter, and each with its own (16
//! distinct copies of that adapter, so 16 sets of weights are read per
//! step), in alternating rounds of one run; then the time to first token
//! when the adapter must first be loaded from disk (cold) against one
//! already resident. Goals (issue 11): distinct ≥ 0.85× base, ≥ 0.95× shared.
//!
//!   [STEPS=32 ROUNDS=5 BATCH=16] cargo bench -p tailor-engine --bench adapters

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;
use tailor_model::{ActiveAdapter, Adapter, AdapterLimits, DecodeBuffers, LoadOptions, Logits, Model};

fn main() {
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (steps, rounds, batch) = (env("STEPS", 32), env("ROUNDS", 5), env("BATCH", 16));
    let path = tailor_model::cache::cache_dir().join(tailor_model::cache::SMOLLM2_GGUF);
    let model = Model::load(&path, LoadOptions::default()).expect("SmolLM2 (tailor models fetch)");
    let folder = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/adapters/r16-all-linear");
    let load = || Arc::new(Adapter::load(&folder, &model.llama, AdapterLimits::default()).expect("adapter"));
    let shared = ActiveAdapter::new(load(), 1.0).expect("scale");
    let distinct: Vec<_> = (0..batch).map(|_| Some(ActiveAdapter::new(load(), 1.0).expect("scale"))).collect();
    let setups: [(&str, Vec<Option<ActiveAdapter>>); 3] = [
        ("bare base", vec![None; batch]),
        ("one shared adapter", vec![Some(shared.clone()); batch]),
        ("distinct adapters", distinct),
    ];
    let prompt = model.encode("Once upon a time, in a land far away,").expect("encode");
    let mut rates = vec![Vec::new(); setups.len()];
    for _ in 0..rounds {
        for (i, (_, adapters)) in setups.iter().enumerate() {
            rates[i].push(decode_rate(&model, &prompt, adapters, steps));
        }
    }
    let median = |mut r: Vec<f64>| {
        r.sort_by(f64::total_cmp);
        r[r.len() / 2]
    };
    let medians: Vec<f64> = rates.into_iter().map(median).collect();
    println!(
        "{batch} sequences, rank-16 all-linear adapter ({:.1} MB in memory each), {steps} steps, median of {rounds} rounds",
        shared.adapter.memory_bytes() as f64 / 1e6
    );
    for ((name, _), rate) in setups.iter().zip(&medians) {
        println!("  {name:<20} {rate:7.1} tok/s  {:.3}x base  {:.3}x shared", rate / medians[0], rate / medians[1]);
    }
    let (cold, warm) = first_token_times(&model, &folder, &shared, &prompt, rounds);
    println!(
        "  time to first token: cold (load adapter + prefill) {:.1} ms, resident {:.1} ms ({:.2}x)",
        cold * 1e3,
        warm * 1e3,
        cold / warm
    );
}

/// Tokens per second of `steps` decode steps, sequence `i` with `adapters[i]`.
fn decode_rate(model: &Model, prompt: &[u32], adapters: &[Option<ActiveAdapter>], steps: usize) -> f64 {
    let mut caches: Vec<_> = adapters
        .iter()
        .map(|a| {
            let mut cache = model.llama.new_cache();
            model.llama.forward_adapted(prompt, &mut cache, Logits::Last, a.as_ref()).expect("prefill");
            cache
        })
        .collect();
    let tokens = vec![42u32; adapters.len()];
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let mut buffers = DecodeBuffers::default();
    model.llama.forward_decode_adapted(&tokens, &mut refs, adapters, &mut buffers).expect("warm-up step");
    let start = Instant::now();
    for _ in 0..steps {
        model.llama.forward_decode_adapted(&tokens, &mut refs, adapters, &mut buffers).expect("decode step");
    }
    (steps * adapters.len()) as f64 / start.elapsed().as_secs_f64()
}

/// Median seconds to the first token's logits: loading the adapter from
/// disk then prefilling, against prefilling with it resident.
fn first_token_times(
    model: &Model,
    folder: &std::path::Path,
    resident: &ActiveAdapter,
    prompt: &[u32],
    rounds: usize,
) -> (f64, f64) {
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..rounds {
        let start = Instant::now();
        let adapter = Adapter::load(folder, &model.llama, AdapterLimits::default()).expect("adapter");
        let adapter = ActiveAdapter::new(Arc::new(adapter), 1.0).expect("scale");
        let mut cache = model.llama.new_cache();
        model.llama.forward_adapted(prompt, &mut cache, Logits::Last, Some(&adapter)).expect("prefill");
        cold.push(start.elapsed().as_secs_f64());
        let start = Instant::now();
        let mut cache = model.llama.new_cache();
        model.llama.forward_adapted(prompt, &mut cache, Logits::Last, Some(resident)).expect("prefill");
        warm.push(start.elapsed().as_secs_f64());
    }
    cold.sort_by(f64::total_cmp);
    warm.sort_by(f64::total_cmp);
    (cold[rounds / 2], warm[rounds / 2])
}
