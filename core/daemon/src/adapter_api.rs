//! REST routes for LoRA adapters, so clients load and unload them without
//! knowing the generate stage's request format:
//!
//! - `GET /v1/adapters` lists the adapters of every generate stage;
//! - `POST /v1/adapters` `{"name", "path", "pinned"?, "model"?}` loads one
//!   (only from the stage's `adapter_dirs`);
//! - `DELETE /v1/adapters/{name}` unloads it (requests using it finish first);
//! - vLLM's `POST /v1/load_lora_adapter` `{"lora_name", "lora_path"}` and
//!   `POST /v1/unload_lora_adapter` `{"lora_name"}` do the same.
//!
//! `"model"` names the generate stage (default: the first configured).
//! Loading or unloading clears the answer cache: a name may now stand for
//! other weights.

use crate::api::{ApiError, AppState};
use crate::index_api::{body_or_empty, forward, stage_of_kind};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use tailor_plugin_abi::StageKind;

/// The adapter routes, to merge into the API router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/adapters", get(list).post(load))
        .route("/v1/adapters/{name}", delete(unload))
        .route("/v1/load_lora_adapter", post(load_vllm))
        .route("/v1/unload_lora_adapter", post(unload_vllm))
}

/// Every generate stage's adapters, each with `"model"` = its stage.
pub(crate) async fn adapters_of_all(state: &AppState) -> Result<Vec<Value>, ApiError> {
    let mut out = Vec::new();
    let stages: Vec<_> =
        state.registry().all().iter().filter(|s| s.kind == Some(StageKind::Generate)).cloned().collect();
    for stage in stages {
        let name = stage.name.clone();
        let Json(listing) = forward(state, stage, json!({"adapters": {"op": "list"}})).await?;
        for mut adapter in listing["adapters"].as_array().cloned().unwrap_or_default() {
            adapter["model"] = json!(name);
            out.push(adapter);
        }
    }
    Ok(out)
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"object": "list", "data": adapters_of_all(&state).await?})))
}

async fn load(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = body_or_empty(&body)?;
    let name = string_field(&body, "name")?;
    let path = string_field(&body, "path")?;
    let pinned = body.get("pinned").and_then(Value::as_bool).unwrap_or(false);
    load_adapter(&state, &body, name, path, pinned).await
}

async fn load_vllm(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = body_or_empty(&body)?;
    let name = string_field(&body, "lora_name")?;
    let path = string_field(&body, "lora_path")?;
    load_adapter(&state, &body, name, path, false).await
}

async fn load_adapter(
    state: &AppState,
    body: &Value,
    name: &str,
    path: &str,
    pinned: bool,
) -> Result<Json<Value>, ApiError> {
    let stage = generate_stage(state, body)?;
    let request = json!({"adapters": {"op": "load", "name": name, "path": path, "pinned": pinned}});
    let reply = forward(state, stage, request).await;
    state.answer_cache().clear();
    reply
}

async fn unload(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = body_or_empty(&body)?;
    unload_adapter(&state, &body, &name).await
}

async fn unload_vllm(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = body_or_empty(&body)?;
    let name = string_field(&body, "lora_name")?.to_string();
    unload_adapter(&state, &body, &name).await
}

async fn unload_adapter(state: &AppState, body: &Value, name: &str) -> Result<Json<Value>, ApiError> {
    let stage = generate_stage(state, body)?;
    let reply = forward(state, stage, json!({"adapters": {"op": "unload", "name": name}})).await;
    state.answer_cache().clear();
    reply
}

/// The generate stage `"model"` names, else the first configured.
fn generate_stage(state: &AppState, body: &Value) -> Result<std::sync::Arc<crate::stages::Registered>, ApiError> {
    let mut selector = json!({});
    if let Some(model) = body.get("model") {
        selector["stage"] = model.clone();
    }
    stage_of_kind(state, &selector, StageKind::Generate)
}

fn string_field<'a>(body: &'a Value, name: &str) -> Result<&'a str, ApiError> {
    body.get(name).and_then(Value::as_str).ok_or_else(|| ApiError::bad_request(format!("`{name}` must be a string")))
}
