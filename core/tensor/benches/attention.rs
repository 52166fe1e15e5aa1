//! A prefill's causal attention alone, at the head shapes of the 1B and 3B
//! bench models (`tailor models synth --shape 1b|3b`) and prompt lengths
//! from a chat turn to a retrieval-stuffed prompt: GMAC/s of the two
//! products (QKᵀ and PV, each `head_dim` multiply-adds per visible
//! position and query head). At 2048 tokens attention was 38 % of a 1B
//! Q4_K_M prefill's samples; this measures the kernel without the matrix
//! products around it.
//!
//! `cargo bench -p tailor-tensor --bench attention` (THREADS, ROUNDS,
//! TOKENS=128,512,2048 env).

use std::time::Instant;
use tailor_tensor::cpu::pool::set_global_threads;
use tailor_tensor::cpu::{causal_attention, AttentionShape};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// Best seconds of `rounds` causal attentions of `tokens` queries from position 0.
fn best_seconds(shape: AttentionShape, tokens: usize, rounds: usize) -> f64 {
    let q = values(tokens * shape.n_head * shape.head_dim, 1);
    let keys = values(tokens * shape.n_kv_head * shape.head_dim, 2);
    let values = values(tokens * shape.n_kv_head * shape.head_dim, 3);
    let mut out = vec![0f32; q.len()];
    (0..rounds)
        .map(|_| {
            let start = Instant::now();
            causal_attention(&q, &keys, &values, 0, shape, &mut out);
            std::hint::black_box(&out);
            start.elapsed().as_secs_f64()
        })
        .fold(f64::INFINITY, f64::min)
}

fn main() {
    let threads = env_usize("THREADS", 2);
    let rounds = env_usize("ROUNDS", 5);
    let tokens: Vec<usize> = std::env::var("TOKENS")
        .unwrap_or_else(|_| "128,512,2048".into())
        .split(',')
        .filter_map(|t| t.trim().parse().ok())
        .collect();
    set_global_threads(threads, 0);
    println!("causal attention from position 0, {threads} threads, best of {rounds}");
    println!("{:>6} {:>6} {:>8} {:>10} {:>8}", "shape", "tokens", "ms", "GMAC/s", "");
    let shapes = [
        ("1b", AttentionShape { n_head: 32, n_kv_head: 8, head_dim: 64 }),
        ("3b", AttentionShape { n_head: 24, n_kv_head: 8, head_dim: 128 }),
    ];
    for (name, shape) in shapes {
        for &n in &tokens {
            let seconds = best_seconds(shape, n, rounds);
            // Query t sees t + 1 positions; two products of head_dim each.
            let macs = (n * (n + 1) / 2 * shape.n_head * shape.head_dim * 2) as f64;
            println!("{name:>6} {n:>6} {:>8.2} {:>10.1}", seconds * 1e3, macs / seconds / 1e9);
        }
    }
}
