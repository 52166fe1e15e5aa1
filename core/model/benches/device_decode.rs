//! The decoder end to end on a CUDA device (benches/cuda/run.sh): for
//! synthesized Llama GGUFs (seeded random weights; the device machine
//! reaches no model hub) of SmolLM2's shape in f32 (with an f32, an f16
//! and a bf16 KV cache) and q4_0 and of a 1B shape in q4_0, prefill and
//! decode tok/s on the device, decode's weight bandwidth, and how many
//! greedy tokens equal the CPU decoder's.
//!
//! `cargo bench -p tailor-model --features cuda --bench device_decode -- TOKENIZER.gguf [OUT_DIR]`
//! where TOKENIZER.gguf is any GGUF with SmolLM2's tokenizer (the fetched
//! model, or a tiny `tailor models synth` of it, small enough to carry).

use std::path::{Path, PathBuf};
use tailor_model::device::DeviceLlama;
use tailor_model::gguf::GgufFile;
use tailor_model::synth::{synthesize, SynthShape};
use tailor_model::{LoadOptions, Model};
use tailor_tensor::cuda::backend::CudaBackend;
use tailor_tensor::DType;

const PROMPT_TOKENS: usize = 128;
const DECODE_TOKENS: usize = 64;
const FILLER: &str =
    "The quick brown fox jumps over the lazy dog while the river flows past old stone bridges and quiet towns. ";

fn main() {
    let args: Vec<String> = std::env::args().skip(1).filter(|a| a != "--bench").collect();
    let Some(tokenizer) = args.first().map(PathBuf::from) else {
        eprintln!("usage: device_decode TOKENIZER.gguf [OUT_DIR]");
        return;
    };
    let out_dir = args.get(1).map_or_else(|| PathBuf::from("target/device"), PathBuf::from);
    std::fs::create_dir_all(&out_dir).expect("output folder");
    let backend = match CudaBackend::new(0, 64 << 30) {
        Ok(backend) => backend,
        Err(e) => {
            println!("device_decode: no CUDA device ({e}); nothing measured");
            return;
        }
    };
    println!("device: {}", backend.describe());
    println!("| model | prefill tok/s | decode tok/s | decode weight GB/s | greedy = CPU |");
    println!("|---|---|---|---|---|");
    let runs = [
        ("smollm2", DType::F32, DType::F32),
        ("smollm2", DType::F32, DType::F16),
        ("smollm2", DType::F32, DType::BF16),
        ("smollm2", DType::Q4_0, DType::F32),
        ("1b", DType::Q4_0, DType::F32),
    ];
    for (shape, dtype, kv) in runs {
        let path = synthesized(&tokenizer, &out_dir, shape, dtype);
        let model = Model::load(&path, LoadOptions::default()).expect("the synthesized model loads");
        let mut prompt = Vec::new();
        while prompt.len() < PROMPT_TOKENS {
            prompt.extend(model.encode(FILLER).expect("encode"));
        }
        prompt.truncate(PROMPT_TOKENS);
        let mut on_device = DeviceLlama::upload(&model.llama, &backend).expect("upload");
        on_device.set_kv_dtype(kv).expect("a KV dtype the kernels take");
        on_device.greedy(&prompt, 4).expect("warm-up");
        let run = (0..3)
            .map(|_| on_device.greedy(&prompt, DECODE_TOKENS).expect("device run"))
            .min_by(|a, b| a.decode_secs.total_cmp(&b.decode_secs))
            .expect("three runs");
        let cpu = model.llama.greedy(&prompt, DECODE_TOKENS).expect("CPU run").tokens;
        let equal = run.tokens.iter().zip(&cpu).take_while(|(d, c)| d == c).count();
        let decode_tps = DECODE_TOKENS as f64 / run.decode_secs;
        let gb_s = model.llama.weight_bytes() as f64 * decode_tps / 1e9;
        println!(
            "| {shape} {dtype}, {kv} cache | {:.0} | {decode_tps:.1} | {gb_s:.0} | {equal}/{} |",
            PROMPT_TOKENS as f64 / run.prefill_secs,
            cpu.len()
        );
    }
}

/// `out_dir/SHAPE-DTYPE.gguf`, written once with `tokenizer`'s vocabulary.
fn synthesized(tokenizer: &Path, out_dir: &Path, shape: &str, dtype: DType) -> PathBuf {
    let path = out_dir.join(format!("{shape}-{dtype}.gguf"));
    if !path.exists() {
        let template = GgufFile::open(tokenizer).expect("the tokenizer GGUF");
        let shape = SynthShape::named(shape).expect("a named shape");
        let writer = synthesize(&template, shape, dtype, 0, &|_, _| {}).expect("synthesize");
        std::fs::write(&path, writer.to_bytes()).expect("write the synthesized model");
    }
    path
}
