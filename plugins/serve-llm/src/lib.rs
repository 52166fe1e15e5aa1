//! The `generate` stage: loads a model (GGUF or Hugging Face folder) once
//! per instance and streams completions. Concurrent requests share one
//! continuous-batching engine (tailor-engine): each joins the running batch
//! between decode steps, and a caller that goes away leaves it.
//!
//! Config: `{"model": PATH, "dtype": "q8_0"?, "max_batch": N?,
//! "prefix_cache_mb": N?, "prefill_chunk": N?}` (batch size limit, default
//! 16; memory for reused prompt prefixes, default 128, 0 turns reuse off;
//! prompt tokens prefilled between two decode steps, default 128). Request: `{"messages":
//! [{"role", "content"}…]}` (chat template applied) or `{"prompt": TEXT}`,
//! plus `max_tokens`, `temperature`, `top_p`, `top_k`, `seed`,
//! `repetition_penalty`. Output: one JSON object per line:
//! `{"type":"token","text":…}` per token, then `{"type":"done",
//! "finish_reason":"stop"|"length", "prompt_tokens", "completion_tokens"}`.
//! `{"stats": true}` answers the engine's counters: `{"waiting", "running",
//! "steps", "decoded_tokens", "prefix_hits", "prefix_tokens"}` (queue depth,
//! batch size, decode steps and the tokens they produced, prompts that
//! reused a cached prefix and the tokens reused).

use serde::Deserialize;
use std::path::PathBuf;
use std::sync::Arc;
use tailor_engine::{Engine, EngineOptions, Event};
use tailor_model::{FinishReason, GenerateParams, LoadOptions, Message, Model, SamplingParams};
use tailor_plugin_abi::{export_plugin, Stage, StageKind};

#[derive(Deserialize)]
struct Config {
    model: PathBuf,
    dtype: Option<String>,
    max_batch: Option<usize>,
    prefix_cache_mb: Option<usize>,
    prefill_chunk: Option<usize>,
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
}

/// Sizes this plugin's kernel threads from the host's CPU budget
/// (`[server] cpu_threads`), before the first kernel runs.
fn use_host_cpu_budget() {
    if let Some(host) = tailor_plugin_abi::services::host() {
        tailor_tensor::cpu::pool::set_global_threads(host.cpu_threads() as usize, 0);
    }
}

/// How often a waiting request looks whether its caller left.
const CANCEL_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// Generation with one loaded model.
struct Generate {
    model: Arc<Model>,
    engine: Engine,
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
        Ok(Generate { engine: Engine::start(model.clone(), options), model })
    }

    fn call(&self, request_id: u64, request_json: &str, emit: &mut dyn FnMut(&str) -> bool) -> Result<(), String> {
        let request: Request = serde_json::from_str(request_json).map_err(|e| format!("bad request: {e}"))?;
        if request.stats {
            let stats = self.engine.stats();
            let get = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
            let count = |c: &std::sync::atomic::AtomicUsize| c.load(std::sync::atomic::Ordering::Relaxed);
            emit(
                &serde_json::json!({"waiting": count(&stats.waiting), "running": count(&stats.running),
                "steps": get(&stats.steps), "decoded_tokens": get(&stats.decoded_tokens),
                "prefix_hits": get(&stats.prefix_hits), "prefix_tokens": get(&stats.prefix_tokens)})
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
        let defaults = SamplingParams::default();
        let params = GenerateParams {
            max_tokens: request.max_tokens.unwrap_or(256),
            sampling: SamplingParams {
                temperature: request.temperature.unwrap_or(defaults.temperature),
                top_k: request.top_k.unwrap_or(defaults.top_k),
                top_p: request.top_p.unwrap_or(defaults.top_p),
                repetition_penalty: request.repetition_penalty.unwrap_or(defaults.repetition_penalty),
                seed: request.seed.unwrap_or(defaults.seed),
            },
            ..GenerateParams::default()
        };
        let submission = self.engine.submit(prompt, params);
        let host = tailor_plugin_abi::services::host();
        // The host marks a request cancelled when its caller left (a closed
        // connection, a dropped non-streaming handler, shutdown): looked at
        // every token and, while waiting, every CANCEL_POLL.
        let cancelled = || host.is_some_and(|h| h.is_cancelled(request_id));
        loop {
            let event = match submission.recv_timeout(CANCEL_POLL) {
                Ok(event) => event,
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) if cancelled() => return Ok(()),
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => continue,
                Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let token_line = match event {
                Event::Token(token) => serde_json::json!({"type": "token", "text": token.text, "id": token.id}),
                Event::Done(generation) => {
                    let finish = match generation.finish {
                        FinishReason::Stop => "stop",
                        FinishReason::Length => "length",
                        FinishReason::Cancelled => return Ok(()),
                    };
                    let done = serde_json::json!({"type": "done", "finish_reason": finish,
                        "prompt_tokens": generation.prompt_tokens, "completion_tokens": generation.tokens.len()});
                    emit(&format!("{done}\n"));
                    return Ok(());
                }
                Event::Failed(message) => return Err(message),
            };
            if !emit(&format!("{token_line}\n")) || cancelled() {
                return Ok(()); // the caller went away; dropping the submission cancels
            }
        }
        Err("the generation engine stopped mid-request".into())
    }
}

export_plugin!(name: "serve-llm", version: "0.1.0", stages: [Generate]);
