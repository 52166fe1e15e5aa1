//! The f16/bf16 prefill (`cpu::linear` on weights read as stored, the
//! `half_gemm` tile kernels) on the pool's threads, for the 1B shapes'
//! matrices, as multiply-adds per second (the best of ROUNDS: on a shared
//! VM, interference only ever slows a round down). The kernel path this
//! CPU takes is printed first. A figure to compare kernel changes by on
//! one machine, in one run; the peer comparison lives in
//! `benches/llamacpp`.
//!
//! `cargo bench -p tailor-tensor --bench half_prefill` (ROUNDS, TOKENS env).

use std::time::Instant;
use tailor_tensor::cpu::{kernel_report, linear, LinearScratch};
use tailor_tensor::{DType, Tensor};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn values(n: usize, seed: u32, scale: f32) -> Vec<f32> {
    (0..n as u32).map(|i| (((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0) * scale).collect()
}

fn main() {
    let (rounds, tokens) = (env_usize("ROUNDS", 7), env_usize("TOKENS", 128));
    let report = kernel_report();
    println!("cpu: {} ({}); f16/bf16 prefill: {}", report.cpu, report.features.join(" "), report.half_prefill);
    println!("{tokens} tokens, best of {rounds}");
    println!("{:6} {:>14} {:>8}", "dtype", "rows x inputs", "GMAC/s");
    for dtype in [DType::F16, DType::BF16] {
        for (rows, inputs) in [(2048, 2048), (8192, 2048), (2048, 8192)] {
            let w = Tensor::from_f32(values(rows * inputs, 3, 0.02), &[rows, inputs])
                .and_then(|w| w.to_dtype(dtype))
                .expect("a valid matrix");
            let x = values(tokens * inputs, 7, 0.5);
            let (mut y, mut scratch) = (vec![0f32; tokens * rows], LinearScratch::default());
            let best = (0..rounds).fold(0f64, |best, _| {
                let start = Instant::now();
                linear(&x, tokens, &w, &mut y, &mut scratch).expect("matching lengths");
                std::hint::black_box(&y);
                best.max((rows * inputs * tokens) as f64 / start.elapsed().as_secs_f64() / 1e9)
            });
            println!("{:6} {:>14} {:>8.1}", dtype.to_string(), format!("{rows} x {inputs}"), best);
        }
    }
}
