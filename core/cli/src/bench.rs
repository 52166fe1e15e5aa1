//! `tailor bench`: prefill and decode throughput and peak memory, in a
//! form a peer-comparison script can read (`--json`).

use crate::ModelArgs;
use anyhow::{ensure, Result};
use clap::Args;
use std::time::Instant;
use tailor_model::Logits;

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
}

const FILLER: &str =
    "The quick brown fox jumps over the lazy dog while the river flows past old stone bridges and quiet towns. ";

pub fn bench(args: &BenchArgs) -> Result<()> {
    let model = crate::run::load_model(&args.model)?;
    ensure!(args.prompt_tokens > 0 && args.repeat > 0, "--prompt-tokens and --repeat must be positive");
    let mut prompt = Vec::new();
    while prompt.len() < args.prompt_tokens {
        prompt.extend(model.encode(FILLER)?);
    }
    prompt.truncate(args.prompt_tokens);
    let (mut best_prefill, mut best_decode) = (f64::MAX, f64::MAX);
    for _ in 0..args.repeat {
        let mut cache = model.llama.new_cache();
        let start = Instant::now();
        let logits = model.llama.forward(&prompt, &mut cache, Logits::Last)?;
        best_prefill = best_prefill.min(start.elapsed().as_secs_f64());
        let mut next = tailor_model::sampler::argmax(&logits);
        let start = Instant::now();
        for _ in 0..args.gen_tokens {
            let logits = model.llama.forward(&[next], &mut cache, Logits::Last)?;
            next = tailor_model::sampler::argmax(&logits);
        }
        best_decode = best_decode.min(start.elapsed().as_secs_f64());
    }
    let prefill_tps = args.prompt_tokens as f64 / best_prefill;
    let decode_tps = args.gen_tokens as f64 / best_decode;
    let rss_mib = peak_rss_kib() as f64 / 1024.0;
    let threads = rayon::current_num_threads();
    if args.json {
        let mut out = serde_json::json!({"engine": "tailor", "threads": threads, "prompt_tokens": args.prompt_tokens,
            "gen_tokens": args.gen_tokens, "prefill_tok_s": prefill_tps, "decode_tok_s": decode_tps,
            "peak_rss_mib": rss_mib});
        merge_cpu_json(&mut out);
        println!("{out}");
    } else {
        println!("model:   {}", model.source.display());
        print_cpu();
        println!("threads: {threads}");
        println!("prefill: {prefill_tps:.1} tok/s ({} tokens)", args.prompt_tokens);
        println!("decode:  {decode_tps:.1} tok/s ({} tokens)", args.gen_tokens);
        println!("peak RSS: {rss_mib:.0} MiB");
    }
    Ok(())
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
