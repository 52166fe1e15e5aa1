//! The client in plain Rust: the daemon's HTTP API as typed calls. The C
//! layer in `lib.rs` only converts arguments and results around these.

use crate::error::{FfiError, Result};
use crate::http::{self, Endpoint, Limits, Response};
use serde_json::{json, Value};
use std::io::{BufRead, BufReader};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Settings for talking to one daemon.
#[derive(Debug, Clone)]
pub struct Client {
    endpoint: Endpoint,
    token: Option<String>,
    /// Bound on each whole call.
    timeout: Option<Duration>,
    /// Raised by another thread to stop this client's calls.
    cancel: Option<Arc<AtomicBool>>,
}

/// A finished generation: one choice per generation of the prompt (`n`).
#[derive(Debug, Clone)]
pub struct Answer {
    /// At least one.
    pub choices: Vec<Choice>,
    /// Prompt tokens, as the daemon counted them.
    pub prompt_tokens: u32,
    /// Generated tokens, all choices together.
    pub completion_tokens: u32,
    /// RAG sources (empty without RAG).
    pub sources: Vec<Source>,
}

impl Default for Answer {
    fn default() -> Answer {
        Answer { choices: vec![Choice::default()], prompt_tokens: 0, completion_tokens: 0, sources: Vec::new() }
    }
}

/// One generation of the prompt.
#[derive(Debug, Default, Clone)]
pub struct Choice {
    /// The generated text.
    pub text: String,
    /// "stop" or "length" ("cancelled" or "timeout" on a partial answer).
    pub finish_reason: String,
    /// Per generated token, when asked for.
    pub logprobs: Vec<TokenLogprob>,
}

/// A generated token's log-probability and its most likely alternatives.
#[derive(Debug, Default, Clone)]
pub struct TokenLogprob {
    /// The token's text.
    pub token: String,
    /// Its natural log-probability.
    pub logprob: f64,
    /// The alternatives, most likely first.
    pub top: Vec<Alternative>,
}

/// A token that could have come instead.
#[derive(Debug, Default, Clone)]
pub struct Alternative {
    /// Its text.
    pub token: String,
    /// Its natural log-probability.
    pub logprob: f64,
}

/// A generation that ended before its end: why, and what had arrived
/// (the streamed text so far; empty when nothing had).
#[derive(Debug)]
pub struct Unfinished {
    /// Why it ended.
    pub error: FfiError,
    /// What had arrived, when the stream had started.
    pub partial: Option<Answer>,
}

impl From<FfiError> for Unfinished {
    fn from(error: FfiError) -> Unfinished {
        Unfinished { error, partial: None }
    }
}

/// A retrieved passage.
#[derive(Debug, Default, Clone)]
pub struct Source {
    /// 1-based citation number.
    pub number: u32,
    /// Cosine similarity.
    pub score: f32,
    /// Document id.
    pub doc_id: String,
    /// Where the document came from.
    pub source: String,
    /// The passage.
    pub text: String,
    /// Byte span in the document.
    pub span: (usize, usize),
}

/// Which generation route.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Route {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

impl Client {
    /// A client for `endpoint`, checked with `GET /health`.
    pub fn open(endpoint: Endpoint, token: Option<String>, timeout: Option<Duration>) -> Result<Client> {
        let client = Client { endpoint, token, timeout, cancel: None };
        client.call("GET", "/health", None)?;
        // /health answers anyone; a route behind the token tells a wrong one.
        if client.token.is_some() {
            client.call("GET", "/v1/models", None)?;
        }
        Ok(client)
    }

    /// This client with another bound on each call (`None`: this one's)
    /// and a flag that stops its calls when raised. Nothing is sent.
    pub fn with_limits(&self, timeout: Option<Duration>, cancel: Option<Arc<AtomicBool>>) -> Client {
        Client { timeout: timeout.or(self.timeout), cancel: cancel.or_else(|| self.cancel.clone()), ..self.clone() }
    }

    /// The limits of a call starting now.
    fn limits(&self) -> Limits {
        Limits { deadline: self.timeout.map(|t| Instant::now() + t), cancel: self.cancel.clone() }
    }

    /// Sends a request; a non-2xx reply becomes [`FfiError::Daemon`] with the daemon's message.
    fn call(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Response> {
        let bytes = body.map(|b| b.to_string().into_bytes());
        let limits = self.limits();
        let response = http::request(&self.endpoint, &limits, self.token.as_deref(), method, path, bytes.as_deref())?;
        if (200..300).contains(&response.status) {
            return Ok(response);
        }
        let status = response.status;
        let text = response.text().unwrap_or_default();
        let message = serde_json::from_str::<Value>(&text)
            .ok()
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_else(
                || if text.trim().is_empty() { "(no message)".to_string() } else { text.trim().to_string() },
            );
        Err(FfiError::Daemon { status, message })
    }

    fn call_json(&self, method: &str, path: &str, body: Option<&Value>) -> Result<Value> {
        let text = self.call(method, path, body)?.text()?;
        serde_json::from_str(&text).map_err(|e| FfiError::Protocol(format!("{path} answered non-JSON: {e}")))
    }

    /// Every configured stage, and every adapter.
    pub fn models(&self) -> Result<Vec<ModelEntry>> {
        let reply = self.call_json("GET", "/v1/models", None)?;
        let data = reply["data"].as_array().ok_or_else(|| FfiError::Protocol("/v1/models has no `data`".into()))?;
        let number = |value: &Value| value.as_u64().map_or(0, |n| n as u32);
        Ok(data
            .iter()
            .map(|m| ModelEntry {
                id: m["id"].as_str().unwrap_or_default().to_string(),
                kind: m["tailor_stage"].as_str().unwrap_or("unknown").to_string(),
                context_length: number(&m["max_model_len"]),
                embedding_dim: number(&m["tailor_dim"]),
            })
            .collect())
    }

    /// Runs a generation request (an OpenAI request body without `stream`);
    /// with `on_token`, streams and hands it each piece of text (returning
    /// `false` cancels; streaming takes one choice, `n` = 1).
    pub fn generate(
        &self,
        route: Route,
        mut request: Value,
        on_token: Option<&mut dyn FnMut(&str) -> bool>,
    ) -> std::result::Result<Answer, Unfinished> {
        let path = match route {
            Route::Chat => "/v1/chat/completions",
            Route::Completion => "/v1/completions",
        };
        let Some(on_token) = on_token else {
            let reply = self.call_json("POST", path, Some(&request))?;
            return Ok(answer_from_reply(route, &reply)?);
        };
        if request.get("n").and_then(Value::as_u64).is_some_and(|n| n > 1) {
            return Err(FfiError::InvalidArgument("n > 1 does not stream: leave on_token NULL".into()).into());
        }
        request["stream"] = json!(true);
        request["stream_options"] = json!({"include_usage": true});
        let response = self.call("POST", path, Some(&request))?;
        read_stream(route, response, on_token)
    }

    /// The token ids a generation of `prompt` on `model` starts from
    /// (`POST /tokenize`), and the model's context length.
    pub fn tokenize(&self, model: &str, prompt: &str) -> Result<Tokens> {
        let reply = self.call_json("POST", "/tokenize", Some(&json!({"model": model, "prompt": prompt})))?;
        let ids: Option<Vec<u32>> = reply["tokens"]
            .as_array()
            .and_then(|ids| ids.iter().map(|id| id.as_u64().and_then(|id| u32::try_from(id).ok())).collect());
        let ids = ids.ok_or_else(|| FfiError::Protocol("/tokenize answered no `tokens` array".into()))?;
        Ok(Tokens { ids, context_length: reply["max_model_len"].as_u64().unwrap_or(0) as u32 })
    }

    /// One vector per text.
    pub fn embed(&self, model: &str, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let reply = self.call_json("POST", "/v1/embeddings", Some(&json!({"model": model, "input": texts})))?;
        let data = reply["data"].as_array().ok_or_else(|| FfiError::Protocol("embeddings without `data`".into()))?;
        let vectors: Option<Vec<Vec<f32>>> = data
            .iter()
            .map(|item| item["embedding"].as_array()?.iter().map(|x| x.as_f64().map(|x| x as f32)).collect())
            .collect();
        let vectors = vectors.ok_or_else(|| FfiError::Protocol("an embedding is not an array of numbers".into()))?;
        if vectors.len() != texts.len() {
            return Err(FfiError::Protocol(format!("{} embeddings for {} texts", vectors.len(), texts.len())));
        }
        Ok(vectors)
    }

    /// The `k` passages nearest to `query` in `index`.
    pub fn search(&self, index: &str, query: &str, k: u32) -> Result<Vec<Source>> {
        let path = format!("/v1/indexes/{}/search", path_segment(index)?);
        let reply = self.call_json("POST", &path, Some(&json!({"query": query, "k": k})))?;
        let hits = reply["hits"].as_array().ok_or_else(|| FfiError::Protocol("search without `hits`".into()))?;
        Ok(hits.iter().enumerate().map(|(i, hit)| source_from_json(hit, i as u32 + 1)).collect())
    }

    /// Creates an index.
    pub fn index_create(&self, index: &str, kind: &str) -> Result<()> {
        self.call_json("POST", "/v1/indexes", Some(&json!({"name": index, "kind": kind}))).map(drop)
    }

    /// Adds (id, text) documents; returns how many were new or changed.
    pub fn index_add(&self, index: &str, documents: &[(&str, &str)]) -> Result<usize> {
        let documents: Vec<Value> = documents.iter().map(|(id, text)| json!({"id": id, "text": text})).collect();
        let path = format!("/v1/indexes/{}/documents", path_segment(index)?);
        let reply = self.call_json("POST", &path, Some(&json!({"documents": documents})))?;
        Ok(reply["report"]["added"].as_u64().unwrap_or(0) as usize)
    }

    /// Deletes documents by id or source; returns how many went.
    pub fn index_delete(&self, index: &str, ids: &[&str]) -> Result<usize> {
        let path = format!("/v1/indexes/{}/documents", path_segment(index)?);
        let reply = self.call_json("DELETE", &path, Some(&json!({"ids": ids})))?;
        Ok(reply["deleted"].as_u64().unwrap_or(0) as usize)
    }

    /// What the index holds.
    pub fn index_info(&self, index: &str) -> Result<IndexCounts> {
        let reply = self.call_json("GET", &format!("/v1/indexes/{}", path_segment(index)?), None)?;
        let count = |key: &str| reply[key].as_u64().map(|n| n as usize);
        match (count("documents"), count("chunks")) {
            (Some(documents), Some(chunks)) => Ok(IndexCounts { documents, chunks }),
            _ => Err(FfiError::Protocol("index info without `documents` and `chunks`".into())),
        }
    }

    /// Every index of the daemon's index stage.
    pub fn indexes(&self) -> Result<Vec<IndexEntry>> {
        let reply = self.call_json("GET", "/v1/indexes", None)?;
        let data = reply["data"].as_array().ok_or_else(|| FfiError::Protocol("/v1/indexes has no `data`".into()))?;
        Ok(data
            .iter()
            .map(|i| IndexEntry {
                name: i["name"].as_str().unwrap_or_default().to_string(),
                kind: i["kind"].as_str().unwrap_or_default().to_string(),
                dim: i["dim"].as_u64().unwrap_or(0) as u32,
            })
            .collect())
    }

    /// Deletes an index with its documents.
    pub fn index_drop(&self, index: &str) -> Result<()> {
        self.call_json("DELETE", &format!("/v1/indexes/{}", path_segment(index)?), None).map(drop)
    }
}

/// A stage or adapter as `/v1/models` lists it.
#[derive(Debug, Clone, Default)]
pub struct ModelEntry {
    /// The name requests use.
    pub id: String,
    /// What the stage does ("generate", "embed", …, "adapter").
    pub kind: String,
    /// Tokens of context (generate) or per text (embed); 0 when not told.
    pub context_length: u32,
    /// Floats per embedding (embed stages); 0 otherwise.
    pub embedding_dim: u32,
}

/// Token ids of a prompt.
#[derive(Debug, Clone, Default)]
pub struct Tokens {
    /// The ids a generation starts from.
    pub ids: Vec<u32>,
    /// The model's context length.
    pub context_length: u32,
}

/// What an index holds.
#[derive(Debug, Clone, Copy, Default)]
pub struct IndexCounts {
    /// Documents.
    pub documents: usize,
    /// Chunks (passages) of them.
    pub chunks: usize,
}

/// An index as `/v1/indexes` lists it.
#[derive(Debug, Clone, Default)]
pub struct IndexEntry {
    /// Its name.
    pub name: String,
    /// "flat" or "hnsw".
    pub kind: String,
    /// Floats per vector.
    pub dim: u32,
}

impl Client {
    /// Loads the adapter folder `path` (on the daemon's side) as `name` on
    /// generate stage `model` (`None`: the first).
    pub fn adapter_load(&self, model: Option<&str>, name: &str, path: &str) -> Result<()> {
        let mut body = json!({"name": name, "path": path});
        if let Some(model) = model {
            body["model"] = json!(model);
        }
        self.call_json("POST", "/v1/adapters", Some(&body)).map(drop)
    }

    /// Unloads adapter `name` (requests using it finish first).
    pub fn adapter_unload(&self, model: Option<&str>, name: &str) -> Result<()> {
        let body = model.map_or_else(|| json!({}), |m| json!({"model": m}));
        self.call_json("DELETE", &format!("/v1/adapters/{}", path_segment(name)?), Some(&body)).map(drop)
    }

    /// Every adapter of every generate stage.
    pub fn adapters(&self) -> Result<Vec<AdapterEntry>> {
        let reply = self.call_json("GET", "/v1/adapters", None)?;
        let data = reply["data"].as_array().ok_or_else(|| FfiError::Protocol("/v1/adapters has no `data`".into()))?;
        Ok(data
            .iter()
            .map(|a| AdapterEntry {
                name: a["name"].as_str().unwrap_or_default().to_string(),
                model: a["model"].as_str().unwrap_or_default().to_string(),
                rank: a["rank"].as_u64().unwrap_or(0) as u32,
                loaded: a["loaded"].as_bool().unwrap_or(false),
            })
            .collect())
    }
}

/// One adapter as `/v1/adapters` lists it.
#[derive(Debug, Clone, Default)]
pub struct AdapterEntry {
    /// Its name.
    pub name: String,
    /// The generate stage it belongs to.
    pub model: String,
    /// Its largest rank.
    pub rank: u32,
    /// In memory now (else loaded again from disk when used).
    pub loaded: bool,
}

/// Index and adapter names go into paths as they are: refuse anything that would change the path.
fn path_segment(name: &str) -> Result<&str> {
    let ok = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c));
    if ok {
        Ok(name)
    } else {
        Err(FfiError::InvalidArgument(format!("name {name:?}: use letters, digits, '-', '_' and '.'")))
    }
}

fn source_from_json(value: &Value, fallback_number: u32) -> Source {
    let text = |key: &str| value[key].as_str().unwrap_or_default().to_string();
    let span = |i: usize| value["span"][i].as_u64().unwrap_or(0) as usize;
    Source {
        number: value["number"].as_u64().map(|n| n as u32).unwrap_or(fallback_number),
        score: value["score"].as_f64().unwrap_or(0.0) as f32,
        doc_id: text("doc_id"),
        source: text("source"),
        text: text("text"),
        span: (span(0), span(1)),
    }
}

fn sources_from(value: &Value) -> Vec<Source> {
    let list = value["tailor"]["sources"].as_array().cloned().unwrap_or_default();
    list.iter().enumerate().map(|(i, s)| source_from_json(s, i as u32 + 1)).collect()
}

fn usage_into(answer: &mut Answer, value: &Value) {
    if let Some(usage) = value.get("usage").filter(|u| u.is_object()) {
        answer.prompt_tokens = usage["prompt_tokens"].as_u64().unwrap_or(0) as u32;
        answer.completion_tokens = usage["completion_tokens"].as_u64().unwrap_or(0) as u32;
    }
}

fn answer_from_reply(route: Route, reply: &Value) -> Result<Answer> {
    let choices = reply["choices"].as_array().filter(|c| !c.is_empty());
    let choices = choices.ok_or_else(|| FfiError::Protocol("the reply has no choices".into()))?;
    let mut answer =
        Answer { choices: Vec::with_capacity(choices.len()), sources: sources_from(reply), ..Answer::default() };
    for choice in choices {
        let text = match route {
            Route::Chat => choice["message"]["content"].as_str(),
            Route::Completion => choice["text"].as_str(),
        };
        let text = text.ok_or_else(|| FfiError::Protocol("a choice has no generated text".into()))?;
        answer.choices.push(Choice {
            text: text.to_string(),
            finish_reason: choice["finish_reason"].as_str().unwrap_or("stop").to_string(),
            logprobs: logprobs_from(route, &choice["logprobs"]),
        });
    }
    usage_into(&mut answer, reply);
    Ok(answer)
}

/// The per-token log-probabilities of a choice or a streamed chunk, in
/// either route's shape (chat: `content` entries; completions: parallel
/// `tokens`, `token_logprobs` and `top_logprobs` maps).
fn logprobs_from(route: Route, logprobs: &Value) -> Vec<TokenLogprob> {
    let number = |v: &Value| v.as_f64().unwrap_or(f64::NEG_INFINITY);
    match route {
        Route::Chat => {
            let entries = logprobs["content"].as_array().map(Vec::as_slice).unwrap_or_default();
            entries
                .iter()
                .map(|e| TokenLogprob {
                    token: e["token"].as_str().unwrap_or_default().to_string(),
                    logprob: number(&e["logprob"]),
                    top: e["top_logprobs"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default()
                        .iter()
                        .map(|t| Alternative {
                            token: t["token"].as_str().unwrap_or_default().to_string(),
                            logprob: number(&t["logprob"]),
                        })
                        .collect(),
                })
                .collect()
        }
        Route::Completion => {
            let tokens = logprobs["tokens"].as_array().map(Vec::as_slice).unwrap_or_default();
            tokens
                .iter()
                .enumerate()
                .map(|(i, token)| {
                    let top = logprobs["top_logprobs"][i].as_object();
                    let mut top: Vec<Alternative> = top
                        .map(|m| {
                            m.iter().map(|(t, lp)| Alternative { token: t.clone(), logprob: number(lp) }).collect()
                        })
                        .unwrap_or_default();
                    top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob));
                    TokenLogprob {
                        token: token.as_str().unwrap_or_default().to_string(),
                        logprob: number(&logprobs["token_logprobs"][i]),
                        top,
                    }
                })
                .collect()
        }
    }
}

/// Reads server-sent events until `[DONE]`, passing text to `on_token`.
/// When the call ends early (the callback, a cancel token, the deadline,
/// a broken stream), what had arrived comes back with the error.
fn read_stream(
    route: Route,
    response: Response,
    on_token: &mut dyn FnMut(&str) -> bool,
) -> std::result::Result<Answer, Unfinished> {
    let mut answer = Answer::default();
    match read_events(route, response, on_token, &mut answer) {
        Ok(()) => Ok(answer),
        Err(error) => {
            answer.choices[0].finish_reason = match &error {
                FfiError::Timeout(_) => "timeout".into(),
                FfiError::Cancelled(_) => "cancelled".into(),
                _ => "error".into(),
            };
            Err(Unfinished { error, partial: Some(answer) })
        }
    }
}

fn read_events(
    route: Route,
    response: Response,
    on_token: &mut dyn FnMut(&str) -> bool,
    answer: &mut Answer,
) -> Result<()> {
    for line in BufReader::new(response).lines() {
        let line = line.map_err(FfiError::io("reading the stream"))?;
        let Some(data) = line.strip_prefix("data:").map(str::trim) else { continue };
        if data == "[DONE]" {
            return Ok(());
        }
        let event: Value =
            serde_json::from_str(data).map_err(|e| FfiError::Protocol(format!("a stream event is not JSON: {e}")))?;
        if let Some(message) = event["error"]["message"].as_str() {
            return Err(FfiError::Stream(message.to_string()));
        }
        let choice = &event["choices"][0];
        let piece = match route {
            Route::Chat => choice["delta"]["content"].as_str(),
            Route::Completion => choice["text"].as_str(),
        };
        let logprobs = logprobs_from(route, &choice["logprobs"]);
        let answered = &mut answer.choices[0];
        answered.logprobs.extend(logprobs);
        if let Some(piece) = piece.filter(|p| !p.is_empty()) {
            answered.text.push_str(piece);
            if !on_token(piece) {
                return Err(FfiError::Cancelled("cancelled by the callback"));
            }
        }
        if let Some(reason) = choice["finish_reason"].as_str() {
            answered.finish_reason = reason.to_string();
            answer.sources = sources_from(&event);
        }
        usage_into(answer, &event);
    }
    Err(FfiError::Protocol("the stream ended before [DONE]".into()))
}

/// A fine-tuning job as `/v1/fine_tuning/jobs` shows it.
#[derive(Debug, Clone, Default)]
pub struct FineTuneJob {
    /// `ftjob-…`.
    pub id: String,
    /// queued, running, succeeded, failed or cancelled.
    pub status: String,
    /// `stage:adapter` once it succeeded.
    pub fine_tuned_model: Option<String>,
    /// Why it failed.
    pub error: Option<String>,
    /// A succeeded full fine-tune's model folder.
    pub result: Option<String>,
}

/// One step of a job's log.
#[derive(Debug, Clone, Copy)]
pub struct FineTuneEvent {
    /// The optimizer step (0: before training).
    pub step: u32,
    /// Training loss (NaN when the event has none).
    pub loss: f64,
    /// Validation loss (NaN when not measured at this step).
    pub eval_loss: f64,
}

impl Client {
    /// Starts a fine-tuning job (`POST /v1/fine_tuning/jobs`).
    pub fn fine_tune_start(&self, body: &Value) -> Result<FineTuneJob> {
        job_of(&self.call_json("POST", "/v1/fine_tuning/jobs", Some(body))?)
    }

    /// A job's state.
    pub fn fine_tune_get(&self, id: &str) -> Result<FineTuneJob> {
        job_of(&self.call_json("GET", &format!("/v1/fine_tuning/jobs/{}", path_segment(id)?), None)?)
    }

    /// Asks a job to stop.
    pub fn fine_tune_cancel(&self, id: &str) -> Result<()> {
        let path = format!("/v1/fine_tuning/jobs/{}/cancel", path_segment(id)?);
        self.call_json("POST", &path, None).map(drop)
    }

    /// A job's log, step by step.
    pub fn fine_tune_events(&self, id: &str) -> Result<Vec<FineTuneEvent>> {
        let reply = self.call_json("GET", &format!("/v1/fine_tuning/jobs/{}/events", path_segment(id)?), None)?;
        let data = reply["data"].as_array().ok_or_else(|| FfiError::Protocol("events have no `data`".into()))?;
        let number = |v: &Value| v.as_f64().unwrap_or(f64::NAN);
        Ok(data
            .iter()
            .map(|e| FineTuneEvent {
                step: e["data"]["step"].as_u64().unwrap_or(0) as u32,
                loss: number(&e["data"]["loss"]),
                eval_loss: number(&e["data"]["eval_loss"]),
            })
            .collect())
    }
}

fn job_of(reply: &Value) -> Result<FineTuneJob> {
    let id = reply["id"].as_str().ok_or_else(|| FfiError::Protocol("a job without an `id`".into()))?;
    Ok(FineTuneJob {
        id: id.to_string(),
        status: reply["status"].as_str().unwrap_or_default().to_string(),
        fine_tuned_model: reply["fine_tuned_model"].as_str().map(str::to_string),
        error: reply["error"]["message"].as_str().map(str::to_string),
        result: reply["result_files"][0].as_str().map(str::to_string),
    })
}
