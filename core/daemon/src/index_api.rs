//! REST routes for retrieval indexes, so clients (curl, libtailor) manage
//! documents without knowing stage request formats:
//!
//! - `POST /v1/indexes` `{"name": NAME, "kind": "flat"|"hnsw"?}` creates one;
//! - `GET /v1/indexes` lists them (`{"object": "list", "data": [{"name", "kind", "dim"}…]}`);
//! - `GET /v1/indexes/{name}` describes it (settings, document and chunk counts);
//! - `DELETE /v1/indexes/{name}` deletes it with its documents;
//! - `POST /v1/indexes/{name}/documents` `{"documents": [{"id", "text", "metadata"?}…]?,
//!   "paths": [PATH…]?}` adds documents sent inline or files the daemon can read;
//! - `DELETE /v1/indexes/{name}/documents` `{"ids": [ID or PATH…]}` deletes them;
//! - `POST /v1/indexes/{name}/search` `{"query": TEXT, "k": N?}` returns the hits.
//!
//! Each route calls the first configured stage of the right kind (`index`
//! or `search`), or the one named by `"stage"` in the body.

use crate::api::{call_collect, parse_body, ApiError, AppState};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use tailor_plugin_abi::StageKind;

/// The index routes, to merge into the API router.
pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/indexes", post(create).get(list))
        .route("/v1/indexes/{name}", get(info).delete(drop_index))
        .route("/v1/indexes/{name}/documents", post(add_documents).delete(delete_documents))
        .route("/v1/indexes/{name}/search", post(search))
}

/// The stage of `kind` named by the body's `"stage"`, else the first configured one.
pub(crate) fn stage_of_kind(
    state: &AppState,
    body: &Value,
    kind: StageKind,
) -> Result<Arc<crate::stages::Registered>, ApiError> {
    let found = match body.get("stage").and_then(Value::as_str) {
        Some(name) => state.registry().find(name, kind),
        None => state.registry().all().iter().find(|s| s.kind == Some(kind)).cloned(),
    };
    let kind_name = format!("{kind:?}").to_lowercase();
    found.ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, format!("no {kind_name} stage is configured")))
}

/// Sends `request` to the stage and answers with its JSON output.
pub(crate) async fn forward(
    state: &AppState,
    stage: Arc<crate::stages::Registered>,
    request: Value,
) -> Result<Json<Value>, ApiError> {
    let output = call_collect(state, stage, state.next_request_id(), request.to_string()).await?;
    serde_json::from_str(&output)
        .map(Json)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, format!("stage answered non-JSON: {e}")))
}

/// The body parsed as a JSON object; an empty body is `{}`.
pub(crate) fn body_or_empty(body: &Bytes) -> Result<Value, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(json!({}));
    }
    parse_body(body)
}

async fn create(State(state): State<AppState>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = parse_body(&body)?;
    let name = body.get("name").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("`name` is required"))?;
    let mut request = json!({"op": "create", "index": name});
    if let Some(kind) = body.get("kind") {
        request["kind"] = kind.clone();
    }
    let stage = stage_of_kind(&state, &body, StageKind::Index)?;
    forward(&state, stage, request).await
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let stage = stage_of_kind(&state, &json!({}), StageKind::Index)?;
    let Json(reply) = forward(&state, stage, json!({"op": "list"})).await?;
    Ok(Json(json!({"object": "list", "data": reply["indexes"]})))
}

async fn drop_index(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let stage = stage_of_kind(&state, &json!({}), StageKind::Index)?;
    forward(&state, stage, json!({"op": "drop", "index": name})).await
}

async fn info(State(state): State<AppState>, Path(name): Path<String>) -> Result<Json<Value>, ApiError> {
    let stage = stage_of_kind(&state, &json!({}), StageKind::Index)?;
    forward(&state, stage, json!({"op": "info", "index": name})).await
}

async fn add_documents(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = parse_body(&body)?;
    let texts = body.get("documents").cloned().unwrap_or(json!([]));
    let paths = body.get("paths").cloned().unwrap_or(json!([]));
    let documents_ok = texts.as_array().is_some_and(|a| a.iter().all(|d| d["id"].is_string() && d["text"].is_string()));
    if !documents_ok || !paths.is_array() {
        return Err(ApiError::bad_request("`documents` must be [{\"id\": …, \"text\": …}] and `paths` an array"));
    }
    let stage = stage_of_kind(&state, &body, StageKind::Index)?;
    forward(&state, stage, json!({"op": "add", "index": name, "texts": texts, "paths": paths})).await
}

async fn delete_documents(
    State(state): State<AppState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Json<Value>, ApiError> {
    let body = body_or_empty(&body)?;
    let ids = body.get("ids").filter(|ids| ids.as_array().is_some_and(|a| a.iter().all(Value::is_string)));
    let ids = ids.ok_or_else(|| ApiError::bad_request("`ids` must be an array of document ids or paths"))?;
    let stage = stage_of_kind(&state, &body, StageKind::Index)?;
    forward(&state, stage, json!({"op": "delete", "index": name, "documents": ids})).await
}

async fn search(State(state): State<AppState>, Path(name): Path<String>, body: Bytes) -> Result<Json<Value>, ApiError> {
    let body = parse_body(&body)?;
    let query =
        body.get("query").and_then(Value::as_str).ok_or_else(|| ApiError::bad_request("`query` is required"))?;
    let k = body.get("k").and_then(Value::as_u64).unwrap_or(4).clamp(1, 100);
    let stage = stage_of_kind(&state, &body, StageKind::Search)?;
    forward(&state, stage, json!({"index": name, "query": query, "k": k})).await
}
