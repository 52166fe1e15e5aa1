//! `tailor models synth`: a Llama-shaped GGUF with seeded random weights
//! and the bundled model's tokenizer, for measuring speed at the sizes
//! people run; `tailor models quantize`: any GGUF requantized by tailor
//! (see `tailor_model::synth`).

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::PathBuf;
use tailor_model::gguf::GgufFile;
use tailor_model::synth::{requantize, synthesize, SynthShape};
use tailor_tensor::DType;

/// Options of `tailor models synth`.
#[derive(Args)]
pub struct SynthArgs {
    /// The file to write.
    out: PathBuf,
    /// A named shape: smollm2, 1b, 3b or 8b (the --hidden … options change it).
    #[arg(long, default_value = "1b")]
    shape: String,
    /// Model width.
    #[arg(long)]
    hidden: Option<usize>,
    /// MLP width.
    #[arg(long)]
    intermediate: Option<usize>,
    /// Decoder layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Key/value heads.
    #[arg(long)]
    kv_heads: Option<usize>,
    /// Weight type: f16, bf16, f32, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs
    /// (a k-quant matrix whose rows are not whole 256-blocks falls back as
    /// llama.cpp does: q4_k to q5_0, q6_k to q8_0).
    #[arg(long, default_value = "f16")]
    dtype: String,
    /// Seed of the weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// The GGUF whose tokenizer and chat template to use (default: the fetched SmolLM2).
    #[arg(long)]
    tokenizer_from: Option<PathBuf>,
}

/// Writes the synthetic model.
pub fn synth(args: &SynthArgs) -> Result<()> {
    let Some(mut shape) = SynthShape::named(&args.shape) else {
        bail!("unknown shape {:?}: smollm2, 1b, 3b or 8b", args.shape)
    };
    let overrides = [
        (&mut shape.hidden, args.hidden),
        (&mut shape.intermediate, args.intermediate),
        (&mut shape.layers, args.layers),
        (&mut shape.heads, args.heads),
        (&mut shape.kv_heads, args.kv_heads),
    ];
    for (field, value) in overrides {
        if let Some(value) = value {
            *field = value;
        }
    }
    let dtype: DType = args.dtype.parse()?;
    if dtype.ggml_id().is_none() {
        bail!("{dtype} has no GGUF type; pick a GGUF one");
    }
    let template_path = match &args.tokenizer_from {
        Some(path) => path.clone(),
        None => crate::fetch::cache_dir().join(tailor_model::cache::SMOLLM2_GGUF),
    };
    let template = GgufFile::open(&template_path).with_context(|| {
        format!("reading the tokenizer from {} (run `tailor models fetch`)", template_path.display())
    })?;
    let bar = crate::rag::progress_bar("tensors");
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let writer = synthesize(&template, shape, dtype, args.seed, &progress)?;
    bar.finish_and_clear();
    let file = std::fs::File::create(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let mut sink = std::io::BufWriter::with_capacity(1 << 22, file);
    writer
        .write_to(&mut sink)
        .and_then(|_| std::io::Write::flush(&mut sink))
        .with_context(|| format!("writing {}", args.out.display()))?;
    let vocab = template.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()).map_or(0, |t| t.len());
    eprintln!(
        "wrote {} ({:.2}B parameters, {dtype}, {} bytes)",
        args.out.display(),
        shape.parameters(vocab) as f64 / 1e9,
        std::fs::metadata(&args.out).map_or(0, |m| m.len())
    );
    Ok(())
}

/// Options of `tailor models quantize`.
#[derive(Args)]
pub struct QuantizeArgs {
    /// The GGUF to read.
    input: PathBuf,
    /// The GGUF to write.
    out: PathBuf,
    /// Weight type of every matrix: f16, bf16, f32, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k,
    /// q6_k, iq4_nl, iq4_xs.
    #[arg(long)]
    dtype: String,
}

/// Requantizes a GGUF with tailor's quantizers.
pub fn quantize(args: &QuantizeArgs) -> Result<()> {
    let dtype: DType = args.dtype.parse()?;
    if dtype.ggml_id().is_none() {
        bail!("{dtype} has no GGUF type; pick a GGUF one");
    }
    let file = GgufFile::open(&args.input).with_context(|| format!("reading {}", args.input.display()))?;
    let bar = crate::rag::progress_bar("tensors");
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let writer = requantize(&file, dtype, &progress)?;
    bar.finish_and_clear();
    write_file(&writer, &args.out)
}

/// Writes a GGUF through a large buffer.
fn write_file(writer: &tailor_model::gguf::GgufWriter, out: &std::path::Path) -> Result<()> {
    let file = std::fs::File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut sink = std::io::BufWriter::with_capacity(1 << 22, file);
    writer
        .write_to(&mut sink)
        .and_then(|_| std::io::Write::flush(&mut sink))
        .with_context(|| format!("writing {}", out.display()))?;
    eprintln!("wrote {} ({} bytes)", out.display(), std::fs::metadata(out).map_or(0, |m| m.len()));
    Ok(())
}
