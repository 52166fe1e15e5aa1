//! Streamed generations: the generate stage's lines become OpenAI's
//! server-sent chunks, choice by choice, on a blocking thread; a client
//! that goes away cancels the generation at its next token.

use crate::api::{choice_at, with_sources, Answer, AppState};
use crate::metrics::Metrics;
use crate::openai::{self, Choice, Piece, TokenLogprob};
use crate::stages::Registered;
use axum::response::sse::{Event, Sse};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};
use std::convert::Infallible;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::StreamExt;

/// What a streamed reply needs besides the stage output.
pub(crate) struct Stream {
    pub(crate) id: u64,
    pub(crate) completion_id: String,
    pub(crate) model: String,
    pub(crate) created: u64,
    pub(crate) answer: Answer,
    /// OpenAI's `stream_options.include_usage`: a last chunk with `usage`.
    pub(crate) include_usage: bool,
}

/// Turns stage lines into OpenAI's stream chunks, choice by choice: the
/// first chunk of a choice carries the role, each token chunk its
/// log-probabilities, the last its finish reason and the RAG sources; with
/// output filters a choice's text is held back and sent filtered at its end.
struct Chunker {
    stream: Stream,
    stage: Arc<Registered>,
    choices: Vec<Choice>,
    started: Vec<bool>,
    prompt_tokens: u64,
}

impl Chunker {
    fn envelope(&self, choices: Value) -> Value {
        let s = &self.stream;
        let object = if s.answer.is_chat() { "chat.completion.chunk" } else { "text_completion" };
        json!({"id": s.completion_id, "object": object, "created": s.created, "model": s.model,
            "system_fingerprint": openai::system_fingerprint(), "choices": choices})
    }

    /// A chunk of choice `index`: `text` with its tokens' log-probabilities
    /// (the text starting at byte `offset` of the choice), or its end when
    /// `finish` is given.
    fn chunk(
        &mut self,
        index: usize,
        text: Option<String>,
        tokens: &[TokenLogprob],
        offset: usize,
        finish: Option<&str>,
    ) -> Value {
        let answer = &self.stream.answer;
        let logprobs = match answer.logprobs {
            Some(asked) if !tokens.is_empty() => openai::logprobs_json(answer.route, tokens, asked, offset),
            _ => Value::Null,
        };
        if self.started.len() <= index {
            self.started.resize(index + 1, false);
        }
        let choice = if answer.is_chat() {
            let mut delta = json!({});
            if !std::mem::replace(&mut self.started[index], true) {
                delta["role"] = json!("assistant");
            }
            if let Some(text) = text {
                delta["content"] = json!(text);
            }
            json!({"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish})
        } else {
            json!({"index": index, "text": text.unwrap_or_default(), "logprobs": logprobs, "finish_reason": finish})
        };
        let mut value = self.envelope(json!([choice]));
        if finish.is_some() {
            with_sources(&mut value, &answer.sources);
        }
        value
    }

    /// The chunks one stage line becomes.
    fn on_piece(&mut self, piece: Piece, metrics: &Metrics) -> Vec<Value> {
        let filtering = !self.stage.filters.is_empty();
        match piece {
            Piece::Token { index, text, logprob } if filtering => {
                choice_at(&mut self.choices, index).push(&text, logprob);
                Vec::new()
            }
            Piece::Token { index, text, logprob } => {
                let choice = choice_at(&mut self.choices, index);
                let offset = choice.text.len();
                choice.text.push_str(&text);
                let tokens: Vec<TokenLogprob> = logprob.into_iter().collect();
                vec![self.chunk(index, Some(text), &tokens, offset, None)]
            }
            Piece::Done { index, finish, prompt_tokens, completion_tokens } => {
                metrics.completion_tokens.fetch_add(completion_tokens, Ordering::Relaxed);
                self.prompt_tokens = prompt_tokens;
                let choice = choice_at(&mut self.choices, index);
                choice.completion_tokens = completion_tokens;
                let mut chunks = Vec::new();
                if filtering {
                    let held = std::mem::take(&mut choice.text);
                    let tokens = openai::take_logprobs(choice);
                    let text = self.stage.filter(held).unwrap_or_else(|e| format!("[filter failed: {e}]"));
                    chunks.push(self.chunk(index, Some(text), &tokens, 0, None));
                }
                chunks.push(self.chunk(index, None, &[], 0, Some(&finish)));
                chunks
            }
        }
    }

    /// The last chunk, with the usage of every choice (`include_usage`).
    fn usage(&self) -> Value {
        let completion: u64 = self.choices.iter().map(|c| c.completion_tokens).sum();
        let mut value = self.envelope(json!([]));
        value["usage"] = json!({"prompt_tokens": self.prompt_tokens, "completion_tokens": completion,
            "total_tokens": self.prompt_tokens + completion});
        value
    }
}

/// Streams tokens as server-sent events; a client that goes away cancels
/// the generation at the next token.
pub(crate) fn stream_generation(
    state: AppState,
    stage: Arc<Registered>,
    request: String,
    stream: Stream,
    admission: crate::stages::Admission,
) -> Response {
    let (tx, rx) = tokio::sync::mpsc::channel::<String>(64);
    tokio::task::spawn_blocking(move || {
        let _admission = admission;
        let (id, include_usage) = (stream.id, stream.include_usage);
        let mut chunker =
            Chunker { stream, stage: stage.clone(), choices: Vec::new(), started: Vec::new(), prompt_tokens: 0 };
        let mut buffer = String::new();
        let result = stage.call(id, &request, &mut |part| {
            buffer.push_str(part);
            while let Some(end) = buffer.find('\n') {
                let line: String = buffer.drain(..=end).collect();
                let Some(piece) = Piece::parse(line.trim_end()) else { continue };
                for chunk in chunker.on_piece(piece, state.metrics()) {
                    if tx.blocking_send(chunk.to_string()).is_err() {
                        state.services().cancel(id);
                        return false; // the client went away: cancel
                    }
                }
            }
            true
        });
        state.services().finished(id);
        state.metrics().prompt_tokens.fetch_add(chunker.prompt_tokens, Ordering::Relaxed);
        match result {
            Err(e) => {
                let error =
                    json!({"error": {"message": e.to_string(), "type": "server_error", "param": null, "code": null}});
                let _ = tx.blocking_send(error.to_string());
            }
            Ok(()) if include_usage => {
                let _ = tx.blocking_send(chunker.usage().to_string());
            }
            Ok(()) => {}
        }
        let _ = tx.blocking_send("[DONE]".to_string());
    });
    let events = ReceiverStream::new(rx).map(|data| Ok::<Event, Infallible>(Event::default().data(data)));
    Sse::new(events).into_response()
}
