//! `tailor bench`: prefill and decode throughput and peak memory, in a
//! form a peer-comparison script can read (`--json`).

use crate::ModelArgs;
use anyhow::{ensure, Result};
use clap::Args;
use tailor_model::llama::GreedyRun;
use tailor_tensor::Device;

#[derive(Args)]
pub struct BenchArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Prompt length for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    prompt_tokens: usize,
    /// Tokens to decode for the decode measurement.
    #[arg(long, default_value_t = 64)]
    gen_tokens: usize,
    /// Repetitions (the best one is reported).
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
    /// With `--device cuda`: the device memory pool's budget, GiB.
    #[arg(long, default_value_t = 16)]
    device_memory_gb: usize,
    /// With `--device cuda`: the KV cache's element type, f32 or f16.
    #[arg(long, default_value = "f32")]
    kv_dtype: String,
}

const FILLER: &str =
    "The quick brown fox jumps over the lazy dog while the river flows past old stone bridges and quiet towns. ";

pub fn bench(args: &BenchArgs, device: Device) -> Result<()> {
    let model = crate::run::load_model(&args.model)?;
    ensure!(args.prompt_tokens > 0 && args.repeat > 0, "--prompt-tokens and --repeat must be positive");
    let mut prompt = Vec::new();
    while prompt.len() < args.prompt_tokens {
        prompt.extend(model.encode(FILLER)?);
    }
    prompt.truncate(args.prompt_tokens);
    let on_cpu = || best_of(args.repeat, || Ok(model.llama.greedy(&prompt, args.gen_tokens)?));
    let (best, on_device) = match device {
        Device::Cpu => (on_cpu()?, None),
        Device::Cuda(ordinal) => {
            let (best, describe) = device_bench(&model, &prompt, args, ordinal)?;
            // The CPU's greedy tokens, once, for the equality check.
            let cpu = model.llama.greedy(&prompt, args.gen_tokens)?;
            let equal = best.tokens.iter().zip(&cpu.tokens).take_while(|(d, c)| d == c).count();
            (best, Some((describe, equal)))
        }
    };
    let prefill_tps = args.prompt_tokens as f64 / best.prefill_secs;
    let decode_tps = args.gen_tokens as f64 / best.decode_secs;
    let rss_mib = peak_rss_kib() as f64 / 1024.0;
    let threads = rayon::current_num_threads();
    if args.json {
        let mut out = serde_json::json!({"engine": "tailor", "threads": threads, "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens, "prefill_tok_s": prefill_tps, "decode_tok_s": decode_tps,
            "peak_rss_mib": rss_mib});
        if let Some((describe, equal)) = &on_device {
            out["device"] = serde_json::json!(describe);
            out["greedy_equal_to_cpu"] = serde_json::json!(equal);
        }
        merge_cpu_json(&mut out);
        println!("{out}");
    } else {
        println!("model:   {}", model.source.display());
        print_cpu();
        println!("threads: {threads}");
        if let Some((describe, equal)) = &on_device {
            println!("device:  {describe}");
            println!("greedy:  the first {equal} of {} tokens equal to the CPU's", args.gen_tokens);
        }
        println!("prefill: {prefill_tps:.1} tok/s ({} tokens)", args.prompt_tokens);
        println!("decode:  {decode_tps:.1} tok/s ({} tokens)", args.gen_tokens);
        println!("peak RSS: {rss_mib:.0} MiB");
    }
    Ok(())
}

/// The fastest prefill and the fastest decode of `repeat` runs.
fn best_of(repeat: usize, mut run: impl FnMut() -> Result<GreedyRun>) -> Result<GreedyRun> {
    let mut best = run()?;
    for _ in 1..repeat {
        let next = run()?;
        best.prefill_secs = best.prefill_secs.min(next.prefill_secs);
        best.decode_secs = best.decode_secs.min(next.decode_secs);
    }
    Ok(best)
}

/// The best of `--repeat` runs on CUDA device `ordinal` (weights uploaded
/// once), and the device's name.
#[cfg(feature = "cuda")]
fn device_bench(
    model: &tailor_model::Model,
    prompt: &[u32],
    args: &BenchArgs,
    ordinal: usize,
) -> Result<(GreedyRun, String)> {
    use tailor_model::device::DeviceLlama;
    let backend = tailor_tensor::cuda::backend::CudaBackend::new(ordinal, args.device_memory_gb << 30)?;
    let start = std::time::Instant::now();
    let mut on_device = DeviceLlama::upload(&model.llama, &backend)?;
    on_device.set_kv_dtype(args.kv_dtype.parse()?)?;
    backend.synchronize()?;
    eprintln!("tailor: weights on {} in {:.1}s", backend.describe(), start.elapsed().as_secs_f64());
    let run = || Ok(on_device.greedy(prompt, args.gen_tokens)?);
    Ok((best_of(args.repeat, run)?, backend.describe()))
}

#[cfg(not(feature = "cuda"))]
fn device_bench(_: &tailor_model::Model, _: &[u32], _: &BenchArgs, _: usize) -> Result<(GreedyRun, String)> {
    anyhow::bail!("this build has no CUDA support (rebuild with --features cuda)")
}

/// Peak resident set size of this process (VmHWM), in KiB; 0 if unknown.
fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `tailor cpu`: where figures are measured, for scripts that print it
/// beside their own (`--json` for them to read).
pub fn cpu_cmd(json: bool) {
    match json {
        true => {
            let mut out = serde_json::json!({});
            merge_cpu_json(&mut out);
            println!("{out}");
        }
        false => print_cpu(),
    }
}

/// The CPU's name, the SIMD features detected and each hot operation's
/// kernel path, as two lines.
pub fn print_cpu() {
    let report = tailor_tensor::cpu::kernel_report();
    println!("cpu:     {} ({})", report.cpu, report.features.join(" "));
    println!(
        "kernels: quantized rows {}; f16/bf16 rows {}; f16/bf16 prefill {}; bf16 gemm {}",
        report.quantized_rows, report.half_rows, report.half_prefill, report.bf16_gemm
    );
}

/// Adds `cpu`, `cpu_features` and `kernels` to a JSON object.
pub fn merge_cpu_json(out: &mut serde_json::Value) {
    let report = tailor_tensor::cpu::kernel_report();
    out["cpu"] = serde_json::json!(report.cpu);
    out["cpu_features"] = serde_json::json!(report.features);
    out["kernels"] = serde_json::json!({"quantized_rows": report.quantized_rows, "half_rows": report.half_rows,
        "half_prefill": report.half_prefill, "bf16_gemm": report.bf16_gemm});
}
