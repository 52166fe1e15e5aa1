//! OpenAI's generation fields, to the letter: every field of a chat or
//! completion request is honoured, refused with a 400 that names it, or
//! listed here as ignored by design — none is dropped silently. Requests
//! become the generate stage's request ([`stage_request`]); the stage's
//! lines become OpenAI's choices, log-probabilities included ([`Piece`],
//! [`Choice`]).
//!
//! | field | |
//! |---|---|
//! | `messages` (string or `text` parts; roles system, developer, user, assistant; `name` ignored), `prompt` (a string) | honoured |
//! | `max_tokens`, `max_completion_tokens`, `temperature`, `top_p`, `seed` (absent: fresh per request), `presence_penalty`, `frequency_penalty`, `stop` (≤ 4), `n` (≤ the stage's `max_n`), `logprobs`, `top_logprobs` (≤ 20), `stream`, `stream_options.include_usage` | honoured |
//! | `top_k`, `repetition_penalty`, `tailor` (RAG, adapters) | tailor's extensions |
//! | `response_format`: `text`, `json_object`, `json_schema` (`json_schema.schema`; constrained decoding, see `tailor_model::grammar` for the keywords) | honoured |
//! | `user`, `store`, `metadata`, `service_tier` | ignored by design (no effect on the answer) |
//! | `echo: false`, `best_of` ≤ 1 (completions) | accepted (the defaults) |
//! | anything else (`tools`, `tool_choice`, `functions`, `logit_bias`, `suffix`, …) | refused, 400 naming it |
//!
//! Embeddings ([`EmbeddingRequest`]): `model`, `input` (a string or strings),
//! `encoding_format` (`float`, `base64`) honoured; `user` ignored by design;
//! `dimensions`, token-array inputs and anything else refused by name.

use crate::api::ApiError;
use serde_json::{json, Value};

/// The route a generation request came on.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Route {
    /// `/v1/chat/completions`.
    Chat,
    /// `/v1/completions`.
    Completion,
}

/// Fields both routes honour.
const HONOURED: &[&str] = &[
    "model",
    "max_tokens",
    "max_completion_tokens",
    "temperature",
    "top_p",
    "top_k",
    "seed",
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "stop",
    "n",
    "logprobs",
    "stream",
    "stream_options",
    "response_format",
    "tailor",
];

/// Fields accepted and ignored by design: they change nothing in the answer.
const IGNORED: &[&str] = &["user", "store", "metadata", "service_tier"];

/// Most stop strings, the longest one (bytes) and most alternatives per
/// token, as the generate stage enforces them too.
const MAX_STOPS: usize = 4;
const MAX_STOP_BYTES: usize = 256;
const MAX_TOP_LOGPROBS: u64 = 20;

/// Fields passed to the stage as they are (after a type check).
const NUMBERS: &[&str] =
    &["temperature", "top_p", "top_k", "seed", "repetition_penalty", "presence_penalty", "frequency_penalty", "n"];

/// A 400 naming the field at fault (OpenAI's `param`).
fn bad(param: &str, message: impl Into<String>) -> ApiError {
    ApiError::bad_request(message).with_param(param)
}

/// Refuses any field this route neither honours nor ignores by design.
pub fn check_fields(body: &Value, route: Route) -> Result<(), ApiError> {
    let Some(fields) = body.as_object() else { return Ok(()) };
    for (name, value) in fields {
        let known = HONOURED.contains(&name.as_str())
            || IGNORED.contains(&name.as_str())
            || match route {
                Route::Chat => matches!(name.as_str(), "messages" | "top_logprobs"),
                Route::Completion => match name.as_str() {
                    "prompt" => true,
                    "echo" => value.as_bool() == Some(false),
                    "best_of" => value.as_u64().is_some_and(|b| b <= 1),
                    _ => false,
                },
            };
        if !known {
            return Err(bad(name, format!("`{name}` is not supported by tailord (with this value) on this route")));
        }
    }
    response_format(body).map(drop)
}

/// `response_format` as the stage takes it: `None` for text, else
/// `{"type": "json_object"}` or `{"type": "json_schema", "schema": …}`.
fn response_format(body: &Value) -> Result<Option<Value>, ApiError> {
    let format = match body.get("response_format") {
        None | Some(Value::Null) => return Ok(None),
        Some(format) => format,
    };
    match format["type"].as_str() {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => match format["json_schema"]["schema"] {
            Value::Object(_) | Value::Bool(true) => {
                Ok(Some(json!({"type": "json_schema", "schema": format["json_schema"]["schema"]})))
            }
            _ => Err(bad("response_format", "json_schema needs `json_schema.schema`, a JSON schema object")),
        },
        _ => Err(bad("response_format", format!("response_format type {} is not supported", format["type"]))),
    }
}

/// What the caller asked of log-probabilities: `top` alternatives per token.
#[derive(Clone, Copy, Debug)]
pub struct LogprobRequest {
    /// Alternatives per token (0: only the chosen token's).
    pub top: usize,
}

/// The generate stage's request for an OpenAI request whose input (its
/// `messages` or `prompt`) is `input`, with the log-probabilities asked
/// (the handler has run [`check_fields`] on `body` first).
pub fn stage_request(
    body: &Value,
    route: Route,
    input: (&str, Value),
) -> Result<(Value, Option<LogprobRequest>), ApiError> {
    let mut request = json!({});
    request[input.0] = input.1;
    for &key in NUMBERS {
        match body.get(key) {
            None | Some(Value::Null) => {}
            Some(value) if value.is_number() => request[key] = value.clone(),
            Some(_) => return Err(bad(key, format!("`{key}` must be a number"))),
        }
    }
    let max_tokens = body.get("max_completion_tokens").filter(|v| !v.is_null()).or_else(|| body.get("max_tokens"));
    match max_tokens {
        None | Some(Value::Null) => {}
        Some(value) if value.as_u64().is_some() => request["max_tokens"] = value.clone(),
        Some(_) => return Err(bad("max_tokens", "`max_tokens` must be a non-negative integer")),
    }
    if let Some(stop) = stop_strings(body)? {
        request["stop"] = stop;
    }
    if let Some(format) = response_format(body)? {
        request["response_format"] = format;
    }
    let logprobs = logprob_request(body, route)?;
    if let Some(asked) = logprobs {
        request["logprobs"] = json!(asked.top);
    }
    Ok((request, logprobs))
}

/// `stop` as a list: a string or up to four strings, none empty or long.
fn stop_strings(body: &Value) -> Result<Option<Value>, ApiError> {
    let stops: Vec<&str> = match body.get("stop") {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(one)) => vec![one.as_str()],
        Some(Value::Array(items)) => items
            .iter()
            .map(Value::as_str)
            .collect::<Option<_>>()
            .ok_or_else(|| bad("stop", "`stop` must be a string or an array of strings"))?,
        Some(_) => return Err(bad("stop", "`stop` must be a string or an array of strings")),
    };
    if stops.len() > MAX_STOPS || stops.iter().any(|s| s.is_empty() || s.len() > MAX_STOP_BYTES) {
        return Err(bad(
            "stop",
            format!("`stop` takes at most {MAX_STOPS} non-empty strings of at most {MAX_STOP_BYTES} bytes"),
        ));
    }
    Ok((!stops.is_empty()).then(|| json!(stops)))
}

/// Chat: `logprobs: true` and `top_logprobs` (0..=20, only with it).
/// Completions: `logprobs` as the number of alternatives (0..=20).
fn logprob_request(body: &Value, route: Route) -> Result<Option<LogprobRequest>, ApiError> {
    let top = |value: Option<&Value>, name: &str| -> Result<Option<usize>, ApiError> {
        match value {
            None | Some(Value::Null) => Ok(None),
            Some(v) => match v.as_u64() {
                Some(k) if k <= MAX_TOP_LOGPROBS => Ok(Some(k as usize)),
                _ => Err(bad(name, format!("`{name}` must be an integer from 0 to {MAX_TOP_LOGPROBS}"))),
            },
        }
    };
    match route {
        Route::Completion => Ok(top(body.get("logprobs"), "logprobs")?.map(|top| LogprobRequest { top })),
        Route::Chat => {
            let wanted = match body.get("logprobs") {
                None | Some(Value::Null) => false,
                Some(Value::Bool(b)) => *b,
                Some(_) => return Err(bad("logprobs", "`logprobs` must be true or false")),
            };
            let alternatives = top(body.get("top_logprobs"), "top_logprobs")?;
            if alternatives.is_some() && !wanted {
                return Err(bad("top_logprobs", "`top_logprobs` needs `logprobs: true`"));
            }
            Ok(wanted.then(|| LogprobRequest { top: alternatives.unwrap_or(0) }))
        }
    }
}

/// Chat messages as the template takes them: `content` as a string (text
/// parts joined), roles the template can express (`developer` is a system
/// message); `name` is dropped.
pub fn chat_messages(body: &Value) -> Result<Vec<Value>, ApiError> {
    let messages = body.get("messages").and_then(Value::as_array).filter(|m| !m.is_empty());
    let messages = messages.ok_or_else(|| bad("messages", "`messages` must be a non-empty array"))?;
    messages.iter().enumerate().map(|(i, message)| chat_message(i, message)).collect()
}

fn chat_message(i: usize, message: &Value) -> Result<Value, ApiError> {
    let param = format!("messages[{i}]");
    let role = match message.get("role").and_then(Value::as_str) {
        Some("developer") => "system",
        Some(role @ ("system" | "user" | "assistant")) => role,
        Some(role) => {
            return Err(bad(&param, format!("role {role:?} is not supported (system, developer, user, assistant)")))
        }
        None => return Err(bad(&param, "a message needs a `role`")),
    };
    for field in ["tool_calls", "function_call", "audio", "refusal"] {
        if message.get(field).is_some_and(|v| !v.is_null()) {
            return Err(bad(&param, format!("`{field}` in messages is not supported")));
        }
    }
    let content = match message.get("content") {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(parts)) => text_parts(&param, parts)?,
        Some(Value::Null) | None => return Err(bad(&param, "a message needs `content`")),
        Some(_) => return Err(bad(&param, "`content` must be a string or an array of text parts")),
    };
    Ok(json!({"role": role, "content": content}))
}

/// The text of a list of content parts; any part that is not text is refused by its type.
fn text_parts(param: &str, parts: &[Value]) -> Result<String, ApiError> {
    let mut text = String::new();
    for part in parts {
        match (part["type"].as_str(), part["text"].as_str()) {
            (Some("text"), Some(piece)) => text.push_str(piece),
            (Some("text"), None) => return Err(bad(param, "a text part needs `text`")),
            (Some(kind), _) => return Err(bad(param, format!("content parts of type {kind:?} are not supported"))),
            (None, _) => return Err(bad(param, "a content part needs a `type`")),
        }
    }
    Ok(text)
}

/// One token's log-probability and its top alternatives, from the stage.
#[derive(Clone, Debug)]
pub struct TokenLogprob {
    token: String,
    logprob: f64,
    top: Vec<(String, f64)>,
}

/// One parsed line of the generate stage's output.
pub enum Piece {
    /// Text of generation `index` (a token's, or held-back text at the end).
    Token { index: usize, text: String, logprob: Option<TokenLogprob> },
    /// Generation `index` ended.
    Done { index: usize, finish: String, prompt_tokens: u64, completion_tokens: u64 },
}

impl Piece {
    /// Parses a line; `None` for lines of no known type.
    pub fn parse(line: &str) -> Option<Piece> {
        let v: Value = serde_json::from_str(line).ok()?;
        let index = v.get("index").and_then(Value::as_u64).unwrap_or(0) as usize;
        match v.get("type")?.as_str()? {
            "token" => {
                let logprob = v.get("logprob").and_then(Value::as_f64).map(|logprob| TokenLogprob {
                    token: v["token"].as_str().unwrap_or_default().to_string(),
                    logprob,
                    top: v["top_logprobs"]
                        .as_array()
                        .map(|top| {
                            top.iter()
                                .map(|t| {
                                    (
                                        t["token"].as_str().unwrap_or_default().to_string(),
                                        t["logprob"].as_f64().unwrap_or(f64::NAN),
                                    )
                                })
                                .collect()
                        })
                        .unwrap_or_default(),
                });
                Some(Piece::Token { index, text: v.get("text")?.as_str()?.to_string(), logprob })
            }
            "done" => Some(Piece::Done {
                index,
                finish: v.get("finish_reason")?.as_str()?.to_string(),
                prompt_tokens: v.get("prompt_tokens")?.as_u64()?,
                completion_tokens: v.get("completion_tokens")?.as_u64()?,
            }),
            _ => None,
        }
    }
}

/// One choice, assembled from the stage's lines.
#[derive(Default, Debug)]
pub struct Choice {
    /// Its text so far.
    pub text: String,
    /// Why it ended, once it has.
    pub finish: Option<String>,
    /// Tokens it generated.
    pub completion_tokens: u64,
    /// Per token, when log-probabilities were asked.
    logprobs: Vec<TokenLogprob>,
}

impl Choice {
    /// Adds a token's text and log-probability.
    pub fn push(&mut self, text: &str, logprob: Option<TokenLogprob>) {
        self.text.push_str(text);
        self.logprobs.extend(logprob);
    }
}

/// OpenAI's `logprobs` object of a choice (or of a streamed chunk's
/// tokens), in the route's shape; `text_offset` is where the tokens start
/// in the choice's text (completions).
pub fn logprobs_json(route: Route, tokens: &[TokenLogprob], asked: LogprobRequest, text_offset: usize) -> Value {
    let top = |t: &TokenLogprob| t.top.iter().take(asked.top).cloned().collect::<Vec<_>>();
    match route {
        Route::Chat => {
            let entry =
                |token: &str, logprob: f64| json!({"token": token, "logprob": logprob, "bytes": token.as_bytes()});
            let content: Vec<Value> = tokens
                .iter()
                .map(|t| {
                    let mut value = entry(&t.token, t.logprob);
                    value["top_logprobs"] = top(t).iter().map(|(token, lp)| entry(token, *lp)).collect();
                    value
                })
                .collect();
            json!({"content": content, "refusal": null})
        }
        Route::Completion => {
            let mut offset = text_offset;
            let mut offsets = Vec::new();
            for t in tokens {
                offsets.push(offset);
                offset += t.token.len();
            }
            let top_maps: Vec<Value> = tokens
                .iter()
                .map(|t| Value::Object(top(t).into_iter().map(|(token, lp)| (token, json!(lp))).collect()))
                .collect();
            json!({"tokens": tokens.iter().map(|t| t.token.clone()).collect::<Vec<_>>(),
                "token_logprobs": tokens.iter().map(|t| t.logprob).collect::<Vec<_>>(),
                "top_logprobs": top_maps, "text_offset": offsets})
        }
    }
}

/// A finished choice as OpenAI writes it.
pub fn choice_json(route: Route, index: usize, choice: &Choice, asked: Option<LogprobRequest>) -> Value {
    let logprobs = asked.map_or(Value::Null, |asked| logprobs_json(route, &choice.logprobs, asked, 0));
    let finish = choice.finish.clone().unwrap_or_else(|| "stop".into());
    match route {
        Route::Chat => json!({"index": index, "message": {"role": "assistant", "content": choice.text},
            "logprobs": logprobs, "finish_reason": finish}),
        Route::Completion => {
            json!({"index": index, "text": choice.text, "logprobs": logprobs, "finish_reason": finish})
        }
    }
}

/// The tokens a streamed chunk carries, taken out of `choice`.
pub fn take_logprobs(choice: &mut Choice) -> Vec<TokenLogprob> {
    std::mem::take(&mut choice.logprobs)
}

/// A checked `/v1/embeddings` request.
pub struct EmbeddingRequest {
    /// The texts.
    pub input: Vec<String>,
    /// `encoding_format: "base64"`: vectors as base64 of little-endian f32s.
    base64: bool,
}

impl EmbeddingRequest {
    /// Checks every field; refuses what is not supported by name.
    pub fn parse(body: &Value) -> Result<EmbeddingRequest, ApiError> {
        if let Some(fields) = body.as_object() {
            if let Some(name) =
                fields.keys().find(|k| !["model", "input", "encoding_format", "user"].contains(&k.as_str()))
            {
                return Err(bad(name, format!("`{name}` is not supported by tailord on /v1/embeddings")));
            }
        }
        let base64 = match body.get("encoding_format") {
            None | Some(Value::Null) => false,
            Some(Value::String(format)) if format == "float" => false,
            Some(Value::String(format)) if format == "base64" => true,
            _ => return Err(bad("encoding_format", "`encoding_format` must be \"float\" or \"base64\"")),
        };
        let texts = || {
            bad("input", "`input` must be a string or a non-empty array of strings (token arrays are not supported)")
        };
        let input = match body.get("input") {
            Some(Value::String(text)) => vec![text.clone()],
            Some(Value::Array(items)) if !items.is_empty() => {
                items.iter().map(|v| v.as_str().map(str::to_string)).collect::<Option<_>>().ok_or_else(texts)?
            }
            _ => return Err(texts()),
        };
        Ok(EmbeddingRequest { input, base64 })
    }

    /// One vector from the stage (an array of numbers) as the caller asked for it.
    pub fn encode(&self, vector: &Value) -> Value {
        if !self.base64 {
            return vector.clone();
        }
        let values = vector.as_array().map(Vec::as_slice).unwrap_or_default();
        let bytes: Vec<u8> = values.iter().flat_map(|v| (v.as_f64().unwrap_or(0.0) as f32).to_le_bytes()).collect();
        Value::String(base64_encode(&bytes))
    }
}

/// Standard base64 with padding (RFC 4648).
fn base64_encode(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().enumerate().fold(0u32, |n, (i, &b)| n | (b as u32) << (16 - 8 * i));
        for i in 0..4 {
            match i <= chunk.len() {
                true => out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char),
                false => out.push('='),
            }
        }
    }
    out
}

/// What identifies the build that answered (OpenAI's `system_fingerprint`).
pub fn system_fingerprint() -> String {
    format!("tailor-{}", env!("CARGO_PKG_VERSION"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_honoured_ignored_or_refused_by_name() {
        let ok = json!({"model": "m", "messages": [], "user": "u", "stop": "x", "n": 2, "logprobs": true, "top_logprobs": 3});
        assert!(check_fields(&ok, Route::Chat).is_ok());
        for (field, value) in [("tools", json!([])), ("logit_bias", json!({})), ("suffix", json!("s"))] {
            let mut body = json!({"model": "m"});
            body[field] = value;
            let error = check_fields(&body, Route::Completion).unwrap_err();
            assert!(error.message().contains(field), "{}", error.message());
        }
        let json_mode = json!({"model": "m", "response_format": {"type": "json_object"}});
        assert!(check_fields(&json_mode, Route::Chat).is_ok());
        let no_schema = json!({"model": "m", "response_format": {"type": "json_schema", "json_schema": {"name": "x"}}});
        assert!(check_fields(&no_schema, Route::Chat).is_err());
        assert!(check_fields(&json!({"response_format": {"type": "yaml"}}), Route::Chat).is_err());
        assert!(check_fields(&json!({"prompt": "p", "echo": false, "best_of": 1}), Route::Completion).is_ok());
        assert!(check_fields(&json!({"prompt": "p", "echo": true}), Route::Completion).is_err());
    }

    #[test]
    fn embedding_requests_are_checked_and_base64_is_standard() {
        assert_eq!(base64_encode(b"Man"), "TWFu");
        assert_eq!(base64_encode(b"Ma"), "TWE=");
        assert_eq!(base64_encode(b"M"), "TQ==");
        let request =
            EmbeddingRequest::parse(&json!({"model": "m", "input": "x", "encoding_format": "base64"})).unwrap();
        assert_eq!(request.encode(&json!([1.0, -2.0])), json!(base64_encode(&[0, 0, 128, 63, 0, 0, 0, 192])));
        for refused in [
            json!({"input": "x", "dimensions": 8}),
            json!({"input": [[1, 2]]}),
            json!({"input": "x", "encoding_format": "int8"}),
        ] {
            assert!(EmbeddingRequest::parse(&refused).is_err(), "{refused}");
        }
    }

    #[test]
    fn stop_logprobs_and_messages_are_checked() {
        let input = ("prompt", json!("p"));
        let (request, asked) = stage_request(
            &json!({"stop": "a", "logprobs": 3, "max_completion_tokens": 5}),
            Route::Completion,
            input.clone(),
        )
        .unwrap();
        assert_eq!(request["stop"], json!(["a"]));
        assert_eq!(request["logprobs"], 3);
        assert_eq!(request["max_tokens"], 5);
        assert_eq!(asked.map(|a| a.top), Some(3));
        for bad_body in [
            json!({"stop": ["a", "b", "c", "d", "e"]}),
            json!({"stop": [""]}),
            json!({"logprobs": 21}),
            json!({"temperature": "hot"}),
        ] {
            assert!(stage_request(&bad_body, Route::Completion, input.clone()).is_err(), "{bad_body}");
        }
        assert!(stage_request(&json!({"top_logprobs": 2}), Route::Chat, input.clone()).is_err());
        let messages = json!({"messages": [{"role": "developer", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]}, {"role": "user", "content": "hi", "name": "x"}]});
        let parsed = chat_messages(&messages).unwrap();
        assert_eq!(parsed[0], json!({"role": "system", "content": "ab"}));
        assert_eq!(parsed[1], json!({"role": "user", "content": "hi"}));
        let image =
            json!({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "u"}}]}]});
        assert!(chat_messages(&image).unwrap_err().message().contains("image_url"));
        assert!(chat_messages(&json!({"messages": [{"role": "tool", "content": "x"}]})).is_err());
    }
}
