//! `tailor train`: LoRA fine-tuning of a model on a JSONL file, in-process,
//! with a progress bar, a metrics log, checkpoints and a loss curve.

use crate::ModelArgs;
use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};
use std::path::PathBuf;
use tailor_model::lora::Targets;
use tailor_model::names::Proj;
use tailor_tensor::cpu::BlockCompute;
use tailor_tensor::DType;
use tailor_train::backward::Checkpointing;
use tailor_train::data::{self, Overlong};
use tailor_train::optim::{Decay, StateBits};
use tailor_train::{Datasets, LoraSettings, StepReport, TrainConfig, Trainer};

/// How the weights are trained.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Method {
    /// LoRA on the base as the file stores it (a GGUF's quantized blocks
    /// included).
    Lora,
    /// LoRA on a 4-bit base: a dense base's projections are quantized on
    /// load (NF4, block 64, nf4_dq with `--double-quant`, or `--dtype`;
    /// the embedding and lm_head stay as stored, as in QLoRA); a
    /// quantized GGUF keeps its own blocks. On a CPU with AVX-512 BF16
    /// the base is multiplied in bf16 and a dense embedding and lm_head
    /// are held in bf16 (as a QLoRA base loaded in bf16); in f32 elsewhere.
    Qlora,
    /// Every weight, in f32 with AdamW moments (small models): writes a
    /// Hugging Face folder.
    Full,
}

#[derive(Args)]
pub struct TrainArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// Training examples: JSONL, one {"messages": [...]}, {"prompt", "completion"} or {"text"} per line.
    #[arg(long)]
    data: PathBuf,
    /// Validation examples (same format); without it, see --eval-split.
    #[arg(long)]
    eval: Option<PathBuf>,
    /// Hold out this share of --data for validation when --eval is not given.
    #[arg(long, default_value_t = 0.0)]
    eval_split: f64,
    /// Output folder: the PEFT adapter, metrics.jsonl, loss.png, checkpoints/.
    #[arg(long)]
    out: PathBuf,
    #[arg(long, value_enum, default_value_t = Method::Lora)]
    method: Method,
    /// With --method qlora: QLoRA's double quantization, each NF4 block's
    /// absmax in 8 bits (nf4_dq: 4.125 bits per weight instead of 4.5).
    #[arg(long)]
    double_quant: bool,
    /// Passes over the data.
    #[arg(long, default_value_t = 3)]
    epochs: usize,
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Continue the run in --out from its newest intact checkpoint.
    #[arg(long)]
    resume: bool,
    /// LoRA rank.
    #[arg(long, default_value_t = 8)]
    r: usize,
    /// LoRA alpha (scaling alpha/r).
    #[arg(long, default_value_t = 16.0)]
    alpha: f64,
    /// Projections to adapt: all-linear, or a comma list of q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj.
    #[arg(long, default_value = "all-linear")]
    targets: String,
    /// Scale by alpha/sqrt(r) (rsLoRA).
    #[arg(long)]
    rslora: bool,
    /// Dropout on the LoRA path's inputs during training (PEFT's lora_dropout, 0 to <1).
    #[arg(long, default_value_t = 0.0)]
    dropout: f64,
    /// Peak learning rate.
    #[arg(long, default_value_t = 1e-3)]
    lr: f32,
    /// Examples per micro-batch.
    #[arg(long, default_value_t = 4)]
    batch_size: usize,
    /// Micro-batches per optimizer step.
    #[arg(long, default_value_t = 1)]
    grad_accum: usize,
    /// Share of the steps spent warming up.
    #[arg(long, default_value_t = 0.05)]
    warmup: f32,
    #[arg(long, value_enum, default_value_t = Schedule::Cosine)]
    schedule: Schedule,
    #[arg(long, default_value_t = 0.0)]
    weight_decay: f32,
    /// How AdamW keeps its moments.
    #[arg(long, value_enum, default_value_t = Optim::Adamw)]
    optim: Optim,
    /// Global gradient-norm bound (0: none).
    #[arg(long, default_value_t = 1.0)]
    max_grad_norm: f32,
    /// Longest example, in tokens (default: the model's context, at most 2048).
    #[arg(long)]
    max_tokens: Option<usize>,
    /// Refuse examples longer than --max-tokens instead of truncating them.
    #[arg(long)]
    refuse_overlong: bool,
    /// A checkpoint every this many steps.
    #[arg(long, default_value_t = 50)]
    checkpoint_every: usize,
    /// Evaluate every this many steps (0: after each epoch).
    #[arg(long, default_value_t = 0)]
    eval_every: usize,
    /// Keep only each layer's input and recompute its activations in the backward (less memory).
    #[arg(long)]
    recompute: bool,
}

/// Keeps what a step frees in the heap for the next step. Every step
/// allocates and frees the same large buffers (each layer's tape, the
/// logits); glibc returns blocks past its adaptive threshold, and the heap's
/// freed top, to the kernel, which zeroes them again on the next step's page
/// faults: `clear_page` was 4.3 % of a SmolLM2 QLoRA step in perf and is
/// 0.5 % with these settings (2.11/1.86 → 2.04/1.80 s/step alternating).
/// Blocks up to 32 MiB (glibc's most) come from the heap, which is never
/// trimmed; peak RSS of LoRA and QLoRA runs is unchanged. Not for full
/// fine-tuning, whose compute-bound steps gain little and whose heap grew
/// by half a gigabyte this way (3250 → 3783 MB on SmolLM2).
/// The process is this one run, so holding its high-water mark costs
/// nothing (the daemon, which serves too, keeps glibc's defaults).
fn keep_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets two of glibc's allocator parameters, which
    // it reads under its own lock; no memory is touched.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
    }
}

#[derive(Clone, Copy, ValueEnum)]
enum Schedule {
    Constant,
    Linear,
    Cosine,
}

/// How AdamW keeps its moments.
#[derive(Clone, Copy, ValueEnum)]
enum Optim {
    /// In f32, as PyTorch's AdamW: 8 bytes per trained value.
    Adamw,
    /// In 8 bits, blockwise (bitsandbytes' idea): 2 bytes per trained value,
    /// a full fine-tune's memory from 16 to 10 bytes per weight.
    #[value(name = "adamw-8bit")]
    Adamw8bit,
}

pub fn train_cmd(args: &TrainArgs) -> Result<()> {
    if args.method != Method::Full {
        keep_freed_memory();
    }
    let mut model_args = args.model.clone();
    // Where the base is multiplied in bf16, so are the embedding and
    // lm_head (a QLoRA base loaded in bf16), else they stay as stored.
    let others = (BlockCompute::best() == BlockCompute::Bf16).then_some(DType::BF16);
    match (args.method, args.double_quant) {
        (Method::Qlora, false) => model_args.quantize_projections_to("nf4", others),
        (Method::Qlora, true) => model_args.quantize_projections_to("nf4_dq", others),
        (_, true) => bail!("--double-quant quantizes a QLoRA base: it needs --method qlora"),
        (_, false) => {}
    }
    let mut model = crate::run::load_model(&model_args)?;
    let max_tokens = args.max_tokens.unwrap_or(model.llama.context_length().min(2048));
    let overlong = if args.refuse_overlong { Overlong::Refuse } else { Overlong::Truncate };
    let load = |path: &PathBuf| {
        data::load(path, &model, max_tokens, overlong).with_context(|| format!("reading {}", path.display()))
    };
    let mut train = load(&args.data)?;
    let eval = match (&args.eval, args.eval_split) {
        (Some(path), _) => Some(load(path)?),
        (None, share) if share > 0.0 => {
            let (kept, held_out) = train.split(share);
            train = kept;
            Some(held_out)
        }
        _ => None,
    };
    if train.truncated > 0 {
        eprintln!("warning: {} examples longer than {max_tokens} tokens were truncated", train.truncated);
    }
    let config = TrainConfig {
        lora: LoraSettings {
            r: args.r,
            alpha: args.alpha,
            targets: parse_targets(&args.targets)?,
            use_rslora: args.rslora,
            dropout: args.dropout,
        },
        epochs: args.epochs,
        batch_size: args.batch_size,
        grad_accum: args.grad_accum,
        learning_rate: args.lr,
        warmup_ratio: args.warmup,
        decay: match args.schedule {
            Schedule::Constant => Decay::Constant,
            Schedule::Linear => Decay::Linear,
            Schedule::Cosine => Decay::Cosine,
        },
        adamw: tailor_train::optim::AdamW {
            weight_decay: args.weight_decay,
            state: match args.optim {
                Optim::Adamw => StateBits::F32,
                Optim::Adamw8bit => StateBits::Int8,
            },
            ..Default::default()
        },
        max_grad_norm: args.max_grad_norm,
        seed: args.seed,
        checkpoint_every: args.checkpoint_every,
        eval_every: args.eval_every,
        checkpointing: if args.recompute { Checkpointing::Layers } else { Checkpointing::Off },
        ..TrainConfig::default()
    };
    let base_name = model.source.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let validation = eval.as_ref().map(|e| format!(", {} validation examples", e.examples.len()));
    eprintln!(
        "{} training examples ({} tokens, {} trained){}",
        train.examples.len(),
        train.tokens(),
        train.target_tokens(),
        validation.unwrap_or_default()
    );
    let mut warn = |message: String| eprintln!("warning: {message}");
    let data = Datasets { train, eval };
    let full = args.method == Method::Full;
    let mut trainer = match full {
        false => Trainer::new(&model.llama, &base_name, config, data, &args.out, args.resume, &mut warn)?,
        true => Trainer::new_full(&mut model.llama, &base_name, config, data, &args.out, args.resume, &mut warn)?,
    };
    if trainer.start_step() > 0 {
        eprintln!("resuming at step {} of {}", trainer.start_step(), trainer.total_steps());
    }
    let what = if full { "every weight".to_string() } else { format!("LoRA r={} on {}", args.r, args.targets) };
    eprintln!(
        "{what}: {:.2} M trainable parameters, {} steps",
        trainer.parameter_count() as f64 / 1e6,
        trainer.total_steps()
    );
    let bar = ProgressBar::new(trainer.total_steps() as u64).with_style(
        ProgressStyle::with_template("train [{bar:30}] {pos}/{len} steps {msg} eta {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_position(trainer.start_step() as u64);
    let mut last_eval = None;
    let mut on_step = |report: &StepReport| {
        last_eval = report.eval_loss.or(last_eval);
        let eval = last_eval.map(|l| format!(" eval {l:.3}")).unwrap_or_default();
        bar.set_message(format!("loss {:.3}{eval} {:.0} tok/s", report.loss, report.tokens_per_second));
        bar.set_position(report.step as u64);
    };
    let summary = trainer.run(&mut on_step, &|| false)?;
    bar.finish_and_clear();
    drop(trainer);
    if full {
        tailor_model::merge::save_model(&model, &args.out, &|_, _| {})
            .with_context(|| format!("writing {}", args.out.display()))?;
    }
    let eval = summary.final_eval_loss.map(|l| format!(", validation loss {l:.4}")).unwrap_or_default();
    eprintln!("final loss {:.4}{eval}", summary.final_loss);
    let curve = args.out.join("loss.png");
    tailor_train::plot::loss_curve(&args.out.join(tailor_train::trainer::METRICS_FILE), &curve)
        .with_context(|| format!("drawing {}", curve.display()))?;
    let written = if full { "model (Hugging Face folder)" } else { "adapter (PEFT layout)" };
    eprintln!("{written}: {}; loss curve: {}", summary.adapter.display(), curve.display());
    Ok(())
}

/// `all-linear` or a comma list of projection names.
fn parse_targets(text: &str) -> Result<Targets> {
    if text == "all-linear" {
        return Ok(Targets::AllLinear);
    }
    let names: Vec<String> = text.split(',').map(|s| s.trim().to_string()).filter(|s| !s.is_empty()).collect();
    for name in &names {
        if !Proj::ALL.iter().any(|p| p.module_name() == name) {
            let known: Vec<&str> = Proj::ALL.iter().map(|p| p.module_name()).collect();
            bail!("unknown target module {name:?}: expected all-linear or some of {}", known.join(", "));
        }
    }
    if names.is_empty() {
        bail!("--targets names no module");
    }
    Ok(Targets::Names(names))
}
