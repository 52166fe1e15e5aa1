//! OpenAI's file routes, for fine-tuning data (the store: [`crate::files`]):
//!
//! - `POST /v1/files`, a `multipart/form-data` body with `file` and
//!   `purpose` = `fine-tune` (as OpenAI's clients send it);
//! - `GET /v1/files`, `GET /v1/files/{id}`, `GET /v1/files/{id}/content`,
//!   `DELETE /v1/files/{id}`.
//!
//! A fine-tuning job names an uploaded file by id as its `training_file`
//! or `validation_file` ([`resolve_upload`]). Without `[server] files_dir`
//! the routes answer 404 saying so.

use crate::api::{ApiError, AppState};
use crate::files::{is_file_id, FileStore};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{json, Value};

/// Room for the multipart framing around the largest file.
const FRAMING_BYTES: usize = 64 << 10;

/// The file routes, their body limit the store's file limit.
pub fn routes(max_file_bytes: usize) -> Router<AppState> {
    Router::new()
        .route("/v1/files", get(list).post(upload))
        .route("/v1/files/{id}", get(retrieve).delete(remove))
        .route("/v1/files/{id}/content", get(content))
        .layer(DefaultBodyLimit::max(max_file_bytes + FRAMING_BYTES))
}

fn store(state: &AppState) -> Result<&FileStore, ApiError> {
    state.files().ok_or_else(|| {
        ApiError::new(StatusCode::NOT_FOUND, "file uploads are off: set [server] files_dir to take them")
    })
}

async fn upload(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Result<Json<Value>, ApiError> {
    let store = store(&state)?;
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let parts = multipart::parse(content_type, &body).map_err(ApiError::bad_request)?;
    let field = |name: &str| parts.iter().find(|p| p.name == name);
    let file = field("file").ok_or_else(|| ApiError::bad_request("the form has no `file` part"))?;
    let purpose = field("purpose").ok_or_else(|| ApiError::bad_request("the form has no `purpose` part"))?;
    let purpose = std::str::from_utf8(purpose.body).map_err(|_| ApiError::bad_request("`purpose` is not text"))?;
    let filename = file.filename.as_deref().unwrap_or("upload.jsonl");
    let kept = store.add(filename, purpose.trim(), file.body)?;
    Ok(Json(json!(kept)))
}

async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!({"object": "list", "data": store(&state)?.list(), "has_more": false})))
}

async fn retrieve(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    Ok(Json(json!(store(&state)?.get(&id)?)))
}

async fn content(State(state): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    let text = store(&state)?.content(&id)?;
    Ok(([(header::CONTENT_TYPE, "application/jsonl")], text).into_response())
}

async fn remove(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Value>, ApiError> {
    store(&state)?.remove(&id)?;
    Ok(Json(json!({"id": id, "object": "file", "deleted": true})))
}

/// The text of an uploaded file a job names (`file-…`), or `None` when
/// `name` is not a file id (a path under the stage's `data_dirs`).
pub fn resolve_upload(state: &AppState, name: &str) -> Result<Option<String>, ApiError> {
    if !is_file_id(name) {
        return Ok(None);
    }
    let store = store(state)?;
    let file = store.get(name).map_err(|_| ApiError::bad_request(format!("no uploaded file {name:?}")))?;
    if file.purpose != "fine-tune" {
        return Err(ApiError::bad_request(format!("{name} was uploaded for {:?}, not fine-tune", file.purpose)));
    }
    store.content(name).map(Some)
}

/// Just enough of RFC 7578 for an upload held in memory: the boundary
/// from the Content-Type, each part's name, filename and body.
mod multipart {
    /// One part of a form.
    pub struct Part<'a> {
        /// Its field name.
        pub name: String,
        /// The file name a file part carries.
        pub filename: Option<String>,
        /// Its bytes.
        pub body: &'a [u8],
    }

    /// The parts of `body`, sent as `content_type`.
    pub fn parse<'a>(content_type: &str, body: &'a [u8]) -> Result<Vec<Part<'a>>, String> {
        let boundary = param(content_type, "boundary")
            .filter(|b| !b.is_empty() && b.len() <= 70)
            .ok_or("uploads must be multipart/form-data with a boundary")?;
        let delimiter = format!("--{boundary}");
        let mut rest = body;
        let start = find(rest, delimiter.as_bytes()).ok_or("the form has no parts")?;
        rest = &rest[start + delimiter.len()..];
        let mut parts = Vec::new();
        let closing = format!("\r\n--{boundary}");
        loop {
            if rest.starts_with(b"--") {
                return Ok(parts);
            }
            rest = rest.strip_prefix(b"\r\n").ok_or("a part boundary is not followed by a line break")?;
            let head_end = find(rest, b"\r\n\r\n").ok_or("a part's headers do not end")?;
            let head = std::str::from_utf8(&rest[..head_end]).map_err(|_| "a part's headers are not text")?;
            rest = &rest[head_end + 4..];
            let end = find(rest, closing.as_bytes()).ok_or("the form is cut short (no closing boundary)")?;
            let disposition = head
                .lines()
                .find_map(|l| l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("content-disposition")))
                .map(|(_, v)| v.to_string())
                .ok_or("a part has no Content-Disposition")?;
            let name = param(&disposition, "name").ok_or("a part has no name")?;
            parts.push(Part { name, filename: param(&disposition, "filename"), body: &rest[..end] });
            rest = &rest[end + closing.len()..];
        }
    }

    /// `key=value` or `key="value"` among a header's `;`-separated parameters.
    fn param(header: &str, key: &str) -> Option<String> {
        header.split(';').skip(1).find_map(|item| {
            let (k, v) = item.split_once('=')?;
            let v = v.trim();
            let v = v.strip_prefix('"').and_then(|v| v.strip_suffix('"')).unwrap_or(v);
            k.trim().eq_ignore_ascii_case(key).then(|| v.to_string())
        })
    }

    fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
        haystack.windows(needle.len()).position(|w| w == needle)
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn a_form_with_a_file_and_a_field() {
            let body = b"--XyZ\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nfine-tune\r\n\
                --XyZ\r\nContent-Disposition: form-data; name=\"file\"; filename=\"t.jsonl\"\r\n\
                Content-Type: application/octet-stream\r\n\r\n{\"a\": 1}\r\n--X\r\n\r\n--XyZ--\r\n";
            let parts = parse("multipart/form-data; boundary=XyZ", body).expect("parsed");
            assert_eq!(parts.len(), 2);
            assert_eq!((parts[0].name.as_str(), parts[0].body), ("purpose", &b"fine-tune"[..]));
            assert_eq!(parts[1].filename.as_deref(), Some("t.jsonl"));
            assert_eq!(parts[1].body, b"{\"a\": 1}\r\n--X\r\n");
            assert!(parse("multipart/form-data", body).is_err());
            assert!(parse("multipart/form-data; boundary=\"XyZ\"", &body[..60]).is_err());
        }
    }
}
