//! The CUDA kernels timed on the device at the sizes people run: decode
//! GEMV's effective bandwidth (weight bytes per call / time) against a
//! device-to-device copy measured in the same run, the prefill linear
//! kernel's TFLOP/s on a 512-token prompt, LoRA on that prompt by SGMV
//! against BGMV, LoRA BGMV with 32 distinct adapters against 1 in the same
//! 32-row batch, causal prefill
//! attention's TFLOP/s and decode attention's cache bandwidth, each with
//! an f32 and an f16 KV cache. Times are the
//! median of 9 rounds of 20 launches each, after a warm-up, the stream
//! synchronised around each round.
//!
//! `cargo bench -p tailor-tensor --features cuda --bench cuda` on a GPU;
//! `… --bench cuda -- precompile DIR` fills a kernel cache for sm_90 with
//! NVRTC alone (no GPU), for a GPU machine that has a driver but no NVRTC
//! (run there with TAILOR_KERNEL_CACHE=DIR).

use std::time::Instant;
use tailor_tensor::cpu::{AttentionShape, LoraMatrix, LoraPair};
use tailor_tensor::cuda::backend::{CudaBackend, DeviceBuffer, DeviceLora, Executor, KvView, LoraLaunch, KV_DTYPES};
use tailor_tensor::cuda::driver::CudaExecutor;
use tailor_tensor::cuda::kernels::ALL;
use tailor_tensor::cuda::nvrtc::KernelCache;
use tailor_tensor::{DType, Result, Tensor};

/// Llama-3-8B's FFN width times four by its hidden size: well past the
/// H200's 50 MB L2 in every type, so the weights stream from HBM.
const GEMV_ROWS: usize = 4 * 14336;
const GEMV_COLS: usize = 4096;
const ROUNDS: usize = 9;
/// A device allocation of the CUDA executor.
type Block = <CudaExecutor as Executor>::Block;
const CALLS: usize = 20;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    if let [command, dir] = args.as_slice() {
        if command == "precompile" {
            return precompile(dir);
        }
    }
    let gpu = CudaBackend::new(0, 64 << 30)?;
    println!("device: {}", gpu.describe());
    let copy = copy_bandwidth(&gpu)?;
    println!("device-to-device copy: {copy:.0} GB/s (read + write)");
    println!("{:<8} {:>10} {:>12} {:>10}", "type", "MB", "GEMV GB/s", "of copy");
    for dtype in [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q4K, DType::Q6K, DType::F16, DType::BF16] {
        let (megabytes, bandwidth) = gemv_bandwidth(&gpu, dtype)?;
        println!("{:<8} {megabytes:>10.0} {bandwidth:>12.0} {:>9.0}%", dtype.name(), 100.0 * bandwidth / copy);
    }
    for dtype in [DType::Q4_0, DType::Q8_0, DType::F16] {
        let tflops = prefill_linear(&gpu, dtype)?;
        println!("{:<8} prefill linear, {PREFILL_LINEAR_TOKENS} tokens: {tflops:.1} TFLOP/s", dtype.name());
    }
    let (rows, segments) = lora_prompt(&gpu)?;
    println!(
        "LoRA on a {PREFILL_LINEAR_TOKENS}-token prompt of one adapter, 4096→16→4096: BGMV {:.1} µs, SGMV {:.1} µs, \
         {:.2}× faster",
        rows * 1e6,
        segments * 1e6,
        rows / segments
    );
    let (one, many) = lora_adapters(&gpu)?;
    println!(
        "LoRA BGMV, 32 rows, 4096→16→4096: 1 adapter {:.1} µs, 32 adapters {:.1} µs, ratio {:.2}",
        one * 1e6,
        many * 1e6,
        one / many
    );
    for kv in KV_DTYPES {
        let tflops = prefill_attention(&gpu, kv)?;
        let (megabytes, bandwidth) = decode_attention(&gpu, kv)?;
        println!(
            "attention, {} cache: prefill {PREFILL_TOKENS} tokens × 32 heads of 128 (8 KV): {tflops:.1} TFLOP/s; \
             decode 32 rows × {DECODE_POSITIONS} positions ({megabytes:.0} MB of cache): {bandwidth:.0} GB/s ({:.0}% of copy)",
            kv.name(),
            100.0 * bandwidth / copy
        );
    }
    println!("pool: {:?}", gpu.pool_stats());
    Ok(())
}

/// The attention shapes timed: Llama-3-8B's heads.
const SHAPE: AttentionShape = AttentionShape { n_head: 32, n_kv_head: 8, head_dim: 128 };
const PREFILL_TOKENS: usize = 2048;
const DECODE_POSITIONS: usize = 4096;

/// A cache of `count` random elements of `kv`.
fn random_cache(gpu: &CudaBackend, count: usize, kv: DType, seed: u64) -> Result<DeviceBuffer<Block>> {
    match kv {
        DType::F16 => gpu.upload(
            &noise(2 * count, seed).chunks_exact(2).map(|b| u16::from(b[0]) << 6 | 0x3000).collect::<Vec<u16>>(),
        ),
        _ => gpu.upload(&noise(count, seed).iter().map(|&b| b as f32 / 255.0 - 0.5).collect::<Vec<f32>>()),
    }
}

/// TFLOP/s of one sequence's causal prefill (QKᵀ and PV, the causal half).
fn prefill_attention(gpu: &CudaBackend, kv: DType) -> Result<f64> {
    let (tokens, AttentionShape { n_head, n_kv_head, head_dim }) = (PREFILL_TOKENS, SHAPE);
    let q = gpu.upload(&vec![0.01f32; tokens * n_head * head_dim])?;
    let keys = random_cache(gpu, tokens * n_kv_head * head_dim, kv, 3)?;
    let values = random_cache(gpu, tokens * n_kv_head * head_dim, kv, 4)?;
    let mut out = gpu.alloc(tokens * n_head * head_dim * 4)?;
    let seconds = time(gpu, || gpu.attention_prefill(&q, &keys, &values, 0, tokens, SHAPE, kv, &mut out))?;
    let flops = 4.0 * (n_head * head_dim) as f64 * (tokens * (tokens + 1) / 2) as f64;
    Ok(flops / seconds / 1e12)
}

/// (cache megabytes, GB/s) of a decode step's attention: 32 rows, each over
/// its own cache of DECODE_POSITIONS positions.
fn decode_attention(gpu: &CudaBackend, kv: DType) -> Result<(f64, f64)> {
    let (rows, AttentionShape { n_head, n_kv_head, head_dim }) = (32, SHAPE);
    let per_row = DECODE_POSITIONS * n_kv_head * head_dim;
    let caches: Vec<_> = (0..rows as u64)
        .map(|r| Ok((random_cache(gpu, per_row, kv, 10 + 2 * r)?, random_cache(gpu, per_row, kv, 11 + 2 * r)?)))
        .collect::<Result<_>>()?;
    let views: Vec<KvView<'_, Block>> =
        caches.iter().map(|(keys, values)| KvView { keys, values, length: DECODE_POSITIONS }).collect();
    let q = gpu.upload(&vec![0.01f32; rows * n_head * head_dim])?;
    let mut out = gpu.alloc(rows * n_head * head_dim * 4)?;
    let seconds = time(gpu, || gpu.attention_decode(&q, &views, SHAPE, kv, &mut out))?;
    let bytes = (2 * rows * per_row * kv.bytes_for(1)?) as f64;
    Ok((bytes / 1e6, bytes / seconds / 1e9))
}

/// Compiles every kernel for sm_90 into `dir`.
fn precompile(dir: &str) -> Result<()> {
    let cache = KernelCache::new(Some(dir.into()));
    for kernel in ALL {
        cache.cubin(kernel, 90)?;
        println!(
            "{} -> {}",
            kernel.file,
            cache.path_for(kernel, 90).map(|p| p.display().to_string()).unwrap_or_default()
        );
    }
    Ok(())
}

/// Median seconds per call of `call`, over ROUNDS rounds of CALLS calls.
fn time(gpu: &CudaBackend, mut call: impl FnMut() -> Result<()>) -> Result<f64> {
    for _ in 0..3 {
        call()?;
    }
    gpu.synchronize()?;
    let mut rounds = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..CALLS {
            call()?;
        }
        gpu.synchronize()?;
        rounds.push(start.elapsed().as_secs_f64() / CALLS as f64);
    }
    rounds.sort_by(f64::total_cmp);
    Ok(rounds[ROUNDS / 2])
}

/// Pseudo-random bytes (speed does not depend on the values, but never
/// time on zeros).
fn noise(len: usize, mut state: u64) -> Vec<u8> {
    (0..len)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            (state >> 56) as u8
        })
        .collect()
}

fn copy_bandwidth(gpu: &CudaBackend) -> Result<f64> {
    let bytes = 1 << 30;
    let from = gpu.upload(&noise(bytes, 1))?;
    let mut to = gpu.alloc(bytes)?;
    let seconds = time(gpu, || gpu.copy(&from, &mut to))?;
    Ok(2.0 * bytes as f64 / seconds / 1e9)
}

/// (weight megabytes, GB/s) of one-token GEMV on random blocks of `dtype`.
fn gemv_bandwidth(gpu: &CudaBackend, dtype: DType) -> Result<(f64, f64)> {
    let bytes = dtype.bytes_for(GEMV_ROWS * GEMV_COLS)?;
    let weights = Tensor::from_bytes(noise(bytes, 2), dtype, &[GEMV_ROWS, GEMV_COLS])?;
    let on_device = gpu.upload_matrix(&weights)?;
    let x = gpu.upload(&vec![0.5f32; GEMV_COLS])?;
    let mut y = gpu.alloc(GEMV_ROWS * 4)?;
    let seconds = time(gpu, || gpu.linear(&on_device, &x, 1, &mut y))?;
    Ok((bytes as f64 / 1e6, bytes as f64 / seconds / 1e9))
}

/// Tokens of the prefill-sized calls.
const PREFILL_LINEAR_TOKENS: usize = 512;

/// TFLOP/s of a prompt's linear layer (the prefill kernel, weights as
/// stored) on the GEMV matrix.
fn prefill_linear(gpu: &CudaBackend, dtype: DType) -> Result<f64> {
    let tokens = PREFILL_LINEAR_TOKENS;
    let weights =
        Tensor::from_bytes(noise(dtype.bytes_for(GEMV_ROWS * GEMV_COLS)?, 5), dtype, &[GEMV_ROWS, GEMV_COLS])?;
    let on_device = gpu.upload_matrix(&weights)?;
    let x = gpu.upload(&vec![0.5f32; tokens * GEMV_COLS])?;
    let mut y = gpu.alloc(tokens * GEMV_ROWS * 4)?;
    let seconds = time(gpu, || gpu.linear(&on_device, &x, tokens, &mut y))?;
    Ok(2.0 * (GEMV_ROWS * GEMV_COLS * tokens) as f64 / seconds / 1e12)
}

/// A random rank-16 adapter on a 4096 → 4096 projection.
fn random_adapter(gpu: &CudaBackend, seed: u64) -> Result<DeviceLora<Block>> {
    let (dim, rank) = (4096, 16);
    let values = |n: usize, seed: u64| noise(n, seed).iter().map(|&b| b as f32 / 255.0 - 0.5).collect();
    let pair = LoraPair::new(
        rank,
        dim,
        dim,
        LoraMatrix::F32(values(rank * dim, seed)),
        LoraMatrix::F32(values(dim * rank, seed + 1)),
    )?;
    gpu.upload_lora(&pair)
}

/// Seconds per LoRA call on a prompt whose rows share one adapter, a row
/// at a time (BGMV) and a tile at a time (SGMV).
fn lora_prompt(gpu: &CudaBackend) -> Result<(f64, f64)> {
    let (rows, dim) = (PREFILL_LINEAR_TOKENS, 4096);
    let adapter = random_adapter(gpu, 7)?;
    let x = gpu.upload(&vec![0.25f32; rows * dim])?;
    let mut y = gpu.alloc(rows * dim * 4)?;
    let adapters: Vec<Option<&_>> = vec![Some(&adapter); rows];
    let by_rows = time(gpu, || gpu.lora_on(LoraLaunch::Rows, &x, &adapters, &mut y))?;
    let by_segments = time(gpu, || gpu.lora_on(LoraLaunch::Segments, &x, &adapters, &mut y))?;
    Ok((by_rows, by_segments))
}

/// Seconds per BGMV call (shrink + expand) on 32 rows with one shared
/// adapter and with 32 distinct ones.
fn lora_adapters(gpu: &CudaBackend) -> Result<(f64, f64)> {
    let (rows, dim) = (32, 4096);
    let adapter = |seed: u64| random_adapter(gpu, seed);
    let adapters = (0..rows as u64).map(|i| adapter(10 + 2 * i)).collect::<Result<Vec<_>>>()?;
    let x = gpu.upload(&vec![0.25f32; rows * dim])?;
    let mut y = gpu.alloc(rows * dim * 4)?;
    let shared: Vec<Option<&_>> = (0..rows).map(|_| Some(&adapters[0])).collect();
    let distinct: Vec<Option<&_>> = adapters.iter().map(Some).collect();
    let one = time(gpu, || gpu.lora_on(LoraLaunch::Rows, &x, &shared, &mut y))?;
    let many = time(gpu, || gpu.lora_on(LoraLaunch::Rows, &x, &distinct, &mut y))?;
    Ok((one, many))
}
