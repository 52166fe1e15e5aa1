//! The interleaved group kernels (`quant::interleaved`) on one thread, per
//! GGUF type: a prefill tile of tokens (on AVX-512 VNNI also the token-pair
//! and the two-group kernels) and a lone decode token against a
//! 2,048 × 2,048 matrix (on VNNI CPUs also the AVX2 form the kernels take
//! without it), as multiply-adds per second (the best of ROUNDS:
//! on a shared VM, interference only ever slows a round down).
//! A figure to compare kernel changes by on one machine, in one run; the
//! peer comparison lives in `benches/llamacpp`.
//!
//! `cargo bench -p tailor-tensor --bench group_kernels` (ROUNDS, TOKENS,
//! TYPES=q6_k,q4_k env; STREAM_MIB=1024 also times a decode streaming that
//! many MiB of weights from memory against a plain read of them, on VNNI
//! CPUs in the AVX2 form too).

use std::time::Instant;
use tailor_tensor::quant::interleaved::{
    dot_group_pairs, dot_group_tokens, dot_group_tokens_on, dot_two_groups, interleave_rows, takes_pairs,
    takes_two_groups, tile_order, GroupKernel, InterleavedRows, PairedTokens, GROUP,
};
use tailor_tensor::quant::{quantize_activations_for, BlockQ8};
use tailor_tensor::{DType, Tensor};

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn best(v: impl Iterator<Item = f64>) -> f64 {
    v.fold(0.0, f64::max)
}

fn values(n: usize, seed: u32) -> Vec<f32> {
    (0..n as u32).map(|i| ((i.wrapping_mul(2654435761) ^ seed) % 2001) as f32 / 1000.0 - 1.0).collect()
}

fn main() {
    let (rounds, tokens) = (env_usize("ROUNDS", 15), env_usize("TOKENS", 64));
    let stream_mib = env_usize("STREAM_MIB", 0);
    let wanted = std::env::var("TYPES").unwrap_or_default();
    let (rows, row_len) = (2048, 2048);
    println!("{rows} x {row_len}, one thread, {tokens}-token prefill and 1-token decode, best of {rounds}");
    println!("{:8} {:>14} {:>14}", "type", "prefill GMAC/s", "decode GMAC/s");
    let inputs = values(tokens * row_len, 7);
    let chosen = |d: &DType| wanted.is_empty() || wanted.split(',').any(|w| w == d.to_string());
    for dtype in DType::ALL.into_iter().filter(|d| d.is_gguf_block()).filter(chosen) {
        let mut acts = Vec::new();
        for x in inputs.chunks_exact(row_len) {
            let mut row = Vec::new();
            quantize_activations_for(dtype, x, &mut row).expect("whole blocks");
            acts.extend_from_slice(&row);
        }
        let w = Tensor::from_f32(values(rows * row_len, 3), &[rows, row_len]).unwrap().to_dtype(dtype).unwrap();
        let grouped = interleave_rows(dtype, w.bytes(), rows, row_len).expect("interleavable");
        let time = |kernel: GroupKernel, acts: &[BlockQ8], count: usize| {
            let mut sums = vec![[0f32; GROUP]; count];
            let per_token = acts.len() / count;
            best((0..rounds).map(|_| {
                let start = Instant::now();
                for g in 0..rows / GROUP {
                    for (tile, out) in acts.chunks(32 * per_token).zip(sums.chunks_mut(32)) {
                        dot_group_tokens_on(kernel, &grouped, g, tile, out);
                    }
                }
                std::hint::black_box(&sums);
                (rows * row_len * count) as f64 / start.elapsed().as_secs_f64() / 1e9
            }))
        };
        let per_token = acts.len() / tokens;
        if takes_pairs(dtype) {
            let mut paired = PairedTokens::default();
            let mut sums = vec![[0f32; GROUP]; 32];
            let mut solo = vec![[0f32; GROUP]; 32];
            let pairs_rate = best((0..rounds).map(|_| {
                let start = Instant::now();
                paired.fill(&acts, tokens, per_token);
                for first in (0..tokens).step_by(32) {
                    let count = (tokens - first).min(32);
                    for g in 0..rows / GROUP {
                        dot_group_pairs(&grouped, g, &paired, first, &mut sums[..count]);
                    }
                }
                std::hint::black_box(&sums);
                (rows * row_len * tokens) as f64 / start.elapsed().as_secs_f64() / 1e9
            }));
            for g in [0, 5, rows / GROUP - 1] {
                let tile = &acts[..32 * per_token];
                paired.fill(tile, 32, per_token);
                dot_group_pairs(&grouped, g, &paired, 0, &mut sums);
                dot_group_tokens(&grouped, g, tile, &mut solo);
                assert!(
                    sums.iter().flatten().zip(solo.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dtype} group {g}: pairs differ"
                );
            }
            println!("{:8} {:>14.1} (token pairs, 512-bit)", dtype.to_string(), pairs_rate);
        }
        if takes_two_groups(dtype) {
            let mut tiled = Vec::new();
            tile_order(&acts, per_token, &mut tiled);
            let mut sums = vec![[0f32; 2 * GROUP]; 32];
            let rate = best((0..rounds).map(|_| {
                let start = Instant::now();
                for first in (0..tokens).step_by(32) {
                    let count = (tokens - first).min(32);
                    let tile = &tiled[first * per_token..(first + count) * per_token];
                    for g in (0..rows / GROUP).step_by(2) {
                        dot_two_groups(&grouped, g, tile, &mut sums[..count]);
                    }
                }
                std::hint::black_box(&sums);
                (rows * row_len * tokens) as f64 / start.elapsed().as_secs_f64() / 1e9
            }));
            let (tile, mut solo) = (&acts[..32 * per_token], vec![[0f32; GROUP]; 32]);
            dot_two_groups(&grouped, 0, &tiled[..32 * per_token], &mut sums);
            for g in [0, 1] {
                dot_group_tokens(&grouped, g, tile, &mut solo);
                let mine = sums.iter().flat_map(|s| &s[g * GROUP..(g + 1) * GROUP]);
                assert!(
                    mine.zip(solo.iter().flatten()).all(|(a, b)| a.to_bits() == b.to_bits()),
                    "{dtype}: two groups differ"
                );
            }
            println!("{:8} {:>14.1} (two groups, 512-bit)", dtype.to_string(), rate);
        }
        let (detected, one) = (GroupKernel::detect(), &acts[..per_token]);
        if detected == GroupKernel::Vnni && GroupKernel::Avx2.is_supported() {
            let (prefill, decode) = (time(GroupKernel::Avx2, &acts, tokens), time(GroupKernel::Avx2, one, 1));
            println!("{:8} {prefill:>14.1} {decode:>14.1} (AVX2 form, no VNNI)", dtype.to_string());
        }
        println!("{:8} {:>14.1} {:>14.1}", dtype.to_string(), time(detected, &acts, tokens), time(detected, one, 1));
        if stream_mib > 0 {
            let (kernel, read) = streamed(detected, &grouped, one, stream_mib, rounds);
            println!("{:8} decode from memory: kernel {kernel:.1} GB/s, plain read {read:.1} GB/s", dtype.to_string());
            if detected == GroupKernel::Vnni && GroupKernel::Avx2.is_supported() {
                let (kernel, _) = streamed(GroupKernel::Avx2, &grouped, one, stream_mib, rounds);
                println!("{:8} decode from memory: AVX2 form {kernel:.1} GB/s", dtype.to_string());
            }
        }
    }
}

/// One token through copies of `grouped` filling `mib` MiB (far past the
/// caches, as a model's decode reads its weights) on `kernel`, and a plain
/// read of the same bytes: GB/s of weights each, the best of `rounds`.
fn streamed(kernel: GroupKernel, grouped: &InterleavedRows, one: &[BlockQ8], mib: usize, rounds: usize) -> (f64, f64) {
    let copies = (mib << 20).div_ceil(grouped.data.len());
    let matrices = vec![grouped.clone(); copies];
    let bytes = (copies * grouped.data.len()) as f64;
    let mut sums = [[0f32; GROUP]];
    let rate = best((0..rounds).map(|_| {
        let start = Instant::now();
        for m in &matrices {
            for g in 0..m.groups {
                dot_group_tokens_on(kernel, m, g, one, &mut sums);
            }
        }
        std::hint::black_box(&sums);
        bytes / start.elapsed().as_secs_f64() / 1e9
    }));
    let read = best((0..rounds).map(|_| {
        let start = Instant::now();
        let mut or = 0u64;
        for m in &matrices {
            for chunk in m.data.chunks_exact(8) {
                or |= u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
            }
        }
        std::hint::black_box(or);
        bytes / start.elapsed().as_secs_f64() / 1e9
    }));
    (rate, read)
}
