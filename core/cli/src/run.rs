//! Commands that load a model and run it: convert, generate, chat.

use crate::ModelArgs;
use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use std::io::{BufRead, Write};
use std::path::Path;
use tailor_model::{
    generate_on, ActiveAdapter, Adapter, AdapterLimits, CpuDecoder, GenerateParams, Generation, JsonGrammar,
    LoadOptions, Message, Model, SamplingParams, TokenEvent,
};
use tailor_tensor::{DType, Device};

#[derive(Args)]
pub struct SamplingArgs {
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// 0 = greedy.
    #[arg(long, default_value_t = 0.0)]
    temperature: f32,
    /// Keep the k most likely tokens (0: off).
    #[arg(long, default_value_t = 0)]
    top_k: usize,
    /// Nucleus sampling mass (1: off).
    #[arg(long, default_value_t = 1.0)]
    top_p: f32,
    /// Repetition penalty (1: off).
    #[arg(long, default_value_t = 1.0)]
    repeat_penalty: f32,
    /// Subtracted from the logit of every token already generated (-2..2).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    presence_penalty: f32,
    /// Subtracted once per earlier occurrence of a token (-2..2).
    #[arg(long, default_value_t = 0.0, allow_hyphen_values = true)]
    frequency_penalty: f32,
    /// Stop where this text appears (not printed; repeat for several).
    #[arg(long)]
    stop: Vec<String>,
    /// Answer with one JSON object (constrained decoding).
    #[arg(long)]
    json: bool,
    /// Answer with a JSON value that validates against this JSON schema file.
    #[arg(long, conflicts_with = "json")]
    json_schema: Option<std::path::PathBuf>,
    /// Random seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
}

/// A LoRA adapter to run with (PEFT folder).
#[derive(Args)]
pub struct AdapterArgs {
    /// A PEFT LoRA adapter folder (adapter_config.json + adapter_model.safetensors).
    #[arg(long)]
    adapter: Option<std::path::PathBuf>,
    /// Multiplier on the adapter's delta (1: as trained).
    #[arg(long, default_value_t = 1.0, requires = "adapter")]
    adapter_scale: f32,
}

impl AdapterArgs {
    /// Loads the adapter for `model`, if one was named.
    pub fn load(&self, model: &Model) -> Result<Option<ActiveAdapter>> {
        let Some(dir) = &self.adapter else { return Ok(None) };
        let adapter = Adapter::load(dir, &model.llama, AdapterLimits::default())
            .with_context(|| format!("loading adapter {}", dir.display()))?;
        eprintln!(
            "adapter {}: rank {}, {} on {} modules, {:.1} M parameters",
            dir.display(),
            adapter.max_rank(),
            adapter.target_names().join(","),
            adapter.modules().len(),
            adapter.parameter_count() as f64 / 1e6
        );
        Ok(Some(ActiveAdapter::new(std::sync::Arc::new(adapter), self.adapter_scale)?))
    }
}

impl SamplingArgs {
    /// The generation parameters these flags name.
    pub fn params(&self, logprobs: usize, adapter: Option<ActiveAdapter>) -> Result<GenerateParams> {
        Ok(GenerateParams {
            max_tokens: self.max_tokens,
            sampling: SamplingParams {
                temperature: self.temperature,
                top_k: self.top_k,
                top_p: self.top_p,
                repetition_penalty: self.repeat_penalty,
                presence_penalty: self.presence_penalty,
                frequency_penalty: self.frequency_penalty,
                seed: self.seed,
            },
            stop_tokens: Vec::new(),
            stop_strings: self.stop.clone(),
            grammar: self.grammar()?,
            logprobs,
            adapter,
        })
    }

    /// The JSON grammar `--json` or `--json-schema` asks for.
    fn grammar(&self) -> Result<Option<std::sync::Arc<JsonGrammar>>> {
        let grammar = match (&self.json_schema, self.json) {
            (Some(path), _) => {
                let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                let schema: serde_json::Value =
                    serde_json::from_str(&text).with_context(|| format!("{} is not JSON", path.display()))?;
                JsonGrammar::from_schema(&schema)?
            }
            (None, true) => JsonGrammar::any_object(),
            (None, false) => return Ok(None),
        };
        Ok(Some(std::sync::Arc::new(grammar)))
    }
}

#[derive(Args)]
pub struct GenerateArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// The prompt.
    #[arg(long)]
    prompt: String,
    /// Wrap the prompt as a user message in the model's chat template.
    #[arg(long)]
    chat: bool,
    /// System message (with --chat).
    #[arg(long)]
    system: Option<String>,
    /// Print, per generated position, the top-K tokens with log-probabilities as JSON lines.
    #[arg(long, default_value_t = 0)]
    logprobs: usize,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
}

#[derive(Args)]
pub struct ChatArgs {
    #[command(flatten)]
    model: ModelArgs,
    /// System message.
    #[arg(long)]
    system: Option<String>,
    #[command(flatten)]
    sampling: SamplingArgs,
    #[command(flatten)]
    adapter: AdapterArgs,
}

/// Loads a model with a progress bar on stderr.
pub fn load_model(args: &ModelArgs) -> Result<Model> {
    let path = match &args.model {
        Some(p) => p.clone(),
        None => crate::fetch::default_model()?,
    };
    let dtype = args.dtype.as_deref().map(str::parse::<DType>).transpose()?;
    let bar = ProgressBar::new(1).with_style(
        ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors {elapsed}")
            .unwrap_or_else(|_| ProgressStyle::default_bar()),
    );
    bar.set_message(path.display().to_string());
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    let model = Model::load(&path, LoadOptions { dtype, scope: args.scope, progress: &progress })?;
    bar.finish_and_clear();
    Ok(model)
}

pub fn convert(gguf: &Path, out_dir: &Path) -> Result<()> {
    let bar = ProgressBar::new(1);
    let progress = |done: usize, total: usize| {
        bar.set_length(total as u64);
        bar.set_position(done as u64);
    };
    tailor_model::convert::gguf_to_hf(gguf, out_dir, &progress)
        .with_context(|| format!("converting {}", gguf.display()))?;
    bar.finish_and_clear();
    eprintln!("wrote {}", out_dir.display());
    Ok(())
}

/// The device's kernels and memory pool, for commands that run there.
#[cfg(feature = "cuda")]
pub type DeviceBackend = tailor_tensor::cuda::backend::CudaBackend;
/// Without CUDA in this build no command runs on a device.
#[cfg(not(feature = "cuda"))]
pub type DeviceBackend = std::convert::Infallible;

/// The backend of `device` when it is a CUDA device (`None`: the CPU). Its
/// pool is bounded by the device itself (the driver's out-of-memory is a
/// typed error).
pub fn open_device(device: Device) -> Result<Option<DeviceBackend>> {
    match device {
        Device::Cpu => Ok(None),
        #[cfg(feature = "cuda")]
        Device::Cuda(ordinal) => Ok(Some(DeviceBackend::new(ordinal, usize::MAX >> 2)?)),
        // `Device::select` falls back to the CPU without the feature.
        #[cfg(not(feature = "cuda"))]
        Device::Cuda(_) => Ok(None),
    }
}

/// The decoder a command generates with: the CPU's, or the device's.
enum Runner<'m> {
    Cpu(CpuDecoder<'m>),
    #[cfg(feature = "cuda")]
    Device(tailor_model::device::DeviceDecoder<'m, tailor_tensor::cuda::driver::CudaExecutor>),
}

impl<'m> Runner<'m> {
    /// `model` on `backend`'s device (its weights uploaded once), or on the CPU.
    fn new(model: &'m Model, backend: Option<&'m DeviceBackend>) -> Result<Runner<'m>> {
        let Some(backend) = backend else { return Ok(Runner::Cpu(CpuDecoder::new(&model.llama))) };
        #[cfg(feature = "cuda")]
        {
            use tailor_model::device::{DeviceDecoder, DeviceLlama, DEFAULT_ADAPTER_SLOTS};
            let on_device = DeviceLlama::upload(&model.llama, backend)
                .with_context(|| format!("uploading the model to {}", backend.describe()))?;
            eprintln!("tailor: generating on {}", backend.describe());
            Ok(Runner::Device(DeviceDecoder::new(on_device, DEFAULT_ADAPTER_SLOTS)))
        }
        #[cfg(not(feature = "cuda"))]
        match *backend {}
    }

    fn generate(
        &mut self,
        model: &Model,
        prompt: &[u32],
        params: &GenerateParams,
        on_token: &mut dyn FnMut(&TokenEvent) -> bool,
    ) -> Result<Generation> {
        Ok(match self {
            Runner::Cpu(decoder) => generate_on(model, decoder, prompt, params, on_token)?,
            #[cfg(feature = "cuda")]
            Runner::Device(decoder) => generate_on(model, decoder, prompt, params, on_token)?,
        })
    }
}

pub fn generate_cmd(args: &GenerateArgs, device: Device) -> Result<()> {
    let model = load_model(&args.model)?;
    let backend = open_device(device)?;
    let mut runner = Runner::new(&model, backend.as_ref())?;
    let prompt = if args.chat {
        let mut messages = Vec::new();
        if let Some(system) = &args.system {
            messages.push(Message::new("system", system));
        }
        messages.push(Message::new("user", &args.prompt));
        model.encode_chat(&messages)?
    } else {
        model.encode(&args.prompt)?
    };
    let params = args.sampling.params(args.logprobs, args.adapter.load(&model)?)?;
    let stdout = std::io::stdout();
    let json_lines = args.logprobs > 0;
    let mut on_token = |event: &TokenEvent| {
        let mut out = stdout.lock();
        let written = if json_lines { writeln!(out, "{}", logprob_line(event)) } else { write!(out, "{}", event.text) };
        written.and_then(|_| out.flush()).is_ok()
    };
    let result = runner.generate(&model, &prompt, &params, &mut on_token)?;
    if !json_lines {
        println!("{}", result.unstreamed);
    }
    let decode_tps = result.tokens.len() as f64 / result.decode_secs.max(1e-9);
    eprintln!(
        "[{} prompt tokens in {:.2}s, {} generated at {:.1} tok/s, finish: {:?}]",
        result.prompt_tokens,
        result.prefill_secs,
        result.tokens.len(),
        decode_tps,
        result.finish
    );
    Ok(())
}

/// One OpenAI-style logprobs entry as a JSON line.
fn logprob_line(event: &TokenEvent) -> String {
    let top: Vec<serde_json::Value> = event
        .top_logprobs
        .iter()
        .map(|(id, token, logprob)| serde_json::json!({"token": token, "id": id, "logprob": logprob}))
        .collect();
    serde_json::json!({"token": event.token, "text": event.text, "id": event.id, "logprob": event.logprob, "top_logprobs": top}).to_string()
}

pub fn chat_cmd(args: &ChatArgs, device: Device) -> Result<()> {
    let model = load_model(&args.model)?;
    let backend = open_device(device)?;
    let mut runner = Runner::new(&model, backend.as_ref())?;
    let mut messages = Vec::new();
    if let Some(system) = &args.system {
        messages.push(Message::new("system", system));
    }
    let params = args.sampling.params(0, args.adapter.load(&model)?)?;
    let stdin = std::io::stdin();
    eprintln!("chatting with {} (empty line or Ctrl-D to quit)", model.source.display());
    loop {
        eprint!("> ");
        let mut line = String::new();
        if stdin.lock().read_line(&mut line)? == 0 || line.trim().is_empty() {
            return Ok(());
        }
        messages.push(Message::new("user", line.trim_end()));
        let prompt = model.encode_chat(&messages)?;
        let mut on_token = |event: &TokenEvent| {
            print!("{}", event.text);
            std::io::stdout().flush().is_ok()
        };
        let result = runner.generate(&model, &prompt, &params, &mut on_token)?;
        println!("{}", result.unstreamed);
        messages.push(Message::new("assistant", &result.text));
    }
}

pub fn embed_cmd(model: Option<std::path::PathBuf>, texts: &[String]) -> Result<()> {
    let path = match model {
        Some(p) => p,
        None => crate::fetch::default_encoder()?,
    };
    let encoder = tailor_model::Encoder::load(&path)?;
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    for vector in encoder.embed(&refs)? {
        println!("{}", serde_json::to_string(&vector)?);
    }
    Ok(())
}
