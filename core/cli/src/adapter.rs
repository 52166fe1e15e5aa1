//! `tailor adapter`: offline tools for PEFT LoRA adapters — what one holds
//! and whether it fits a base (`inspect`), and folding one into a base's
//! weights (`merge`).

use crate::ModelArgs;
use anyhow::{Context, Result};
use clap::Subcommand;
use indicatif::ProgressBar;
use std::path::PathBuf;
use tailor_model::lora::{read_config, Targets};
use tailor_model::{Adapter, AdapterLimits};

#[derive(Subcommand)]
pub enum AdapterCommand {
    /// Rank, targets, parameter count, and whether it fits the base model.
    Inspect {
        /// The adapter folder (adapter_config.json + adapter_model.safetensors).
        dir: PathBuf,
        #[command(flatten)]
        model: ModelArgs,
    },
    /// Write BASE with ADAPTER folded into its weights as a Hugging Face folder (f32).
    Merge {
        /// The base: a .gguf file or Hugging Face folder.
        base: PathBuf,
        /// The adapter folder.
        adapter: PathBuf,
        /// The folder to write.
        out: PathBuf,
    },
}

pub fn adapter_cmd(command: &AdapterCommand) -> Result<()> {
    match command {
        AdapterCommand::Inspect { dir, model } => inspect(dir, model),
        AdapterCommand::Merge { base, adapter, out } => merge(base, adapter, out),
    }
}

fn inspect(dir: &std::path::Path, model: &ModelArgs) -> Result<()> {
    let config = read_config(dir)?;
    let targets = match &config.targets {
        Targets::Names(names) => names.join(", "),
        Targets::Regex(pattern) => format!("regex {pattern}"),
        Targets::AllLinear => "all-linear".into(),
    };
    println!("adapter      {}", dir.display());
    println!("trained on   {}", config.base_model.as_deref().unwrap_or("(not recorded)"));
    println!("kind         {}", if config.use_dora { "DoRA" } else { "LoRA" });
    println!(
        "r / alpha    {} / {}{}",
        config.r,
        config.alpha,
        if config.use_rslora { " (rsLoRA: alpha/sqrt(r))" } else { "" }
    );
    println!("targets      {targets}");
    if !config.rank_pattern.is_empty() || !config.alpha_pattern.is_empty() {
        println!("patterns     ranks {:?}, alphas {:?}", config.rank_pattern, config.alpha_pattern);
    }
    if let Some(layers) = &config.layers_to_transform {
        println!("layers       {layers:?}");
    }
    let base = crate::run::load_model(model)?;
    match Adapter::load(dir, &base.llama, AdapterLimits::default()) {
        Ok(adapter) => {
            println!(
                "fits         {} ({} modules, largest rank {})",
                base.source.display(),
                adapter.modules().len(),
                adapter.max_rank()
            );
            println!("modules      {}", adapter.target_names().join(", "));
            println!(
                "parameters   {} ({:.1} MiB in f32)",
                adapter.parameter_count(),
                adapter.memory_bytes() as f64 / (1 << 20) as f64
            );
            Ok(())
        }
        Err(e) => Err(e).with_context(|| format!("does not fit {}", base.source.display())),
    }
}

fn merge(base: &std::path::Path, adapter_dir: &std::path::Path, out: &std::path::Path) -> Result<()> {
    let model =
        crate::run::load_model(&ModelArgs { model: Some(base.to_path_buf()), dtype: None, scope: Default::default() })?;
    let adapter = Adapter::load(adapter_dir, &model.llama, AdapterLimits::default())
        .with_context(|| format!("loading adapter {}", adapter_dir.display()))?;
    let bar = ProgressBar::new(1);
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let report = tailor_model::merge::merge_adapter(&model, &adapter, out, &progress)?;
    bar.finish_and_clear();
    if report.base_was_quantized {
        eprintln!(
            "warning: {} stores quantized weights; the merged folder holds them dequantized to f32 plus the \
             adapter, so it matches the quantized model with the adapter, not a full-precision original",
            base.display()
        );
    }
    eprintln!("merged {} modules into {}", report.merged_modules, out.display());
    Ok(())
}
