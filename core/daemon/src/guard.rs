//! What a request must pass before any handler reads its body (DESIGN §10):
//! the bearer token, a Host header naming this machine (TCP only: a page
//! that rebinds its DNS name to 127.0.0.1 still sends its own name),
//! `application/json` on every body (a cross-site "simple request" can
//! only send form or text types; the one exception, a multipart upload to
//! `/v1/files`, must come from no web page or from a configured origin),
//! and no new work while the daemon drains;
//! CORS headers only for configured origins.
//! Middleware runs before extractors, so a wrong token costs no body read.

use crate::api::{ApiError, AppState};
use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

/// Host names a TCP request may carry, besides loopback ones.
#[derive(Debug, Clone, Default)]
pub struct AllowedHosts(Vec<String>);

impl AllowedHosts {
    /// The configured extra names (compared without case and port).
    pub fn new(names: &[String]) -> AllowedHosts {
        AllowedHosts(names.iter().map(|n| n.to_ascii_lowercase()).collect())
    }

    /// Whether `host` (a Host header value, port optional) is this machine.
    pub fn allows(&self, host: &str) -> bool {
        let name = host_name(host).to_ascii_lowercase();
        if name == "localhost" || name.ends_with(".localhost") {
            return true;
        }
        if let Ok(ip) = name.trim_start_matches('[').trim_end_matches(']').parse::<std::net::IpAddr>() {
            return ip.is_loopback();
        }
        self.0.contains(&name)
    }
}

/// The name part of a Host value: `[::1]:8080` → `[::1]`, `a:80` → `a`.
fn host_name(host: &str) -> &str {
    if host.starts_with('[') {
        return host.find(']').map_or(host, |end| &host[..=end]);
    }
    match host.rsplit_once(':') {
        Some((name, port)) if port.chars().all(|c| c.is_ascii_digit()) => name,
        _ => host,
    }
}

/// Refuses TCP requests whose Host is not this machine (421-style 403).
pub async fn check_host(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let host = request.headers().get(header::HOST).and_then(|v| v.to_str().ok()).map(str::to_string);
    let refusal = match host {
        Some(host) if state.hosts().allows(&host) => return next.run(request).await,
        Some(host) => ApiError::new(
            StatusCode::FORBIDDEN,
            format!("Host {host:?} is not this server's name; add it to server.allowed_hosts"),
        ),
        None => ApiError::bad_request("the request has no Host header"),
    };
    refuse(&state, refusal)
}

/// Cross-origin access for the configured origins only (`cors_origins`;
/// none by default, so browsers keep other sites from reading answers):
/// preflights from a listed origin get 204 with the allowed methods and
/// headers, and its requests get `Access-Control-Allow-Origin`. Runs before
/// the token check, since preflights carry no credentials.
pub async fn cors(State(state): State<AppState>, request: Request, next: Next) -> Response {
    let origin = request.headers().get(header::ORIGIN).and_then(|v| v.to_str().ok()).map(str::to_string);
    let allowed = origin.filter(|o| state.cors_origins().iter().any(|a| a.eq_ignore_ascii_case(o)));
    let Some(origin) = allowed else { return next.run(request).await };
    let allow_origin = match header::HeaderValue::from_str(&origin) {
        Ok(value) => value,
        Err(_) => return next.run(request).await,
    };
    let mut response = if request.method() == Method::OPTIONS {
        let mut preflight = StatusCode::NO_CONTENT.into_response();
        let headers = preflight.headers_mut();
        headers.insert(header::ACCESS_CONTROL_ALLOW_METHODS, header::HeaderValue::from_static("GET, POST, DELETE"));
        headers.insert(
            header::ACCESS_CONTROL_ALLOW_HEADERS,
            header::HeaderValue::from_static("authorization, content-type"),
        );
        headers.insert(header::ACCESS_CONTROL_MAX_AGE, header::HeaderValue::from_static("600"));
        preflight
    } else {
        next.run(request).await
    };
    response.headers_mut().insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, allow_origin);
    response.headers_mut().insert(header::VARY, header::HeaderValue::from_static("origin"));
    response
}

/// Counts a refusal on /metrics and answers it.
fn refuse(state: &AppState, error: ApiError) -> Response {
    state.metrics().rejected_guard.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    error.into_response()
}

/// Token, Content-Type and drain checks, in that order, on every route but `/health`.
pub async fn check_request(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.uri().path() == "/health" {
        return next.run(request).await;
    }
    let upload = is_upload(request.uri().path(), request.method(), request.headers(), state.cors_origins());
    let checked = authorize(state.token(), request.headers())
        .and_then(|()| if upload { Ok(()) } else { require_json(request.method(), request.headers()) })
        .and_then(|()| match state.draining() {
            true => Err(ApiError::draining()),
            false => Ok(()),
        });
    match checked {
        Ok(()) => next.run(request).await,
        Err(e) => refuse(&state, e),
    }
}

/// Checks the bearer token when one is configured (constant time in the
/// token's length, so timing does not reveal a prefix).
fn authorize(token: Option<&str>, headers: &HeaderMap) -> Result<(), ApiError> {
    let Some(token) = token else { return Ok(()) };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    let same_length = given.len() == token.len();
    let difference = given.bytes().zip(token.bytes()).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    if same_length && difference == 0 {
        Ok(())
    } else {
        Err(ApiError::new(StatusCode::UNAUTHORIZED, "missing or wrong bearer token"))
    }
}

/// A multipart POST to `/v1/files` (how OpenAI's clients upload) sent by
/// no browser page (no `Origin`) or by a configured one: browsers let any
/// page send multipart forms cross-site without asking, so an unlisted
/// origin is held to the JSON rule and refused.
fn is_upload(path: &str, method: &Method, headers: &HeaderMap, cors_origins: &[String]) -> bool {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    let origin = headers.get(header::ORIGIN).and_then(|v| v.to_str().ok());
    let trusted = origin.is_none_or(|o| cors_origins.iter().any(|a| a.eq_ignore_ascii_case(o)));
    path == "/v1/files" && method == Method::POST && essence.eq_ignore_ascii_case("multipart/form-data") && trusted
}

/// A request that carries a body must say it is JSON.
fn require_json(method: &Method, headers: &HeaderMap) -> Result<(), ApiError> {
    if matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS) {
        return Ok(());
    }
    let length = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse().ok());
    let has_body = headers.contains_key(header::TRANSFER_ENCODING) || length.is_some_and(|n: u64| n > 0);
    if !has_body {
        return Ok(());
    }
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    if essence.eq_ignore_ascii_case("application/json") {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            format!("request bodies must be Content-Type: application/json (got {content_type:?})"),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_names_and_configured_ones_pass() {
        let hosts = AllowedHosts::new(&["Tailor.LAN".to_string()]);
        for ok in ["localhost", "localhost:8080", "127.0.0.1:9", "127.9.9.9", "[::1]:80", "[::1]", "tailor.lan:443"] {
            assert!(hosts.allows(ok), "{ok}");
        }
        for bad in ["evil.example", "evil.example:8080", "127.0.0.1.evil.example", "10.0.0.1", "[::2]:80", ""] {
            assert!(!hosts.allows(bad), "{bad}");
        }
    }

    #[test]
    fn only_file_uploads_from_no_page_or_a_listed_origin_may_be_multipart() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_TYPE, "multipart/form-data; boundary=x".parse().unwrap());
        let listed = ["https://app.example".to_string()];
        assert!(is_upload("/v1/files", &Method::POST, &headers, &listed));
        assert!(!is_upload("/v1/chat/completions", &Method::POST, &headers, &listed));
        assert!(!is_upload("/v1/files", &Method::DELETE, &headers, &listed));
        headers.insert(header::ORIGIN, "https://evil.example".parse().unwrap());
        assert!(!is_upload("/v1/files", &Method::POST, &headers, &listed));
        headers.insert(header::ORIGIN, "https://app.example".parse().unwrap());
        assert!(is_upload("/v1/files", &Method::POST, &headers, &listed));
    }

    #[test]
    fn bodies_need_json_and_tokens_must_match() {
        let mut headers = HeaderMap::new();
        headers.insert(header::CONTENT_LENGTH, "5".parse().unwrap());
        headers.insert(header::CONTENT_TYPE, "text/plain".parse().unwrap());
        assert!(require_json(&Method::POST, &headers).is_err());
        headers.insert(header::CONTENT_TYPE, "application/json; charset=utf-8".parse().unwrap());
        assert!(require_json(&Method::POST, &headers).is_ok());
        assert!(require_json(&Method::GET, &HeaderMap::new()).is_ok());
        headers.insert(header::AUTHORIZATION, "Bearer s3cret".parse().unwrap());
        assert!(authorize(Some("s3cret"), &headers).is_ok());
        assert!(authorize(Some("s3cre"), &headers).is_err());
        assert!(authorize(Some("s3cret!"), &headers).is_err());
        assert!(authorize(None, &HeaderMap::new()).is_ok());
    }
}
