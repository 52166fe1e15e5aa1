//! Decoding's matrix-vector products at the size of a model, per weight
//! type, against the machine's read bandwidth measured in the same run on
//! the same threads: matrices of 8192 × 2048 (a 1B model's FFN shape),
//! copies of one quantized matrix in distinct memory until they fill
//! `MIB` MiB, so every token streams them from memory as a model's decode
//! does. Prints GB/s of weight bytes and the share of the read bandwidth:
//! how close each kernel streams to the memory's limit, without the rest of
//! a model's step (attention, norms) around it.
//!
//! `cargo bench -p tailor-tensor --bench decode_stream` (THREADS, ROUNDS,
//! MIB, TYPES=q4_k,f16 env).

use std::time::Instant;
use tailor_tensor::cpu::pool::{set_global_threads, split_range, SpinPool};
use tailor_tensor::cpu::{linear, LinearScratch};
use tailor_tensor::{DType, Tensor};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

/// Seconds the pool's threads take to each read their share of `words`
/// (ORs into eight 64-bit lanes, which the compiler vectorizes).
fn read_seconds(words: &[u64]) -> f64 {
    let start = Instant::now();
    SpinPool::global().run(&|index, threads| {
        let mine = &words[split_range(words.len(), index, threads)];
        let lanes = mine.chunks_exact(8).fold([0u64; 8], |mut acc, chunk| {
            for (a, w) in acc.iter_mut().zip(chunk) {
                *a |= w;
            }
            acc
        });
        std::hint::black_box(lanes);
    });
    start.elapsed().as_secs_f64()
}

/// `words` 64-bit words of ones, advised to 2 MiB pages as the kernels'
/// weights are (the TLB misses of 4 KiB pages would cost the read its
/// speed, not the memory).
fn huge_words(words: usize) -> Vec<u64> {
    // Zeroed memory comes untouched from the kernel, so the advice applies
    // before the first write faults its pages in.
    let mut buffer = vec![0u64; words];
    // SAFETY: madvise only changes how the kernel backs this allocation's
    // pages (the range lies inside `buffer`); contents stay as they are.
    unsafe { libc::madvise(buffer.as_mut_ptr().cast(), words * 8, libc::MADV_HUGEPAGE) };
    buffer.iter_mut().for_each(|w| *w = 1);
    buffer
}

/// Copies of one `rows` × `row_len` matrix of `dtype` in distinct memory,
/// each in the layout the CPU's kernels read, filling about `budget` bytes.
fn matrices(dtype: DType, rows: usize, row_len: usize, budget: usize) -> Vec<Tensor> {
    let first = Tensor::from_f32(values(rows * row_len, 3), &[rows, row_len])
        .and_then(|w| w.to_dtype(dtype))
        .expect("quantizable");
    let count = (budget / first.bytes().len()).max(2);
    (0..count)
        .map(|_| Tensor::from_bytes(first.bytes().to_vec(), dtype, &[rows, row_len]).expect("same shape").prepacked())
        .collect()
}

fn main() {
    let threads = env_usize("THREADS", 2);
    let (rounds, budget) = (env_usize("ROUNDS", 5), env_usize("MIB", 512) << 20);
    set_global_threads(threads, 0);
    let wanted = std::env::var("TYPES").unwrap_or_else(|_| "q4_0,q8_0,q2_k,q3_k,q4_k,q5_k,q6_k,iq4_xs,f16,bf16".into());
    let words = huge_words(budget / 8);
    let (rows, row_len) = (8192, 2048);
    println!(
        "{threads} threads, {rows} x {row_len} matrices filling {} MiB, best of {rounds} alternating rounds",
        budget >> 20
    );
    println!("{:8} {:>8} {:>10} {:>7}", "type", "GB/s", "read GB/s", "% read");
    let x = values(row_len, 7);
    let mut y = vec![0f32; rows];
    let mut scratch = LinearScratch::default();
    for dtype in wanted.split(',').filter_map(|name| DType::ALL.into_iter().find(|d| d.to_string() == name)) {
        let mats = matrices(dtype, rows, row_len, budget);
        let total: usize = mats.iter().map(|m| m.bytes().len()).sum();
        let (mut kernel, mut read) = (f64::INFINITY, f64::INFINITY);
        for _ in 0..rounds {
            read = read.min(read_seconds(&words));
            let start = Instant::now();
            for w in &mats {
                linear(&x, 1, w, &mut y, &mut scratch).expect("shapes match");
            }
            kernel = kernel.min(start.elapsed().as_secs_f64());
        }
        let (rate, read_rate) = (total as f64 / kernel / 1e9, budget as f64 / read / 1e9);
        println!("{:8} {rate:8.1} {read_rate:10.1} {:6.0}%", dtype.to_string(), 100.0 * rate / read_rate);
    }
}
