//! Training data: JSONL files in OpenAI's fine-tuning chat format
//! (`{"messages": [{"role", "content", "weight"?}, …]}`), prompt/completion
//! pairs (`{"prompt", "completion"}`), or plain text (`{"text"}`), one
//! example per line, tokenized with the model's own chat template.
//!
//! The loss covers what the model should learn to write: the assistant's
//! replies (those without `"weight": 0`) and their end-of-turn token, a
//! completion and the EOS after it, or the whole of a plain text. Examples
//! longer than the limit are cut (counted, and reported) or refused.
//! Every error names the file and line.

use crate::backward::Example;
use crate::error::{io_error, Result, TrainError};
use serde_json::Value;
use std::path::Path;
use tailor_model::{Message, Model};

/// What to do with an example longer than the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Overlong {
    /// Keep its first `max_tokens` tokens.
    Truncate,
    /// Refuse the file.
    Refuse,
}

/// A loaded training file.
#[derive(Debug, Clone, Default)]
pub struct Dataset {
    /// The examples, in file order.
    pub examples: Vec<Example>,
    /// How many were cut to the limit.
    pub truncated: usize,
}

impl Dataset {
    /// Tokens the loss is computed on, over all examples.
    pub fn target_tokens(&self) -> usize {
        self.examples.iter().map(Example::target_count).sum()
    }

    /// Tokens over all examples.
    pub fn tokens(&self) -> usize {
        self.examples.iter().map(|e| e.tokens.len()).sum()
    }

    /// Splits off every `1/fraction`-th example (deterministically, spread
    /// over the file) as a validation set.
    pub fn split(self, fraction: f64) -> (Dataset, Dataset) {
        let every = (1.0 / fraction.clamp(1e-6, 1.0)).round().max(2.0) as usize;
        let (mut train, mut eval) = (Dataset::default(), Dataset::default());
        for (i, example) in self.examples.into_iter().enumerate() {
            match i % every == every - 1 {
                true => eval.examples.push(example),
                false => train.examples.push(example),
            }
        }
        train.truncated = self.truncated;
        (train, eval)
    }
}

/// Reads a JSONL training file for `model`: at most `max_tokens` tokens
/// per example (longer ones per `overlong`); empty lines are skipped.
pub fn load(path: &Path, model: &Model, max_tokens: usize, overlong: Overlong) -> Result<Dataset> {
    let text = std::fs::read_to_string(path).map_err(io_error(path))?;
    parse(&text, path, model, max_tokens, overlong)
}

/// [`load`] on a file's text; errors name `source` and the line.
pub fn parse(text: &str, source: &Path, model: &Model, max_tokens: usize, overlong: Overlong) -> Result<Dataset> {
    let path = source;
    let mut dataset = Dataset::default();
    for (index, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |detail: String| TrainError::Data { path: path.to_path_buf(), line: index + 1, detail };
        let json: Value = serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let mut example = parse_example(&json, model).map_err(bad)?;
        if example.tokens.len() > max_tokens {
            if overlong == Overlong::Refuse {
                return Err(bad(format!("{} tokens, over the limit of {max_tokens}", example.tokens.len())));
            }
            example.tokens.truncate(max_tokens);
            example.targets.truncate(max_tokens);
            dataset.truncated += 1;
        }
        if example.target_count() == 0 {
            return Err(bad("nothing to learn: no assistant reply, completion or text within the limit".into()));
        }
        dataset.examples.push(example);
    }
    if dataset.examples.is_empty() {
        return Err(TrainError::Data { path: path.to_path_buf(), line: 0, detail: "no examples".into() });
    }
    Ok(dataset)
}

/// One line's example, or what is wrong with it.
fn parse_example(json: &Value, model: &Model) -> std::result::Result<Example, String> {
    let object = json.as_object().ok_or("expected a JSON object")?;
    if let Some(messages) = object.get("messages") {
        return chat_example(messages, model);
    }
    if let (Some(prompt), Some(completion)) = (object.get("prompt"), object.get("completion")) {
        let (prompt, completion) = (text_field(prompt, "prompt")?, text_field(completion, "completion")?);
        return completion_example(prompt, completion, model);
    }
    if let Some(text) = object.get("text") {
        let tokens = model.tokenizer.encode_literal(text_field(text, "text")?).map_err(|e| e.to_string())?;
        let targets = vec![true; tokens.len()];
        return Ok(Example { tokens, targets });
    }
    Err("expected \"messages\", \"prompt\" and \"completion\", or \"text\"".into())
}

fn text_field<'a>(value: &'a Value, name: &str) -> std::result::Result<&'a str, String> {
    value.as_str().ok_or_else(|| format!("\"{name}\" must be a string"))
}

fn chat_example(messages: &Value, model: &Model) -> std::result::Result<Example, String> {
    let list = messages.as_array().ok_or("\"messages\" must be a list")?;
    let mut parsed = Vec::with_capacity(list.len());
    let mut trained = Vec::with_capacity(list.len());
    for (i, message) in list.iter().enumerate() {
        let role = message.get("role").and_then(Value::as_str).ok_or(format!("message {i} has no \"role\""))?;
        if !matches!(role, "system" | "user" | "assistant") {
            return Err(format!("message {i}: role \"{role}\" (expected system, user or assistant)"));
        }
        let content = message_content(message).map_err(|e| format!("message {i}: {e}"))?;
        let weight = match message.get("weight") {
            None => 1,
            Some(w) => w.as_u64().filter(|w| *w <= 1).ok_or(format!("message {i}: \"weight\" must be 0 or 1"))?,
        };
        parsed.push(Message::new(role, &content));
        trained.push(weight == 1);
    }
    if !parsed.iter().any(|m| m.role == "assistant") {
        return Err("the conversation has no assistant message".into());
    }
    let encoded = model.encode_chat_example(&parsed, &trained).map_err(|e| e.to_string())?;
    Ok(Example { tokens: encoded.tokens, targets: encoded.assistant })
}

/// A message's text: a string, or a list of `{"type": "text", "text"}` parts.
fn message_content(message: &Value) -> std::result::Result<String, String> {
    match message.get("content") {
        Some(Value::String(text)) => Ok(text.clone()),
        Some(Value::Array(parts)) => parts
            .iter()
            .map(|part| match (part.get("type").and_then(Value::as_str), part.get("text").and_then(Value::as_str)) {
                (Some("text"), Some(text)) => Ok(text),
                (kind, _) => Err(format!("content part of type {kind:?} (only text parts are supported)")),
            })
            .collect::<std::result::Result<Vec<&str>, String>>()
            .map(|texts| texts.concat()),
        _ => Err("\"content\" must be a string or a list of text parts".into()),
    }
}

/// A prompt and its completion as plain text: the loss covers the
/// completion and an EOS after it.
fn completion_example(prompt: &str, completion: &str, model: &Model) -> std::result::Result<Example, String> {
    let encode = |text: &str| model.tokenizer.encode_literal(text).map_err(|e| e.to_string());
    let (prompt, completion) = (encode(prompt)?, encode(completion)?);
    let eos = model.llama.config().eos_token_ids.first().copied();
    let mut tokens = prompt.clone();
    tokens.extend(&completion);
    tokens.extend(eos);
    let mut targets = vec![false; prompt.len()];
    targets.resize(tokens.len(), true);
    Ok(Example { tokens, targets })
}
