//! The encoder's matrix products, f32 gemm against the bf16 kernel, in one
//! run with alternating rounds (medians; a ratio, since absolute times on a
//! shared machine move from run to run).
//!
//! `cargo bench -p tailor-tensor --bench gemm_bf16` (ROUNDS, ROWS env).

use std::time::Instant;
use tailor_tensor::cpu::{self, Bf16Out, Bf16Rows, Bf16Weights, Epilogue};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

fn main() {
    if !cpu::bf16_supported() {
        println!("this CPU has no AVX-512 BF16: nothing to compare");
        return;
    }
    let (rounds, rows) = (env_usize("ROUNDS", 7), env_usize("ROWS", 4096));
    println!(
        "{rows} rows, {} threads, medians of {rounds} alternating rounds",
        cpu::pool::SpinPool::global().threads()
    );
    for (out, inp) in [(384, 384), (1536, 384), (384, 1536)] {
        let (x, w) = (values(rows * inp, 1), values(out * inp, 2));
        let packed = Bf16Weights::pack(&w, out, inp);
        let mut y = vec![0f32; rows * out];
        let mut input = Bf16Rows::new();
        let (mut f32_times, mut bf16_times) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            let start = Instant::now();
            cpu::gemm_f32(&x, rows, inp, &w, out, &mut y);
            f32_times.push(start.elapsed().as_secs_f64());
            let start = Instant::now();
            input.fill(&x, inp);
            cpu::gemm_bf16(&input, &packed, Epilogue::default(), Bf16Out::F32(&mut y));
            bf16_times.push(start.elapsed().as_secs_f64());
        }
        let flops = 2.0 * (rows * out * inp) as f64;
        let (f, b) = (median(f32_times), median(bf16_times));
        println!(
            "  {inp:>5} → {out:<5} f32 {:6.1} GFLOP/s   bf16 (incl. rounding the input) {:6.1} GFLOP/s   ratio {:.2}x",
            flops / f / 1e9,
            flops / b / 1e9,
            f / b
        );
    }
}
