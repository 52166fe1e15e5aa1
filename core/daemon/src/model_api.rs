//! What a client asks about a model rather than of it: token ids and
//! counts, and the model's shape for `/v1/models`.
//!
//! - `POST /tokenize` `{"model", "prompt" | "messages"}` answers
//!   `{"tokens": [ID…], "count": N, "max_model_len": N}` (vLLM's route and
//!   shape): the ids a generation of that prompt starts from, the chat
//!   template applied to messages, so a client can count before it sends;
//! - `POST /detokenize` `{"model", "tokens": [ID…]}` answers `{"prompt": TEXT}`.
//!
//! Both go to a generate stage (`model` may name an adapter: its tokenizer
//! is the base model's).

use crate::api::{call_collect, parse_body, run_collect, ApiError, AppState};
use crate::stages::Registered;
use axum::body::Bytes;
use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use tailor_plugin_abi::StageKind;

/// The tokenizer routes, to merge into the API router.
pub fn routes() -> Router<AppState> {
    Router::new().route("/tokenize", post(tokenize)).route("/detokenize", post(detokenize))
}

async fn tokenize(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = parse_body(&body)?;
    check_keys(&body, &["model", "prompt", "messages", "add_special_tokens"])?;
    if body.get("add_special_tokens").is_some_and(|v| v != &json!(true)) {
        return Err(ApiError::bad_request("`add_special_tokens: false` is not supported: the ids are a generation's"));
    }
    let request = match (body.get("prompt"), body.get("messages")) {
        (Some(Value::String(prompt)), None) => json!({"tokenize": {"prompt": prompt}}),
        (None, Some(_)) => json!({"tokenize": {"messages": crate::openai::chat_messages(&body)?}}),
        _ => return Err(ApiError::bad_request("give `prompt` (a string) or `messages`, one of them")),
    };
    forward(&state, &body, request).await
}

async fn detokenize(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = parse_body(&body)?;
    check_keys(&body, &["model", "tokens"])?;
    let tokens = body.get("tokens").filter(|t| t.as_array().is_some_and(|a| a.iter().all(Value::is_u64)));
    let tokens = tokens.ok_or_else(|| ApiError::bad_request("`tokens` must be an array of token ids"))?;
    forward(&state, &body, json!({"detokenize": {"tokens": tokens}})).await
}

/// Refuses fields these routes do not take, by name.
fn check_keys(body: &Value, known: &[&str]) -> Result<(), ApiError> {
    let object = body.as_object().ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    match object.keys().find(|key| !known.contains(&key.as_str())) {
        Some(key) => Err(ApiError::bad_request(format!("unknown field `{key}`")).with_param(key)),
        None => Ok(()),
    }
}

/// Sends `request` to the generate stage `body` names.
async fn forward(state: &AppState, body: &Value, request: Value) -> Result<Json<Value>, ApiError> {
    let stage = crate::adapter_api::generation_target(state, body, &mut json!({}))?;
    let output = call_collect(state, stage, state.next_request_id(), request.to_string()).await?;
    serde_json::from_str(&output).map(Json).map_err(|e| {
        ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, format!("stage answered non-JSON: {e}"))
    })
}

/// The model fields `/v1/models` shows for a stage: `max_model_len` (the
/// context of a generate stage, the tokens per text of an embed stage)
/// and, for embed stages, `tailor_dim`. Empty for other kinds, and for a
/// stage that does not answer `{"describe": true}`.
///
/// A stage's shape does not change while the daemon runs, so the first
/// answer is kept: `/v1/models` does not wait behind a busy stage twice.
pub(crate) async fn model_fields(state: &AppState, stage: &Arc<Registered>) -> serde_json::Map<String, Value> {
    static KNOWN: std::sync::OnceLock<
        std::sync::Mutex<std::collections::HashMap<String, serde_json::Map<String, Value>>>,
    > = std::sync::OnceLock::new();
    let known = KNOWN.get_or_init(Default::default);
    if let Some(fields) = known.lock().ok().and_then(|k| k.get(&stage.name).cloned()) {
        return fields;
    }
    let fields = describe(state, stage).await;
    if !fields.is_empty() {
        if let Ok(mut known) = known.lock() {
            known.insert(stage.name.clone(), fields.clone());
        }
    }
    fields
}

/// Asks a generate or embed stage for its shape.
async fn describe(state: &AppState, stage: &Arc<Registered>) -> serde_json::Map<String, Value> {
    let mut fields = serde_json::Map::new();
    if !matches!(stage.kind, Some(StageKind::Generate | StageKind::Embed)) {
        return fields;
    }
    let id = state.next_request_id();
    let Ok(output) = run_collect(state, stage.clone(), id, r#"{"describe": true}"#.into(), None).await else {
        return fields;
    };
    let Ok(shape) = serde_json::from_str::<Value>(&output) else { return fields };
    let length = shape.get("context_length").or_else(|| shape.get("max_input_tokens"));
    if let Some(length) = length.filter(|v| v.is_u64()) {
        fields.insert("max_model_len".into(), length.clone());
    }
    if let Some(dim) = shape.get("dim").filter(|v| v.is_u64()) {
        fields.insert("tailor_dim".into(), dim.clone());
    }
    fields
}
