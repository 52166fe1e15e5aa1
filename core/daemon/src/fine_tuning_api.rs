//! OpenAI's fine-tuning routes, served by the generate stage that holds
//! the base (it trains on its loaded weights and registers the result as
//! one of its adapters):
//!
//! - `POST /v1/fine_tuning/jobs` {model, training_file, validation_file?,
//!   suffix?, seed?, hyperparameters? | method: {type: "supervised",
//!   supervised: {hyperparameters}}, tailor?: {r, alpha, targets, dropout,
//!   method: lora | qlora | full}};
//!   training files are ids of uploads (`/v1/files`; the job keeps its
//!   own copy) or paths under the stage's `data_dirs`;
//! - `GET /v1/fine_tuning/jobs`, `GET /v1/fine_tuning/jobs/{id}`,
//!   `…/{id}/events` (loss per step), `…/{id}/checkpoints`,
//!   `POST …/{id}/cancel`.
//!
//! A job shows `fine_tuned_model` = `"{stage}:{adapter}"` once it
//! succeeded: that name works at once on the chat and completion routes. A
//! full fine-tune (`tailor.method = "full"`) makes a new model, not an
//! adapter: its Hugging Face folder is in `result_files`.

use crate::api::{ApiError, AppState};
use crate::files_api::resolve_upload;
use crate::index_api::{body_or_empty, forward};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use tailor_plugin_abi::StageKind;

/// The fine-tuning routes, to merge into the API router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/fine_tuning/jobs", get(list).post(create))
        .route("/v1/fine_tuning/jobs/{id}", get(retrieve))
        .route("/v1/fine_tuning/jobs/{id}/events", get(events))
        .route("/v1/fine_tuning/jobs/{id}/checkpoints", get(checkpoints))
        .route("/v1/fine_tuning/jobs/{id}/cancel", post(cancel))
}

/// Fields of OpenAI's create request tailor takes.
const CREATE_FIELDS: [&str; 8] =
    ["model", "training_file", "validation_file", "suffix", "seed", "hyperparameters", "method", "tailor"];

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = body_or_empty(&body)?;
    let object = body.as_object().ok_or_else(|| ApiError::bad_request("the body must be a JSON object"))?;
    if let Some(field) = object.keys().find(|k| !CREATE_FIELDS.contains(&k.as_str())) {
        return Err(ApiError::bad_request(format!("`{field}` is not supported")));
    }
    let model =
        body.get("model").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("`model` is required"))?;
    let stage = state
        .registry()
        .find(model, StageKind::Generate)
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("unknown model {model:?}")))?;
    let mut job = json!({"op": "create"});
    for field in ["training_file", "validation_file", "suffix", "seed", "hyperparameters"] {
        if let Some(value) = body.get(field).filter(|v| !v.is_null()) {
            job[field] = value.clone();
        }
    }
    for (file, data) in [("training_file", "training_data"), ("validation_file", "validation_data")] {
        if let Some(text) = job[file].as_str().map(|name| resolve_upload(&state, name)).transpose()?.flatten() {
            job[data] = json!(text);
        }
    }
    if let Some(method) = body.get("method") {
        if method.get("type").and_then(Value::as_str) != Some("supervised") {
            return Err(ApiError::bad_request("method.type: only \"supervised\" fine-tuning is supported"));
        }
        if let Some(hp) = method.pointer("/supervised/hyperparameters") {
            job["hyperparameters"] = hp.clone();
        }
    }
    if let Some(extras) = body.get("tailor").and_then(Value::as_object) {
        for (key, value) in extras {
            if !["r", "alpha", "targets", "dropout", "method"].contains(&key.as_str()) {
                return Err(ApiError::bad_request(format!(
                    "tailor.{key} is not supported (r, alpha, targets, dropout, method are)"
                )));
            }
            job[key] = value.clone();
        }
    }
    let Json(reply) = forward(&state, stage.clone(), json!({"jobs": job})).await?;
    Ok(Json(decorate(reply, &stage.name)))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let mut data = Vec::new();
    for stage in generate_stages(&state) {
        let Ok(Json(reply)) = forward(&state, stage.clone(), json!({"jobs": {"op": "list"}})).await else { continue };
        for job in reply["jobs"].as_array().cloned().unwrap_or_default() {
            data.push(decorate(job, &stage.name));
        }
    }
    Ok(Json(json!({"object": "list", "data": data, "has_more": false})))
}

async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (stage, reply) = on_job_stage(&state, json!({"op": "get", "id": id})).await?;
    Ok(Json(decorate(reply, &stage)))
}

async fn events(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (_, reply) = on_job_stage(&state, json!({"op": "events", "id": id})).await?;
    Ok(Json(json!({"object": "list", "data": reply["events"], "has_more": false})))
}

async fn checkpoints(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (_, reply) = on_job_stage(&state, json!({"op": "checkpoints", "id": id})).await?;
    Ok(Json(json!({"object": "list", "data": reply["checkpoints"], "has_more": false})))
}

async fn cancel(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    let (stage, reply) = on_job_stage(&state, json!({"op": "cancel", "id": id})).await?;
    Ok(Json(decorate(reply, &stage)))
}

fn generate_stages(state: &AppState) -> Vec<Arc<crate::stages::Registered>> {
    state.registry().all().iter().filter(|s| s.kind == Some(StageKind::Generate)).cloned().collect()
}

/// Sends a job request to the generate stage that knows the job: the
/// stage's name and its answer (404 when none does).
async fn on_job_stage(state: &AppState, op: Value) -> Result<(String, Value), ApiError> {
    let mut last = ApiError::new(StatusCode::NOT_FOUND, format!("unknown fine-tuning job {}", op["id"]));
    for stage in generate_stages(state) {
        match forward(state, stage.clone(), json!({"jobs": op})).await {
            Ok(Json(reply)) => return Ok((stage.name.clone(), reply)),
            Err(e) if e.status() == StatusCode::NOT_FOUND => continue,
            Err(e) if e.status() == StatusCode::BAD_REQUEST && e.message().contains("jobs_dir") => continue,
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// The stage's job with the API's names: `model` (the stage) and, once
/// it succeeded, `fine_tuned_model` (`stage:adapter`).
fn decorate(mut job: Value, stage: &str) -> Value {
    let adapter = job.get("fine_tuned_adapter").and_then(Value::as_str).map(|a| format!("{stage}:{a}"));
    job["model"] = json!(stage);
    job["fine_tuned_model"] = json!(adapter);
    if let Some(object) = job.as_object_mut() {
        object.remove("fine_tuned_adapter");
        let (adapter, method) = (object.remove("adapter"), object.remove("train_method"));
        object.insert("tailor".into(), json!({"adapter": adapter, "method": method}));
    }
    job
}
