//! The OpenAI-compatible HTTP API: `/v1/chat/completions` (with SSE
//! streaming), `/v1/completions`, `/v1/embeddings`, `/v1/models`, and
//! `/health`. Errors use OpenAI's `{"error": {...}}` shape with 4xx for
//! anything the client can fix.

use crate::cache::AnswerCache;
use crate::guard::AllowedHosts;
use crate::metrics::Metrics;
use crate::services::DaemonServices;
use crate::stages::{Registered, Registry};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tailor_plugin_abi::host::PluginError;
use tailor_plugin_abi::{ffi, StageKind};
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// Shared by every handler.
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

struct Inner {
    registry: Registry,
    services: Arc<DaemonServices>,
    access: Access,
    next_id: AtomicU64,
    metrics: Metrics,
    cache: AnswerCache,
    draining: AtomicBool,
}

/// Who may call: the bearer token and the Host names TCP requests may carry.
pub struct Access {
    /// Bearer token required on every route but /health.
    pub token: Option<String>,
    /// Host names accepted on TCP.
    pub hosts: AllowedHosts,
    /// Web origins allowed to read answers (CORS); none by default.
    pub cors_origins: Vec<String>,
}

impl AppState {
    /// State over a registry and its host services, with its access rules.
    pub fn new(registry: Registry, services: Arc<DaemonServices>, access: Access, cache: AnswerCache) -> AppState {
        let next_id = AtomicU64::new(1);
        let metrics = Metrics::default();
        let draining = AtomicBool::new(false);
        AppState(Arc::new(Inner { registry, services, access, next_id, metrics, cache, draining }))
    }

    /// The configured stages.
    pub fn registry(&self) -> &Registry {
        &self.0.registry
    }

    /// The bearer token, when one is configured.
    pub fn token(&self) -> Option<&str> {
        self.0.access.token.as_deref()
    }

    /// Host names TCP requests may carry.
    pub fn hosts(&self) -> &AllowedHosts {
        &self.0.access.hosts
    }

    /// Web origins allowed to read answers.
    pub fn cors_origins(&self) -> &[String] {
        &self.0.access.cors_origins
    }

    /// The counters on /metrics.
    pub(crate) fn metrics(&self) -> &Metrics {
        &self.0.metrics
    }

    /// True once shutdown began: new work is refused with 503.
    pub fn draining(&self) -> bool {
        self.0.draining.load(Ordering::Relaxed)
    }

    /// Starts draining: new requests get 503.
    pub fn start_draining(&self) {
        self.0.draining.store(true, Ordering::Relaxed);
    }

    /// The host services (cancellation of in-flight work at shutdown).
    pub fn services(&self) -> &DaemonServices {
        &self.0.services
    }

    /// The answer cache.
    pub fn answer_cache(&self) -> &AnswerCache {
        &self.0.cache
    }

    /// A fresh id for a stage call.
    pub fn next_request_id(&self) -> u64 {
        self.0.next_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The routes, with the body size limit; token, Content-Type and drain
/// checks run before any handler reads a body.
pub fn router(state: AppState, max_body_bytes: usize) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/v1/models", get(models))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/metrics", get(metrics))
        .route("/v1/tailor/stages/{name}", post(call_stage))
        .merge(crate::index_api::routes())
        .merge(crate::adapter_api::routes())
        .merge(crate::fine_tuning_api::routes())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::guard::check_request))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .with_state(state)
}

/// Counts requests in flight and by outcome.
async fn count_requests(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    let m = &state.0.metrics;
    m.in_flight.fetch_add(1, Ordering::Relaxed);
    let response = next.run(request).await;
    m.in_flight.fetch_sub(1, Ordering::Relaxed);
    let counter = if response.status().is_success() { &m.requests_ok } else { &m.requests_failed };
    counter.fetch_add(1, Ordering::Relaxed);
    response
}

async fn metrics(State(state): State<AppState>) -> Result<Response, ApiError> {
    let mut body = state.0.metrics.render();
    body.push_str(&engine_metrics(&state).await);
    body.push_str(&task_metrics(&state));
    body.push_str(&stage_metrics(&state));
    body.push_str(&format!(
        "# HELP tailor_answer_cache_bytes Bytes of prompts and answers in the answer cache.\n\
         # TYPE tailor_answer_cache_bytes gauge\ntailor_answer_cache_bytes {}\n",
        state.0.cache.bytes()
    ));
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// API calls each stage holds now (running or queued; `max_pending` bounds them).
fn stage_metrics(state: &AppState) -> String {
    let mut text = String::from(
        "# HELP tailor_stage_pending Calls admitted to a stage, running or queued.\n# TYPE tailor_stage_pending gauge\n",
    );
    for stage in state.0.registry.all() {
        text.push_str(&format!("tailor_stage_pending{{stage={:?}}} {}\n", stage.name, stage.pending()));
    }
    text
}

/// Progress plugins reported for long work (indexing, loading), by task.
fn task_metrics(state: &AppState) -> String {
    let tasks = state.0.services.tasks();
    let mut text = String::new();
    for (name, help, pick) in [
        ("tailor_task_done", "Units of a long task done, as its plugin reported.", 0),
        ("tailor_task_total", "Units of a long task in all.", 1),
    ] {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} gauge\n"));
        for (task, done, total) in &tasks {
            text.push_str(&format!("{name}{{task={task:?}}} {}\n", if pick == 0 { done } else { total }));
        }
    }
    text
}

/// Scheduler gauges and counters of every generate stage that reports them
/// (`{"stats": true}`): queue depth, running batch size, decode steps and
/// decoded tokens (their ratio is the mean batch size).
async fn engine_metrics(state: &AppState) -> String {
    let series = [
        ("tailor_generate_queue_depth", "gauge", "Requests waiting to join the batch.", "waiting"),
        ("tailor_generate_batch_size", "gauge", "Sequences in the running batch.", "running"),
        ("tailor_generate_decode_steps_total", "counter", "Batched decode steps.", "steps"),
        ("tailor_generate_decoded_tokens_total", "counter", "Tokens decoded by those steps.", "decoded_tokens"),
        ("tailor_generate_prefix_hits_total", "counter", "Prompts that reused a cached prefix.", "prefix_hits"),
        (
            "tailor_generate_prefix_tokens_total",
            "counter",
            "Prompt tokens reused from cached prefixes.",
            "prefix_tokens",
        ),
        ("tailor_adapters_loaded", "gauge", "LoRA adapters in memory.", "adapters_loaded"),
        ("tailor_adapter_bytes", "gauge", "Bytes of LoRA adapter weights in memory.", "adapter_bytes"),
        ("tailor_adapter_hits_total", "counter", "Adapter lookups served from memory.", "adapter_hits"),
        ("tailor_adapter_misses_total", "counter", "Adapter lookups that loaded from disk.", "adapter_misses"),
        ("tailor_adapter_evictions_total", "counter", "Adapters dropped from memory to fit.", "adapter_evictions"),
    ];
    let mut reports = Vec::new();
    for stage in state.0.registry.all().iter().filter(|s| s.kind == Some(StageKind::Generate)) {
        let id = state.next_request_id();
        if let Ok(output) = run_collect(state, stage.clone(), id, r#"{"stats": true}"#.into(), None).await {
            if let Ok(stats) = serde_json::from_str::<Value>(&output) {
                reports.push((stage.name.clone(), stats));
            }
        }
    }
    let mut text = String::new();
    for (name, kind, help, key) in series {
        text.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
        for (stage, stats) in &reports {
            text.push_str(&format!("{name}{{stage={stage:?}}} {}\n", stats[key].as_u64().unwrap_or(0)));
        }
    }
    text
}

/// An OpenAI-style error response.
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// Seconds for a `Retry-After` header (429, 503).
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with this status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), retry_after: None }
    }

    /// 429: the stage's queue is full; try again in a second.
    pub fn busy(stage: &str) -> ApiError {
        let message = format!("stage {stage} has as many requests waiting as it accepts; retry later");
        ApiError { retry_after: Some(1), ..ApiError::new(StatusCode::TOO_MANY_REQUESTS, message) }
    }

    /// 503: the daemon is shutting down.
    pub fn draining() -> ApiError {
        let message = "tailord is shutting down";
        ApiError { retry_after: Some(5), ..ApiError::new(StatusCode::SERVICE_UNAVAILABLE, message) }
    }

    /// A 400 error.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    /// Its status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Its message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let kind = match self.status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            StatusCode::TOO_MANY_REQUESTS => "rate_limit_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        let mut response =
            (self.status, Json(json!({"error": {"message": self.message, "type": kind}}))).into_response();
        if let Some(seconds) = self.retry_after {
            response.headers_mut().insert(axum::http::header::RETRY_AFTER, seconds.into());
        }
        response
    }
}

impl From<PluginError> for ApiError {
    fn from(e: PluginError) -> ApiError {
        let status = match &e {
            PluginError::Stage { status: ffi::ERR_INVALID, .. } => StatusCode::BAD_REQUEST,
            PluginError::Stage { status: ffi::ERR_UNAVAILABLE, .. } => StatusCode::SERVICE_UNAVAILABLE,
            PluginError::Stage { status: ffi::ERR_NOT_FOUND, .. } => StatusCode::NOT_FOUND,
            PluginError::Stage { status: ffi::ERR_CONFLICT, .. } => StatusCode::CONFLICT,
            _ => StatusCode::INTERNAL_SERVER_ERROR,
        };
        ApiError::new(status, e.to_string())
    }
}

/// Marks a request cancelled if the handler awaiting it is dropped (the
/// client went away), so the stage sees it through `is_cancelled`.
struct CancelOnDrop {
    services: Arc<DaemonServices>,
    id: u64,
    done: bool,
}

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        if !self.done {
            self.services.cancel(self.id);
        }
    }
}

/// Runs an API call of a stage on the blocking pool, if the stage has room
/// for it (else 429), and collects its whole output.
pub async fn call_collect(
    state: &AppState,
    stage: Arc<Registered>,
    id: u64,
    request: String,
) -> Result<String, ApiError> {
    let admission = admit(state, &stage)?;
    run_collect(state, stage, id, request, Some(admission)).await
}

/// Runs a stage call on the blocking pool and collects its whole output;
/// `admission` (if any) is held until the call returns. The daemon's own
/// short calls (the counters on /metrics) run without one.
async fn run_collect(
    state: &AppState,
    stage: Arc<Registered>,
    id: u64,
    request: String,
    admission: Option<crate::stages::Admission>,
) -> Result<String, ApiError> {
    let name = stage.name.clone();
    let services = state.0.services.clone();
    let mut guard = CancelOnDrop { services: services.clone(), id, done: false };
    let result = tokio::task::spawn_blocking(move || {
        let _admission = admission;
        let mut out = String::new();
        let result = stage.call(id, &request, &mut |chunk| {
            out.push_str(chunk);
            true
        });
        services.finished(id);
        result.map(|()| out)
    })
    .await;
    guard.done = true;
    result
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("stage {name} task failed: {e}")))?
        .map_err(ApiError::from)
}

/// A place in the stage's bounded queue, or a 429 (counted on /metrics).
fn admit(state: &AppState, stage: &Arc<Registered>) -> Result<crate::stages::Admission, ApiError> {
    stage.admit().ok_or_else(|| {
        state.0.metrics.rejected_busy.fetch_add(1, Ordering::Relaxed);
        ApiError::busy(&stage.name)
    })
}

/// The body as a JSON object, or a 400.
pub fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let value: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("request body is not valid JSON: {e}")))?;
    if !value.is_object() {
        return Err(ApiError::bad_request("request body must be a JSON object"));
    }
    Ok(value)
}

fn stage_for(state: &AppState, body: &Value, kind: StageKind) -> Result<Arc<Registered>, ApiError> {
    let model =
        body.get("model").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("`model` is required"))?;
    state
        .0
        .registry
        .find(model, kind)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {model:?}")))
}

/// `{"status": "ok"}`, or 503 `{"status": "draining"}` once shutdown began.
async fn health(State(state): State<AppState>) -> Response {
    match state.draining() {
        false => Json(json!({"status": "ok"})).into_response(),
        true => (StatusCode::SERVICE_UNAVAILABLE, Json(json!({"status": "draining"}))).into_response(),
    }
}

async fn models(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut data: Vec<Value> = state
        .0
        .registry
        .all()
        .iter()
        .map(|s| {
            let kind = s.kind.map(|k| format!("{k:?}").to_lowercase()).unwrap_or_else(|| "unknown".into());
            json!({"id": s.name, "object": "model", "owned_by": "tailor", "tailor_stage": kind})
        })
        .collect();
    for adapter in crate::adapter_api::adapters_of_all(&state).await? {
        data.push(json!({"id": adapter["name"], "object": "model", "owned_by": "tailor", "parent": adapter["model"],
            "tailor_stage": "adapter"}));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

/// Sampling fields passed through to the generate stage.
fn generation_request(body: &Value, input: (&str, Value)) -> Value {
    let mut request = json!({});
    request[input.0] = input.1;
    for key in ["max_tokens", "temperature", "top_p", "top_k", "seed", "repetition_penalty"] {
        if let Some(v) = body.get(key) {
            request[key] = v.clone();
        }
    }
    if let Some(v) = body.get("max_completion_tokens") {
        request["max_tokens"] = v.clone();
    }
    request
}

async fn chat_completions(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
    let mut target = json!({});
    let stage = crate::adapter_api::generation_target(&state, &body, &mut target)?;
    let messages = body.get("messages").filter(|m| m.as_array().is_some_and(|a| !a.is_empty()));
    let messages = messages.ok_or_else(|| ApiError::bad_request("`messages` must be a non-empty array"))?;
    let (messages, sources) = match body.get("tailor").and_then(|t| t.get("index")) {
        Some(_) => retrieve_into(&state, &body, messages).await?,
        None => (messages.clone(), Value::Null),
    };
    let request = crate::adapter_api::with_target(generation_request(&body, ("messages", messages)), target);
    run_generation(state, stage, request, &body, Kind::Chat { sources }).await
}

/// RAG on chat: `"tailor": {"index": NAME, "k": N, "search": STAGE?}` runs
/// the search stage on the last user message and puts the hits, numbered,
/// into that message; returns the new messages and the sources.
async fn retrieve_into(state: &AppState, body: &Value, messages: &Value) -> Result<(Value, Value), ApiError> {
    let options = &body["tailor"];
    let index = options["index"].as_str().ok_or_else(|| ApiError::bad_request("`tailor.index` must be a string"))?;
    let k = options.get("k").and_then(Value::as_u64).unwrap_or(4).clamp(1, 32);
    let search = match options.get("search").and_then(Value::as_str) {
        Some(name) => state.0.registry.find(name, StageKind::Search),
        None => state.0.registry.all().iter().find(|s| s.kind == Some(StageKind::Search)).cloned(),
    }
    .ok_or_else(|| ApiError::bad_request("no search stage is configured for `tailor.index`"))?;
    let mut messages = messages.as_array().cloned().unwrap_or_default();
    let last_user = messages
        .iter()
        .rposition(|m| m["role"] == "user")
        .ok_or_else(|| ApiError::bad_request("RAG needs a user message to search with"))?;
    let question = messages[last_user]["content"].as_str().unwrap_or("").to_string();
    let request = json!({"index": index, "query": question, "k": k}).to_string();
    let id = state.next_request_id();
    let output = call_collect(state, search, id, request).await?;
    let hits: Value =
        serde_json::from_str(&output).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let hits = hits["hits"].as_array().cloned().unwrap_or_default();
    let mut prompt =
        String::from("Answer the question using only the sources below. Cite the sources you use as [1], [2].\n\n");
    let mut sources = Vec::new();
    for (i, hit) in hits.iter().enumerate() {
        prompt.push_str(&format!("[{}] {}\n\n", i + 1, hit["text"].as_str().unwrap_or("").trim()));
        sources.push(json!({"number": i + 1, "doc_id": hit["doc_id"], "source": hit["source"], "span": hit["span"],
            "score": hit["score"], "text": hit["text"]}));
    }
    prompt.push_str(&format!("Question: {question}"));
    messages[last_user]["content"] = json!(prompt);
    Ok((Value::Array(messages), Value::Array(sources)))
}

async fn completions(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
    let mut target = json!({});
    let stage = crate::adapter_api::generation_target(&state, &body, &mut target)?;
    let prompt =
        body.get("prompt").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("`prompt` must be a string"))?;
    let request = crate::adapter_api::with_target(generation_request(&body, ("prompt", json!(prompt))), target);
    run_generation(state, stage, request, &body, Kind::Completion).await
}

/// Which OpenAI object a generation answers with.
#[derive(Clone)]
enum Kind {
    /// `chat.completion`, with RAG sources (`null` without RAG).
    Chat { sources: Value },
    /// `text_completion`.
    Completion,
}

impl Kind {
    fn is_chat(&self) -> bool {
        matches!(self, Kind::Chat { .. })
    }

    /// The RAG sources, `null` when there are none.
    fn sources(&self) -> &Value {
        match self {
            Kind::Chat { sources } => sources,
            Kind::Completion => &Value::Null,
        }
    }
}

/// One parsed line of the generate stage's output.
enum Piece {
    Token(String),
    Done { finish: String, prompt_tokens: u64, completion_tokens: u64 },
}

fn parse_piece(line: &str) -> Option<Piece> {
    let v: Value = serde_json::from_str(line).ok()?;
    match v.get("type")?.as_str()? {
        "token" => Some(Piece::Token(v.get("text")?.as_str()?.to_string())),
        "done" => Some(Piece::Done {
            finish: v.get("finish_reason")?.as_str()?.to_string(),
            prompt_tokens: v.get("prompt_tokens")?.as_u64()?,
            completion_tokens: v.get("completion_tokens")?.as_u64()?,
        }),
        _ => None,
    }
}

async fn run_generation(
    state: AppState,
    stage: Arc<Registered>,
    request: Value,
    body: &Value,
    kind: Kind,
) -> Result<Response, ApiError> {
    let chat = kind.is_chat();
    let id = state.next_request_id();
    let model = stage.name.clone();
    let request = request.to_string();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let completion_id = format!("{}-{id}", if chat { "chatcmpl" } else { "cmpl" });
    if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let include_usage = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
        let stream = Stream { id, completion_id, model, created, kind, include_usage };
        let admission = admit(&state, &stage)?;
        return Ok(stream_generation(state.clone(), stage, request, stream, admission));
    }
    let filtered = stage.clone();
    // Deterministic requests (greedy, or seeded) are answered from the cache.
    let deterministic =
        body.get("temperature").and_then(Value::as_f64).unwrap_or(0.0) == 0.0 || body.get("seed").is_some();
    let cache_key = deterministic.then(|| format!("{}\u{0}{}\u{0}{request}", stage.name, chat));
    if let Some(hit) = cache_key.as_ref().and_then(|k| state.0.cache.get(k)) {
        state.0.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
        let mut value: Value =
            serde_json::from_str(&hit).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        value["id"] = json!(completion_id);
        value["created"] = json!(created);
        with_sources(&mut value, kind.sources());
        return Ok(Json(value).into_response());
    }
    let output = call_collect(&state, stage, id, request).await?;
    let (mut text, mut finish, mut usage) = (String::new(), "stop".to_string(), (0, 0));
    for piece in output.lines().filter_map(parse_piece) {
        match piece {
            Piece::Token(t) => text.push_str(&t),
            Piece::Done { finish: f, prompt_tokens, completion_tokens } => {
                finish = f;
                usage = (prompt_tokens, completion_tokens);
                state.0.metrics.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
                state.0.metrics.completion_tokens.fetch_add(completion_tokens, Ordering::Relaxed);
            }
        }
    }
    let text = if filtered.filters.is_empty() {
        text
    } else {
        tokio::task::spawn_blocking(move || filtered.filter(text))
            .await
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("filter task failed: {e}")))??
    };
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": finish})
    } else {
        json!({"index": 0, "text": text, "finish_reason": finish})
    };
    let object = if chat { "chat.completion" } else { "text_completion" };
    let mut reply = json!({"id": completion_id, "object": object, "created": created, "model": model, "choices": [choice],
        "usage": {"prompt_tokens": usage.0, "completion_tokens": usage.1, "total_tokens": usage.0 + usage.1}});
    if let Some(key) = cache_key {
        state.0.cache.put(key, reply.to_string());
    }
    with_sources(&mut reply, kind.sources());
    Ok(Json(reply).into_response())
}

/// Adds `"tailor": {"sources": …}` to a reply or chunk when there are sources.
fn with_sources(value: &mut Value, sources: &Value) {
    if !sources.is_null() {
        value["tailor"] = json!({"sources": sources});
    }
}

/// What a streamed reply needs besides the stage output.
struct Stream {
    id: u64,
    completion_id: String,
    model: String,
    created: u64,
    kind: Kind,
    /// OpenAI's `stream_options.include_usage`: a last chunk with `usage`.
    include_usage: bool,
}

/// Streams tokens as server-sent events; a client that goes away cancels
/// the generation at the next token. The chunk that carries the finish
/// reason also carries the RAG sources (`tailor.sources`).
fn stream_generation(
    state: AppState,
    stage: Arc<Registered>,
    request: String,
    stream: Stream,
    admission: crate::stages::Admission,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    let Stream { id, completion_id, model, created, kind, include_usage } = stream;
    let chat = kind.is_chat();
    let object = if chat { "chat.completion.chunk" } else { "text_completion" };
    let envelope = move |choices: Value| json!({"id": completion_id, "object": object, "created": created, "model": model, "choices": choices});
    let usage_chunk = {
        let envelope = envelope.clone();
        move |prompt: u64, completion: u64| {
            let mut value = envelope(json!([]));
            value["usage"] = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion});
            value.to_string()
        }
    };
    let chunk = move |delta: Value, finish: Value| {
        let choice = if chat {
            json!({"index": 0, "delta": delta, "finish_reason": finish})
        } else {
            json!({"index": 0, "text": delta.get("content").cloned().unwrap_or(json!("")), "finish_reason": finish})
        };
        let mut value = envelope(json!([choice]));
        if !finish.is_null() {
            with_sources(&mut value, kind.sources());
        }
        value
    };
    tokio::task::spawn_blocking(move || {
        let _admission = admission;
        let mut first = true;
        let mut buffer = String::new();
        // With filters, the answer is held back and sent filtered in one chunk.
        let mut held = (!stage.filters.is_empty()).then(String::new);
        let mut usage = None;
        let result = stage.call(id, &request, &mut |part| {
            buffer.push_str(part);
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let event = match parse_piece(line.trim_end()) {
                    Some(Piece::Token(text)) if held.is_some() => {
                        if let Some(h) = held.as_mut() {
                            h.push_str(&text);
                        }
                        continue;
                    }
                    Some(Piece::Token(text)) if first => {
                        first = false;
                        chunk(json!({"role": "assistant", "content": text}), Value::Null).to_string()
                    }
                    Some(Piece::Token(text)) => chunk(json!({"content": text}), Value::Null).to_string(),
                    Some(Piece::Done { finish, prompt_tokens, completion_tokens }) => {
                        state.0.metrics.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
                        state.0.metrics.completion_tokens.fetch_add(completion_tokens, Ordering::Relaxed);
                        usage = Some((prompt_tokens, completion_tokens));
                        if let Some(text) = held.take() {
                            let filtered = stage.filter(text).unwrap_or_else(|e| format!("[filter failed: {e}]"));
                            let event = chunk(json!({"role": "assistant", "content": filtered}), Value::Null);
                            if tx.blocking_send(event.to_string()).is_err() {
                                return false;
                            }
                        }
                        chunk(json!({}), json!(finish)).to_string()
                    }
                    None => continue,
                };
                if tx.blocking_send(event).is_err() {
                    state.0.services.cancel(id);
                    return false; // the client went away: cancel
                }
            }
            true
        });
        state.0.services.finished(id);
        match (result, usage) {
            (Err(e), _) => {
                let error = json!({"error": {"message": e.to_string(), "type": "server_error"}});
                let _ = tx.blocking_send(error.to_string());
            }
            (Ok(()), Some((prompt, completion))) if include_usage => {
                let _ = tx.blocking_send(usage_chunk(prompt, completion));
            }
            (Ok(()), _) => {}
        }
        let _ = tx.blocking_send("[DONE]".to_string());
    });
    let events = ReceiverStream::new(rx).map(|data| Ok::<Event, Infallible>(Event::default().data(data)));
    Sse::new(events).into_response()
}

/// Calls any configured stage with the raw request body; answers with its
/// whole output (JSON when it parses as JSON).
async fn call_stage(
    State(state): State<AppState>,
    axum::extract::Path(name): axum::extract::Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let stage = state
        .0
        .registry
        .all()
        .iter()
        .find(|s| s.name == name)
        .cloned()
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown stage {name:?}")))?;
    let request = String::from_utf8(body.to_vec()).map_err(|_| ApiError::bad_request("request body is not UTF-8"))?;
    let id = state.next_request_id();
    let output = call_collect(&state, stage, id, request).await?;
    Ok(match serde_json::from_str::<Value>(&output) {
        Ok(value) => Json(value).into_response(),
        Err(_) => output.into_response(),
    })
}

async fn embeddings(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
    let stage = stage_for(&state, &body, StageKind::Embed)?;
    let input: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if !items.is_empty() => items
            .iter()
            .map(|v| v.as_str().map(str::to_string))
            .collect::<Option<_>>()
            .ok_or_else(|| ApiError::bad_request("`input` must be a string or an array of strings"))?,
        _ => return Err(ApiError::bad_request("`input` must be a string or a non-empty array of strings")),
    };
    let id = state.next_request_id();
    let model = stage.name.clone();
    state.0.metrics.embedded_texts.fetch_add(input.len() as u64, Ordering::Relaxed);
    let request = json!({"input": input}).to_string();
    let output = call_collect(&state, stage, id, request).await?;
    let parsed: Value =
        serde_json::from_str(&output).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let data: Vec<Value> = parsed["embeddings"]
        .as_array()
        .map(|a| {
            a.iter().enumerate().map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": e})).collect()
        })
        .unwrap_or_default();
    let tokens = parsed["tokens"].as_u64().unwrap_or(0);
    Ok(Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response())
}
