//! The `generate` stage: loads a model (GGUF or Hugging Face folder) once
//! per instance and streams completions. Concurrent requests share one
//! continuous-batching engine (tailor-engine): each joins the running batch
//! between decode steps, and a caller that goes away leaves it.
//!
//! Config: `{"model": PATH, "dtype": "q8_0"?, "max_batch": N?,
//! "prefix_cache_mb": N?, "prefill_chunk": N?}` (batch size limit, default
//! 16; memory for reused prompt prefixes, default 128, 0 turns reuse off;
//! prompt tokens prefilled between two decode steps, default 128; `"max_n"`,
//! most generations per request, default 8). Request: `{"messages":
//! [{"role", "content"}…]}` (chat template applied) or `{"prompt": TEXT}`,
//! plus `max_tokens`, `temperature`, `top_p`, `top_k`, `seed` (absent: a
//! fresh random one), `repetition_penalty`, `presence_penalty`,
//! `frequency_penalty`, `stop` (up to 4 strings of at most 256 bytes),
//! `n` (generations of the prompt, batched together, seeds `seed + i`) and
//! `logprobs` (0..=20 alternatives per token; the chosen token's
//! log-probability comes with any value) and `response_format`
//! (`{"type": "json_object"}` or `{"type": "json_schema", "schema": …}`:
//! the answer is constrained to it, see `tailor_model::grammar`). Output: one JSON object per line:
//! `{"type":"token","index":I,"text":…,"id":…}` per token (with
//! `"logprob"`, `"token"` and `"top_logprobs": [{"token","id","logprob"}]`
//! when asked; a last piece of held-back text comes without `id`), then per
//! generation `{"type":"done","index":I,"finish_reason":"stop"|"length",
//! "prompt_tokens", "completion_tokens"}`.
//! `{"stats": true}` answers the engine's counters: `{"waiting", "running",
//! "steps", "decoded_tokens", "prefix_hits", "prefix_tokens"}` (queue depth,
//! batch size, decode steps and the tokens they produced, prompts that
//! reused a cached prefix and the tokens reused), and the adapters'
//! (`adapters_loaded`, `adapter_bytes`, `adapter_hits`, `adapter_misses`,
//! `adapter_evictions`). `{"describe": true}` answers the model's shape:
//! `{"context_length", "vocab_size", "hidden_size", "layers",
//! "architecture", "chat_template"}`. `{"tokenize": {"prompt": TEXT} |
//! {"messages": […]}}` answers `{"tokens": [ID…], "count": N,
//! "max_model_len": N}` (the ids a generation of that prompt starts from,
//! the chat template applied to messages); `{"detokenize": {"tokens":
//! [ID…]}}` answers `{"prompt": TEXT}`.
//!
//! LoRA adapters (PEFT folders): config `"adapter_dirs": [DIR…]` (the only
//! places adapters load from), `"adapters": {NAME: PATH}` (loaded at
//! start, pinned), `"max_adapters"` (in memory at once, default 32),
//! `"max_adapter_mb"` (default 1024), `"max_rank"` (default 256). A
//! generation request names one with `"adapter": NAME` and optionally
//! `"adapter_scale"`; requests with different adapters share the decode
//! batch. Admin requests: `{"adapters": {"op": "list"}}`, `{"adapters":
//! {"op": "load", "name", "path", "pinned"?}}`, `{"adapters": {"op":
//! "unload", "name"}}`; unknown names are `ERR_NOT_FOUND`, a taken name
//! `ERR_CONFLICT`.
//!
//! Fine-tuning on the loaded base (see [`jobs`]): config `"jobs_dir"`
//! (where jobs and their adapters live; no jobs without it) and
//! `"data_dirs"` (the only places training files are read from); requests
//! `{"jobs": {"op": "create" | "list" | "get" | "events" | "checkpoints" |
//! "cancel", …}}`. A job that succeeds is registered as an adapter.

mod jobs;

use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use tailor_engine::{AdapterError, AdapterRegistry, Engine, EngineOptions, Event, RegistryOptions};
use tailor_model::{
    ActiveAdapter, AdapterLimits, FinishReason, GenerateParams, JsonGrammar, LoadOptions, Message, Model,
    SamplingParams,
};
use tailor_plugin_abi::{export_plugin, Stage, StageError, StageKind};

#[derive(Deserialize)]
struct Config {
    model: PathBuf,
    dtype: Option<String>,
    max_batch: Option<usize>,
    prefix_cache_mb: Option<usize>,
    prefill_chunk: Option<usize>,
    /// Most generations one request may ask for (`n`).
    max_n: Option<usize>,
    #[serde(default)]
    adapter_dirs: Vec<PathBuf>,
    #[serde(default)]
    adapters: BTreeMap<String, PathBuf>,
    max_adapters: Option<usize>,
    max_adapter_mb: Option<usize>,
    max_rank: Option<usize>,
    /// Where fine-tuning jobs live (no jobs without it).
    jobs_dir: Option<PathBuf>,
    /// Where training files may be read from.
    #[serde(default)]
    data_dirs: Vec<PathBuf>,
}

#[derive(Deserialize)]
struct Request {
    /// `{"stats": true}` asks for the engine's counters instead of a generation.
    #[serde(default)]
    stats: bool,
    messages: Option<Vec<Message>>,
    prompt: Option<String>,
    max_tokens: Option<usize>,
    temperature: Option<f32>,
    top_p: Option<f32>,
    top_k: Option<usize>,
    seed: Option<u64>,
    repetition_penalty: Option<f32>,
    presence_penalty: Option<f32>,
    frequency_penalty: Option<f32>,
    /// Texts that end the generation.
    #[serde(default)]
    stop: Vec<String>,
    /// Generations of this prompt.
    n: Option<usize>,
    /// Log-probabilities of the chosen token and this many alternatives.
    logprobs: Option<usize>,
    /// JSON output: `{"type": "json_object"}` or `{"type": "json_schema", "schema": …}`.
    response_format: Option<serde_json::Value>,
    /// A registered adapter's name.
    adapter: Option<String>,
    /// Multiplier on the adapter's delta.
    adapter_scale: Option<f32>,
    /// An adapter admin request.
    adapters: Option<AdapterOp>,
    /// A fine-tuning job request.
    jobs: Option<jobs::JobOp>,
    /// Asks for the model's shape.
    #[serde(default)]
    describe: bool,
    /// Asks for the token ids of a prompt or a chat.
    tokenize: Option<TokenizeRequest>,
    /// Asks for the text of token ids.
    detokenize: Option<DetokenizeRequest>,
}

/// `{"tokenize": {"prompt": TEXT} | {"messages": […]}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenizeRequest {
    prompt: Option<String>,
    messages: Option<Vec<Message>>,
}

/// `{"detokenize": {"tokens": [ID…]}}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DetokenizeRequest {
    tokens: Vec<u32>,
}

/// `{"adapters": {"op": …}}`.
#[derive(Deserialize)]
#[serde(tag = "op", rename_all = "lowercase")]
enum AdapterOp {
    List,
    Load {
        name: String,
        path: PathBuf,
        #[serde(default)]
        pinned: bool,
    },
    Unload {
        name: String,
    },
}

/// An adapter error as a stage error of the right status.
fn adapter_error(e: AdapterError) -> StageError {
    match e {
        AdapterError::Unknown(_) => StageError::not_found(e.to_string()),
        AdapterError::Exists(_) => StageError::conflict(e.to_string()),
        other => StageError::invalid(other.to_string()),
    }
}

/// Runs this plugin's kernels on the host's pool, or sizes its own from
/// the host's CPU budget (`[server] cpu_threads`), before the first kernel.
fn use_host_cpu_budget() {
    use tailor_tensor::cpu::pool::{set_global_threads, use_host_pool};
    match (tailor_plugin_abi::services::host_kernel_pool(), tailor_plugin_abi::services::host()) {
        (Some((threads, runner)), _) => drop(use_host_pool(threads, runner)),
        (None, Some(host)) => drop(set_global_threads(host.cpu_threads() as usize, 0)),
        (None, None) => {}
    }
}

/// The engine on the device the daemon serves on (ABI 1.4), its memory
/// drawn from the daemon's device budget; on the CPU when the daemon
/// serves there, or, with a log line saying why, when this build has no
/// CUDA or the device cannot take the model.
fn start_engine(model: Arc<Model>, options: EngineOptions) -> Engine {
    let host = tailor_plugin_abi::services::host();
    if let Some((host, ordinal)) = host.and_then(|h| Some((h, h.device()?))) {
        match start_on_device(model.clone(), options, host, ordinal) {
            Ok(engine) => {
                host.log(2, &format!("generate: serving on cuda:{ordinal}"));
                return engine;
            }
            Err(why) => {
                host.log(1, &format!("generate: cuda:{ordinal} cannot serve this model ({why}); serving on the CPU"))
            }
        }
    }
    Engine::start(model, options)
}

/// The engine on CUDA device `ordinal`, every block of its memory pool
/// reserved in the daemon's device budget first.
#[cfg(feature = "cuda")]
fn start_on_device(
    model: Arc<Model>,
    options: EngineOptions,
    host: tailor_plugin_abi::services::Host,
    ordinal: usize,
) -> Result<Engine, String> {
    use tailor_tensor::cuda::{backend::CudaBackend, pool::SharedBudget};
    /// The daemon's device budget, through the host service.
    struct DaemonBudget(tailor_plugin_abi::services::Host);
    impl SharedBudget for DaemonBudget {
        fn reserve(&self, bytes: usize) -> bool {
            self.0.device_reserve(bytes as u64)
        }
        fn release(&self, bytes: usize) {
            self.0.device_release(bytes as u64);
        }
    }
    // The daemon's budget is the bound; the pool's own is only there so
    // its sums cannot overflow.
    let own_budget = usize::MAX >> 2;
    let backend = CudaBackend::with_shared_budget(ordinal, own_budget, Arc::new(DaemonBudget(host)))
        .map_err(|e| e.to_string())?;
    let device = tailor_model::device::DeviceOptions::default();
    Engine::start_on_device(model, backend, options, device).map_err(|e| e.to_string())
}

/// Without CUDA in this build, the device is never taken.
#[cfg(not(feature = "cuda"))]
fn start_on_device(
    _model: Arc<Model>,
    _options: EngineOptions,
    _host: tailor_plugin_abi::services::Host,
    _ordinal: usize,
) -> Result<Engine, String> {
    Err("this plugin was built without CUDA (cargo build --features cuda)".into())
}

/// Stop strings one request may give, and the longest one in bytes.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;
/// Most alternatives per token a request may ask log-probabilities of.
const MAX_LOGPROBS: usize = 20;

/// A fresh random seed, for requests that give none (so sampled answers differ).
fn fresh_seed() -> u64 {
    use std::hash::BuildHasher;
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let count = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    // RandomState is keyed from the OS's random source once per process.
    std::collections::hash_map::RandomState::new().hash_one((count, now))
}

/// How often a waiting request looks whether its caller left.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Generation with one loaded model.
struct Generate {
    model: Arc<Model>,
    engine: Engine,
    adapters: Arc<AdapterRegistry>,
    /// Fine-tuning jobs, when `jobs_dir` is configured.
    jobs: Option<Arc<jobs::Jobs>>,
    /// Most generations per request.
    max_n: usize,
}

impl Generate {
    fn registry(config: &Config, model: Arc<Model>) -> Result<AdapterRegistry, String> {
        let defaults = RegistryOptions::default();
        let limits = AdapterLimits { max_rank: config.max_rank.unwrap_or(256), ..AdapterLimits::default() };
        // Adapters that jobs train are registered from the jobs folder.
        let mut dirs = config.adapter_dirs.clone();
        if let Some(jobs_dir) = &config.jobs_dir {
            std::fs::create_dir_all(jobs_dir).map_err(|e| format!("jobs_dir {}: {e}", jobs_dir.display()))?;
            dirs.push(jobs_dir.clone());
        }
        let options = RegistryOptions {
            dirs,
            max_loaded: config.max_adapters.unwrap_or(defaults.max_loaded),
            max_bytes: config.max_adapter_mb.map_or(defaults.max_bytes, |mb| mb << 20),
            limits,
        };
        let registry = AdapterRegistry::new(model, options);
        for (name, path) in &config.adapters {
            registry.register(name, path, true).map_err(|e| format!("generate config: adapter {name:?}: {e}"))?;
        }
        Ok(registry)
    }

    /// Answers an adapter admin request with one JSON object.
    fn adapter_op(&self, op: AdapterOp, emit: &mut dyn FnMut(&str) -> bool) -> Result<(), StageError> {
        let reply = match op {
            AdapterOp::List => {
                let list: Vec<serde_json::Value> = self.adapters.list().iter().map(adapter_json).collect();
                serde_json::json!({"adapters": list})
            }
            AdapterOp::Load { name, path, pinned } => {
                adapter_json(&self.adapters.register(&name, &path, pinned).map_err(adapter_error)?)
            }
            AdapterOp::Unload { name } => {
                self.adapters.unregister(&name).map_err(adapter_error)?;
                serde_json::json!({"name": name, "unloaded": true})
            }
        };
        emit(&reply.to_string());
        Ok(())
    }

    /// The adapter a generation request names, at its scale.
    fn active_adapter(&self, request: &Request) -> Result<Option<ActiveAdapter>, StageError> {
        let Some(name) = &request.adapter else {
            return match request.adapter_scale {
                Some(_) => Err(StageError::invalid("adapter_scale without an adapter")),
                None => Ok(None),
            };
        };
        let adapter = self.adapters.get(name).map_err(adapter_error)?;
        let scale = request.adapter_scale.unwrap_or(1.0);
        ActiveAdapter::new(adapter, scale).map(Some).map_err(|e| StageError::invalid(e.to_string()))
    }
}

fn adapter_json(info: &tailor_engine::AdapterInfo) -> serde_json::Value {
    serde_json::json!({"name": info.name, "path": info.path, "pinned": info.pinned, "loaded": info.loaded,
        "rank": info.rank, "targets": info.targets, "parameters": info.parameters, "bytes": info.bytes})
}

impl Stage for Generate {
    const KIND: StageKind = StageKind::Generate;
    const NAME: &'static std::ffi::CStr = c"generate";

    fn create(config_json: &str) -> Result<Self, String> {
        let config: Config = serde_json::from_str(config_json).map_err(|e| format!("generate config: {e}"))?;
        use_host_cpu_budget();
        let dtype = config.dtype.as_deref().map(str::parse).transpose().map_err(|e| format!("generate config: {e}"))?;
        let model =
            Model::load(&config.model, LoadOptions { dtype, ..LoadOptions::default() }).map_err(|e| e.to_string())?;
        let model = Arc::new(model);
        let defaults = EngineOptions::default();
        let options = EngineOptions {
            max_batch: config.max_batch.unwrap_or(defaults.max_batch),
            prefix_cache_bytes: config.prefix_cache_mb.map_or(defaults.prefix_cache_bytes, |mb| mb << 20),
            prefill_chunk: config.prefill_chunk.unwrap_or(defaults.prefill_chunk),
        };
        let adapters = Arc::new(Generate::registry(&config, model.clone())?);
        let engine = start_engine(model.clone(), options);
        let jobs = match &config.jobs_dir {
            Some(dir) => Some(jobs::Jobs::start(
                dir.clone(),
                &config.data_dirs,
                model.clone(),
                adapters.clone(),
                engine.stats_handle(),
            )?),
            None => None,
        };
        Ok(Generate { engine, model, adapters, jobs, max_n: config.max_n.unwrap_or(8).max(1) })
    }

    fn call(
        &self,
        request_id: u64,
        request_json: &str,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), tailor_plugin_abi::StageError> {
        let request: Request = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        if let Some(op) = request.adapters {
            return self.adapter_op(op, emit);
        }
        if let Some(op) = request.jobs {
            let jobs = self.jobs.as_ref().ok_or_else(|| {
                StageError::invalid("fine-tuning is off for this model: its stage config sets no jobs_dir")
            })?;
            emit(&jobs.handle(op)?.to_string());
            return Ok(());
        }
        if let Some(reply) = self.model_request(&request)? {
            emit(&reply.to_string());
            return Ok(());
        }
        if request.stats {
            let stats = self.engine.stats();
            let registry = self.adapters.stats();
            let loaded = self.adapters.list().iter().filter(|a| a.loaded).count();
            let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            let count = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::Relaxed);
            emit(
                &serde_json::json!({"waiting": count(&stats.waiting), "running": count(&stats.running),
                "steps": get(&stats.steps), "decoded_tokens": get(&stats.decoded_tokens),
                "prefix_hits": get(&stats.prefix_hits), "prefix_tokens": get(&stats.prefix_tokens),
                "adapters_loaded": loaded, "adapter_bytes": self.adapters.loaded_bytes(),
                "adapter_hits": get(&registry.hits), "adapter_misses": get(&registry.misses),
                "adapter_evictions": get(&registry.evictions)})
                .to_string(),
            );
            return Ok(());
        }
        let prompt = match (&request.messages, &request.prompt) {
            (Some(messages), _) => self.model.encode_chat(messages),
            (None, Some(prompt)) => self.model.encode(prompt),
            (None, None) => return Err("the request needs `messages` or `prompt`".into()),
        }
        .map_err(|e| e.to_string())?;
        let generations = self.generation_params(&request)?;
        let host = tailor_plugin_abi::services::host();
        // The host marks a request cancelled when its caller left (a closed
        // connection, a dropped non-streaming handler, shutdown): looked at
        // every token and, while waiting, every CANCEL_POLL.
        let cancelled = || host.is_some_and(|h| h.is_cancelled(request_id));
        let mut running = generations.len();
        let submission = self.engine.submit_many(prompt, generations);
        while running > 0 {
            let (index, event) = match submission.recv_indexed_timeout(CANCEL_POLL) {
                Ok(event) => event,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if cancelled() => return Ok(()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                    return Err(StageError::internal("the generation engine stopped mid-request"))
                }
            };
            let lines = match event {
                Event::Token(token) => vec![token_line(index, &token)],
                Event::Done(generation) => {
                    running -= 1;
                    done_lines(index, &generation)
                }
                Event::Failed(message) => return Err(message.into()),
            };
            for line in lines {
                if !emit(&format!("{line}\n")) || cancelled() {
                    return Ok(()); // the caller went away; dropping the submission cancels
                }
            }
        }
        Ok(())
    }
}

impl Generate {
    /// Answers the requests about the model itself (`describe`,
    /// `tokenize`, `detokenize`); `None` for any other request.
    fn model_request(&self, request: &Request) -> Result<Option<serde_json::Value>, StageError> {
        let context_length = self.model.llama.context_length();
        if request.describe {
            let config = self.model.llama.config();
            return Ok(Some(serde_json::json!({"context_length": context_length,
                "vocab_size": config.vocab_size, "hidden_size": config.hidden_size,
                "layers": config.num_hidden_layers, "architecture": config.model_type,
                "chat_template": self.model.template.is_some()})));
        }
        if let Some(tokenize) = &request.tokenize {
            let tokens = match (&tokenize.messages, &tokenize.prompt) {
                (Some(messages), None) => self.model.encode_chat(messages),
                (None, Some(prompt)) => self.model.encode(prompt),
                _ => return Err(StageError::invalid("tokenize takes `prompt` or `messages`, one of them")),
            }
            .map_err(|e| StageError::invalid(e.to_string()))?;
            return Ok(Some(
                serde_json::json!({"tokens": tokens, "count": tokens.len(), "max_model_len": context_length}),
            ));
        }
        if let Some(detokenize) = &request.detokenize {
            let vocab = self.model.tokenizer.vocab_size();
            if let Some(bad) = detokenize.tokens.iter().find(|&&id| id as usize >= vocab) {
                return Err(StageError::invalid(format!("token id {bad} is past the vocabulary ({vocab})")));
            }
            let text = self.model.tokenizer.decode(&detokenize.tokens, false).map_err(|e| e.to_string())?;
            return Ok(Some(serde_json::json!({"prompt": text})));
        }
        Ok(None)
    }

    /// The settings of each of the request's `n` generations, checked
    /// against this stage's limits.
    fn generation_params(&self, request: &Request) -> Result<Vec<GenerateParams>, StageError> {
        let n = request.n.unwrap_or(1);
        if n == 0 || n > self.max_n {
            return Err(StageError::invalid(format!("n must be between 1 and {} here, got {n}", self.max_n)));
        }
        if request.stop.len() > MAX_STOPS || request.stop.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
            return Err(StageError::invalid(format!(
                "stop takes at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_BYTES} bytes"
            )));
        }
        let logprobs = request.logprobs.unwrap_or(0);
        if logprobs > MAX_LOGPROBS {
            return Err(StageError::invalid(format!("top_logprobs must be at most {MAX_LOGPROBS}, got {logprobs}")));
        }
        let defaults = SamplingParams::default();
        let seed = request.seed.unwrap_or_else(fresh_seed);
        let base = GenerateParams {
            max_tokens: request.max_tokens.unwrap_or(256),
            sampling: SamplingParams {
                temperature: request.temperature.unwrap_or(defaults.temperature),
                top_k: request.top_k.unwrap_or(defaults.top_k),
                top_p: request.top_p.unwrap_or(defaults.top_p),
                repetition_penalty: request.repetition_penalty.unwrap_or(defaults.repetition_penalty),
                presence_penalty: request.presence_penalty.unwrap_or(defaults.presence_penalty),
                frequency_penalty: request.frequency_penalty.unwrap_or(defaults.frequency_penalty),
                seed,
            },
            stop_strings: request.stop.clone(),
            grammar: grammar_of(request.response_format.as_ref())?,
            // The chosen token's log-probability comes with the alternatives.
            logprobs: request.logprobs.map_or(0, |k| k.max(1)),
            adapter: self.active_adapter(request)?,
            ..GenerateParams::default()
        };
        Ok((0..n as u64)
            .map(|i| {
                let mut params = base.clone();
                params.sampling.seed = seed.wrapping_add(i);
                params
            })
            .collect())
    }
}

/// The grammar a `response_format` asks for (none for text).
fn grammar_of(format: Option<&serde_json::Value>) -> Result<Option<Arc<JsonGrammar>>, StageError> {
    let Some(format) = format else { return Ok(None) };
    let grammar = match format["type"].as_str() {
        None | Some("text") => return Ok(None),
        Some("json_object") => JsonGrammar::any_object(),
        Some("json_schema") => {
            JsonGrammar::from_schema(&format["schema"]).map_err(|e| StageError::invalid(e.to_string()))?
        }
        Some(other) => return Err(StageError::invalid(format!("response_format type {other:?} is not supported"))),
    };
    Ok(Some(Arc::new(grammar)))
}

/// A token of generation `index` as an output line.
fn token_line(index: usize, token: &tailor_model::TokenEvent) -> serde_json::Value {
    let mut line = serde_json::json!({"type": "token", "index": index, "text": token.text, "id": token.id});
    if let Some(logprob) = token.logprob {
        line["logprob"] = serde_json::json!(logprob);
        line["token"] = serde_json::json!(token.token);
        let top: Vec<serde_json::Value> = token
            .top_logprobs
            .iter()
            .map(|(id, text, logprob)| serde_json::json!({"token": text, "id": id, "logprob": logprob}))
            .collect();
        line["top_logprobs"] = serde_json::Value::Array(top);
    }
    line
}

/// The end of generation `index`: its held-back text, if any, then the
/// done line (nothing for a cancelled one).
fn done_lines(index: usize, generation: &tailor_model::Generation) -> Vec<serde_json::Value> {
    let finish = match generation.finish {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
        FinishReason::Cancelled => return Vec::new(),
    };
    let mut lines = Vec::new();
    if !generation.unstreamed.is_empty() {
        lines.push(serde_json::json!({"type": "token", "index": index, "text": generation.unstreamed}));
    }
    lines.push(serde_json::json!({"type": "done", "index": index, "finish_reason": finish,
        "prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.tokens.len()}));
    lines
}

export_plugin!(name: "serve-llm", version: "0.1.0", stages: [Generate]);
