//! The OpenAI-compatible HTTP API: `/v1/chat/completions` (with SSE
//! streaming), `/v1/completions`, `/v1/embeddings`, `/v1/models`, and
//! `/health`. Errors use OpenAI's `{"error": {...}}` shape with 4xx for
//! anything the client can fix.

use crate::cache::AnswerCache;
use crate::files::FileStore;
use crate::guard::AllowedHosts;
use crate::metrics::Metrics;
use crate::openai::{self, Choice, LogprobRequest, Piece, Route};
use crate::services::DaemonServices;
use crate::stages::{Registered, Registry};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use tailor_plugin_abi::host::PluginError;
use tailor_plugin_abi::{ffi, StageKind};

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
    files: Option<FileStore>,
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
    /// State over a registry and its host services, with its access rules,
    /// answer cache and (when configured) store of uploaded files.
    pub fn new(
        registry: Registry,
        services: Arc<DaemonServices>,
        access: Access,
        cache: AnswerCache,
        files: Option<FileStore>,
    ) -> AppState {
        let next_id = AtomicU64::new(1);
        let metrics = Metrics::default();
        let draining = AtomicBool::new(false);
        AppState(Arc::new(Inner { registry, services, access, next_id, metrics, cache, files, draining }))
    }

    /// Uploaded files, when `files_dir` is configured.
    pub fn files(&self) -> Option<&FileStore> {
        self.0.files.as_ref()
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
        .merge(crate::model_api::routes())
        .merge(crate::adapter_api::routes())
        .merge(crate::fine_tuning_api::routes())
        .layer(DefaultBodyLimit::max(max_body_bytes))
        .merge(crate::files_api::routes(state.files().map_or(0, FileStore::max_bytes)))
        .layer(axum::middleware::from_fn_with_state(state.clone(), crate::guard::check_request))
        .layer(axum::middleware::from_fn_with_state(state.clone(), count_requests))
        .layer(axum::middleware::from_fn(errors_as_openai))
        .with_state(state)
}

/// Rewrites an error answer that is not already JSON (axum's 413 for an
/// oversized body, 404 for an unknown route, 405, …) into OpenAI's error
/// shape, so every failure reads the same.
async fn errors_as_openai(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    use axum::http::header::{CONTENT_TYPE, RETRY_AFTER};
    let response = next.run(request).await;
    let status = response.status();
    let json = response.headers().get(CONTENT_TYPE).is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || json {
        return response;
    }
    let retry_after = response.headers().get(RETRY_AFTER).cloned();
    let body = axum::body::to_bytes(response.into_body(), 64 << 10).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&body).trim().to_string();
    let message = match text.is_empty() {
        true => status.canonical_reason().unwrap_or("error").to_string(),
        false => text,
    };
    let mut rewritten = ApiError::new(status, message).into_response();
    if let Some(seconds) = retry_after {
        rewritten.headers_mut().insert(RETRY_AFTER, seconds);
    }
    rewritten
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
    body.push_str(&device_metrics(&state));
    body.push_str(&format!(
        "# HELP tailor_answer_cache_bytes Bytes of prompts and answers in the answer cache.\n\
         # TYPE tailor_answer_cache_bytes gauge\ntailor_answer_cache_bytes {}\n",
        state.0.cache.bytes()
    ));
    Ok(([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response())
}

/// Device memory the plugins hold against the daemon's budget (serving on
/// a device only).
fn device_metrics(state: &AppState) -> String {
    let budget = state.0.services.device_budget();
    if budget.ordinal.is_none() {
        return String::new();
    }
    format!(
        "# HELP tailor_device_memory_reserved_bytes Device memory plugins hold against the budget.\n\
         # TYPE tailor_device_memory_reserved_bytes gauge\ntailor_device_memory_reserved_bytes {}\n",
        budget.reserved()
    )
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
#[derive(Debug)]
pub struct ApiError {
    status: StatusCode,
    message: String,
    /// The request field at fault, when one is (OpenAI's `param`).
    param: Option<String>,
    /// Seconds for a `Retry-After` header (429, 503).
    retry_after: Option<u32>,
}

impl ApiError {
    /// An error with this status.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError { status, message: message.into(), param: None, retry_after: None }
    }

    /// The same error, naming the request field at fault.
    pub fn with_param(self, param: &str) -> ApiError {
        ApiError { param: Some(param.to_string()), ..self }
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
        let code = match self.status {
            StatusCode::NOT_FOUND => Value::from("not_found"),
            StatusCode::PAYLOAD_TOO_LARGE => Value::from("request_too_large"),
            StatusCode::TOO_MANY_REQUESTS => Value::from("queue_full"),
            StatusCode::SERVICE_UNAVAILABLE => Value::from("unavailable"),
            _ => Value::Null,
        };
        let error = json!({"message": self.message, "type": kind, "param": self.param, "code": code});
        let mut response = (self.status, Json(json!({"error": error}))).into_response();
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
pub(crate) async fn run_collect(
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
    let mut data = Vec::new();
    for stage in state.0.registry.all() {
        let kind = stage.kind.map(|k| format!("{k:?}").to_lowercase()).unwrap_or_else(|| "unknown".into());
        let mut entry = json!({"id": stage.name, "object": "model", "owned_by": "tailor", "tailor_stage": kind});
        if let Value::Object(fields) = &mut entry {
            fields.extend(crate::model_api::model_fields(&state, stage).await);
        }
        data.push(entry);
    }
    for adapter in crate::adapter_api::adapters_of_all(&state).await? {
        data.push(json!({"id": adapter["name"], "object": "model", "owned_by": "tailor", "parent": adapter["model"],
            "tailor_stage": "adapter"}));
    }
    Ok(Json(json!({"object": "list", "data": data})))
}

async fn chat_completions(State(state): State<AppState>, body: Bytes) -> Result<Response, ApiError> {
    let body = parse_body(&body)?;
    openai::check_fields(&body, Route::Chat)?;
    let mut target = json!({});
    let stage = crate::adapter_api::generation_target(&state, &body, &mut target)?;
    let messages = Value::Array(openai::chat_messages(&body)?);
    let (messages, sources) = match body.get("tailor").and_then(|t| t.get("index")) {
        Some(_) => retrieve_into(&state, &body, &messages).await?,
        None => (messages, Value::Null),
    };
    let (request, logprobs) = openai::stage_request(&body, Route::Chat, ("messages", messages))?;
    let request = crate::adapter_api::with_target(request, target);
    run_generation(state, stage, request, &body, Answer { route: Route::Chat, sources, logprobs }).await
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
    openai::check_fields(&body, Route::Completion)?;
    let mut target = json!({});
    let stage = crate::adapter_api::generation_target(&state, &body, &mut target)?;
    let prompt = body
        .get("prompt")
        .and_then(Value::as_str)
        .ok_or_else(|| ApiError::bad_request("`prompt` must be a string").with_param("prompt"))?;
    let (request, logprobs) = openai::stage_request(&body, Route::Completion, ("prompt", json!(prompt)))?;
    let request = crate::adapter_api::with_target(request, target);
    let answer = Answer { route: Route::Completion, sources: Value::Null, logprobs };
    run_generation(state, stage, request, &body, answer).await
}

/// How a generation is answered: the OpenAI object, RAG sources (`null`
/// without RAG) and the log-probabilities asked for.
#[derive(Clone)]
pub(crate) struct Answer {
    pub(crate) route: Route,
    pub(crate) sources: Value,
    pub(crate) logprobs: Option<LogprobRequest>,
}

impl Answer {
    pub(crate) fn is_chat(&self) -> bool {
        self.route == Route::Chat
    }
}

async fn run_generation(
    state: AppState,
    stage: Arc<Registered>,
    request: Value,
    body: &Value,
    answer: Answer,
) -> Result<Response, ApiError> {
    let chat = answer.is_chat();
    let id = state.next_request_id();
    let model = stage.name.clone();
    let request = request.to_string();
    let created = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let completion_id = format!("{}-{id}", if chat { "chatcmpl" } else { "cmpl" });
    if body.get("stream").and_then(Value::as_bool).unwrap_or(false) {
        let include_usage = body["stream_options"]["include_usage"].as_bool().unwrap_or(false);
        let stream = crate::stream::Stream { id, completion_id, model, created, answer, include_usage };
        let admission = admit(&state, &stage)?;
        return Ok(crate::stream::stream_generation(state.clone(), stage, request, stream, admission));
    }
    let filtered = stage.clone();
    // Deterministic requests (greedy, or seeded) are answered from the cache;
    // the key is the whole stage request, so every field that changes the
    // answer is in it.
    let deterministic =
        body.get("temperature").and_then(Value::as_f64).unwrap_or(0.0) == 0.0 || body.get("seed").is_some();
    let cache_key = deterministic.then(|| format!("{}\u{0}{}\u{0}{request}", stage.name, chat));
    if let Some(hit) = cache_key.as_ref().and_then(|k| state.0.cache.get(k)) {
        state.0.metrics.cache_hits.fetch_add(1, Ordering::Relaxed);
        let mut value: Value =
            serde_json::from_str(&hit).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
        value["id"] = json!(completion_id);
        value["created"] = json!(created);
        with_sources(&mut value, &answer.sources);
        return Ok(Json(value).into_response());
    }
    let output = call_collect(&state, stage, id, request).await?;
    let mut choices: Vec<Choice> = Vec::new();
    let mut prompt_tokens = 0;
    for piece in output.lines().filter_map(Piece::parse) {
        match piece {
            Piece::Token { index, text, logprob } => choice_at(&mut choices, index).push(&text, logprob),
            Piece::Done { index, finish, prompt_tokens: prompt, completion_tokens } => {
                prompt_tokens = prompt;
                let choice = choice_at(&mut choices, index);
                choice.finish = Some(finish);
                choice.completion_tokens = completion_tokens;
                state.0.metrics.completion_tokens.fetch_add(completion_tokens, Ordering::Relaxed);
            }
        }
    }
    state.0.metrics.prompt_tokens.fetch_add(prompt_tokens, Ordering::Relaxed);
    if !filtered.filters.is_empty() {
        choices = tokio::task::spawn_blocking(move || {
            for choice in &mut choices {
                choice.text = filtered.filter(std::mem::take(&mut choice.text))?;
            }
            Ok::<_, PluginError>(choices)
        })
        .await
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("filter task failed: {e}")))??;
    }
    let completion_tokens: u64 = choices.iter().map(|c| c.completion_tokens).sum();
    let choices: Vec<Value> =
        choices.iter().enumerate().map(|(i, c)| openai::choice_json(answer.route, i, c, answer.logprobs)).collect();
    let object = if chat { "chat.completion" } else { "text_completion" };
    let mut reply = json!({"id": completion_id, "object": object, "created": created, "model": model,
        "system_fingerprint": openai::system_fingerprint(), "choices": choices,
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}});
    if let Some(key) = cache_key {
        state.0.cache.put(key, reply.to_string());
    }
    with_sources(&mut reply, &answer.sources);
    Ok(Json(reply).into_response())
}

/// The choice at `index`, growing the list to reach it (the stage numbers
/// its generations from 0 up to the request's `n`, which it bounds).
pub(crate) fn choice_at(choices: &mut Vec<Choice>, index: usize) -> &mut Choice {
    if choices.len() <= index {
        choices.resize_with(index + 1, Choice::default);
    }
    &mut choices[index]
}

/// Adds `"tailor": {"sources": …}` to a reply or chunk when there are sources.
pub(crate) fn with_sources(value: &mut Value, sources: &Value) {
    if !sources.is_null() {
        value["tailor"] = json!({"sources": sources});
    }
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
    let request = openai::EmbeddingRequest::parse(&body)?;
    let stage = stage_for(&state, &body, StageKind::Embed)?;
    let id = state.next_request_id();
    let model = stage.name.clone();
    state.0.metrics.embedded_texts.fetch_add(request.input.len() as u64, Ordering::Relaxed);
    let stage_request = json!({"input": request.input}).to_string();
    let output = call_collect(&state, stage, id, stage_request).await?;
    let parsed: Value =
        serde_json::from_str(&output).map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    let data: Vec<Value> = parsed["embeddings"]
        .as_array()
        .map(|a| {
            let vector = |e: &Value| request.encode(e);
            a.iter()
                .enumerate()
                .map(|(i, e)| json!({"object": "embedding", "index": i, "embedding": vector(e)}))
                .collect()
        })
        .unwrap_or_default();
    let tokens = parsed["tokens"].as_u64().unwrap_or(0);
    Ok(Json(json!({"object": "list", "data": data, "model": model, "usage": {"prompt_tokens": tokens, "total_tokens": tokens}}))
        .into_response())
}
