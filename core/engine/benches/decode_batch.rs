//! Decode throughput of `Llama::forward_decode` by batch size on SmolLM2:
//! tokens per second for B sequences stepping together, and the ratio to
//! B = 1, all measured in this one run.
//!
//!   [STEPS=32 ROUNDS=5] cargo bench -p tailor-engine --bench decode_batch [-- 1 2 4 8 16]

use std::time::Instant;
use tailor_model::{DecodeBuffers, LoadOptions, Logits, Model};

fn main() {
    let sizes: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
    let sizes = if sizes.is_empty() { vec![1, 2, 4, 8, 16] } else { sizes };
    let env = |name: &str, default: usize| std::env::var(name).ok().and_then(|s| s.parse().ok()).unwrap_or(default);
    let (steps, rounds) = (env("STEPS", 32), env("ROUNDS", 5));
    let path = tailor_model::cache::cache_dir().join(tailor_model::cache::SMOLLM2_GGUF);
    let model = Model::load(&path, LoadOptions::default()).expect("SmolLM2 (tailor models fetch)");
    let prompt = model.encode("Once upon a time, in a land far away,").expect("encode");
    // Rounds go through every size in turn, so the machine's noise hits all alike.
    let mut rates = vec![Vec::new(); sizes.len()];
    for _ in 0..rounds {
        for (i, &batch) in sizes.iter().enumerate() {
            rates[i].push(decode_rate(&model, &prompt, batch, steps));
        }
    }
    let medians: Vec<f64> = rates
        .iter_mut()
        .map(|r| {
            r.sort_by(f64::total_cmp);
            r[r.len() / 2]
        })
        .collect();
    for (&batch, &rate) in sizes.iter().zip(&medians) {
        println!(
            "batch {batch:>2}: {rate:7.1} tok/s  ({:.2}x batch {}; median of {rounds})",
            rate / medians[0],
            sizes[0]
        );
    }
}

/// Tokens per second of `steps` decode steps of `batch` sequences.
fn decode_rate(model: &Model, prompt: &[u32], batch: usize, steps: usize) -> f64 {
    let mut caches: Vec<_> = (0..batch).map(|_| model.llama.new_cache()).collect();
    for cache in &mut caches {
        model.llama.forward(prompt, cache, Logits::Last).expect("prefill");
    }
    let tokens = vec![42u32; batch];
    let mut refs: Vec<_> = caches.iter_mut().collect();
    let mut buffers = DecodeBuffers::default();
    model.llama.forward_decode(&tokens, &mut refs, &mut buffers).expect("warm-up step");
    let start = Instant::now();
    for _ in 0..steps {
        model.llama.forward_decode(&tokens, &mut refs, &mut buffers).expect("decode step");
    }
    (steps * batch) as f64 / start.elapsed().as_secs_f64()
}
