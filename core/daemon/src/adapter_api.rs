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
//! On generation routes, [`generation_target`] reads the adapter a request
//! names (in `model` or `tailor.adapter`) into the stage request.
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

/// The generate stage and adapter a request's `model` names: a stage
/// (`"smollm2"`), a stage and one of its adapters (`"smollm2:support"`), or
/// an adapter alone (vLLM's convention: `"support"`, on the first generate
/// stage); `"tailor": {"adapter", "adapter_scale"}` is the explicit form.
/// The adapter and scale are written into the stage request.
pub(crate) fn generation_target(
    state: &AppState,
    body: &Value,
    request: &mut Value,
) -> Result<std::sync::Arc<crate::stages::Registered>, ApiError> {
    let model =
        body.get("model").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("`model` is required"))?;
    let registry = state.registry();
    let unknown = || ApiError::new(axum::http::StatusCode::NOT_FOUND, format!("unknown model {model:?}"));
    let (stage, named) = match registry.find(model, StageKind::Generate) {
        Some(stage) => (stage, None),
        None => match model.split_once(':') {
            Some((base, adapter)) => (registry.find(base, StageKind::Generate).ok_or_else(unknown)?, Some(adapter)),
            None => {
                let first = registry.all().iter().find(|s| s.kind == Some(StageKind::Generate)).cloned();
                (first.ok_or_else(unknown)?, Some(model))
            }
        },
    };
    let options = body.get("tailor");
    let explicit = options.and_then(|t| t.get("adapter"));
    let adapter = match (named, explicit) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request("name the adapter in `model` or in `tailor.adapter`, not both"))
        }
        (Some(name), None) => Some(json!(name)),
        (None, Some(Value::String(name))) => Some(json!(name)),
        (None, Some(_)) => return Err(ApiError::bad_request("`tailor.adapter` must be a string")),
        (None, None) => None,
    };
    if let Some(adapter) = adapter {
        request["adapter"] = adapter;
    }
    if let Some(scale) = options.and_then(|t| t.get("adapter_scale")) {
        let scale = scale.as_f64().ok_or_else(|| ApiError::bad_request("`tailor.adapter_scale` must be a number"))?;
        request["adapter_scale"] = json!(scale);
    }
    Ok(stage)
}

/// `request` with the adapter fields of [`generation_target`] added.
pub(crate) fn with_target(mut request: Value, target: Value) -> Value {
    if let Value::Object(fields) = target {
        for (key, value) in fields {
            request[key] = value;
        }
    }
    request
}
