//! Tokenizers: a Hugging Face `tokenizer.json`, or one rebuilt from a GGUF
//! file's embedded vocabulary (`tokenizer.ggml.*`) as the equivalent
//! `tokenizer.json`, so both paths run the same `tokenizers` code.

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, MetaValue};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// GGUF token type of control tokens (`<|im_start|>`, `<s>`, ...).
const TOKEN_TYPE_CONTROL: u64 = 3;
/// GGUF token type of user-defined added tokens.
const TOKEN_TYPE_USER_DEFINED: u64 = 4;

/// A tokenizer with the JSON it was built from.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The same tokenizer without truncation (for chunking long texts),
    /// made by [`Tokenizer::for_encoder`].
    untruncated: Option<tokenizers::Tokenizer>,
    /// The same tokenizer reading special-token strings as plain text, for
    /// text that must never become control tokens (chat content, sources).
    literal: tokenizers::Tokenizer,
    json: String,
    source: PathBuf,
    /// Each token's text as it reads inside a text, filled on first use.
    texts: std::sync::OnceLock<Vec<String>>,
}

impl std::fmt::Debug for Tokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Tokenizer({})", self.source.display())
    }
}

impl Tokenizer {
    /// Loads a `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Tokenizer> {
        if !path.exists() {
            return Err(ModelError::MissingFile { path: path.to_path_buf(), what: "the model's tokenizer" });
        }
        let json = std::fs::read_to_string(path).map_err(crate::error::io_error(path))?;
        Tokenizer::from_json(json, path)
    }

    /// Builds the tokenizer a GGUF file embeds.
    pub fn from_gguf(file: &GgufFile) -> Result<Tokenizer> {
        let json = gguf_tokenizer_json(file)?;
        Tokenizer::from_json(json.to_string(), file.path())
    }

    fn from_json(json: String, source: &Path) -> Result<Tokenizer> {
        let bad = |detail: String| ModelError::Tokenizer { path: source.to_path_buf(), detail };
        // The tokenizers crate panics on some malformed files (an `expect`
        // in its decoder deserializer, found by tests/fuzz.rs): a typed error here.
        let parsed = std::panic::catch_unwind(|| json.parse::<tokenizers::Tokenizer>())
            .map_err(|_| bad("malformed tokenizer (the tokenizers library panicked reading it)".into()))?;
        let inner = parsed.map_err(|e| bad(e.to_string()))?;
        let mut literal = inner.clone();
        literal.set_encode_special_tokens(true);
        let texts = std::sync::OnceLock::new();
        Ok(Tokenizer { inner, untruncated: None, literal, json, source: source.to_path_buf(), texts })
    }

    /// A copy for an encoder: truncate to `max_len` tokens (special tokens
    /// included), never pad.
    pub fn for_encoder(mut self, max_len: usize) -> Result<Tokenizer> {
        let mut untruncated = self.inner.clone();
        untruncated.with_padding(None);
        let source = self.source.clone();
        untruncated.with_truncation(None).map_err(|e| ModelError::Tokenizer { path: source, detail: e.to_string() })?;
        self.untruncated = Some(untruncated);
        let truncation = tokenizers::TruncationParams { max_length: max_len, ..Default::default() };
        let source = self.source.clone();
        self.inner
            .with_truncation(Some(truncation))
            .map_err(|e| ModelError::Tokenizer { path: source, detail: e.to_string() })?;
        self.inner.with_padding(None);
        Ok(self)
    }

    /// Token ids of `text` with the model's special tokens added by its
    /// post-processor (e.g. BERT's `[CLS] … [SEP]`), truncated if configured.
    pub fn encode_with_special(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, true).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Byte spans of the tokens of `text` (no special tokens, never
    /// truncated), for chunking by token count.
    pub fn token_spans(&self, text: &str) -> Result<Vec<(usize, usize)>> {
        let tokenizer = self.untruncated.as_ref().unwrap_or(&self.inner);
        let encoding = tokenizer.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_offsets().to_vec())
    }

    /// Token ids of `text`; special tokens written in the text are recognised.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.inner.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Token ids of `text` read as plain text: a special-token string in it
    /// (`<|im_start|>`) is tokenized as the characters it is made of.
    pub fn encode_literal(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self.literal.encode(text, false).map_err(|e| self.error(e))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// Text of `ids`, optionally dropping special tokens.
    pub fn decode(&self, ids: &[u32], skip_special: bool) -> Result<String> {
        self.inner.decode(ids, skip_special).map_err(|e| self.error(e))
    }

    /// The id of a token string such as `<|im_end|>`.
    pub fn token_id(&self, token: &str) -> Option<u32> {
        self.inner.token_to_id(token)
    }

    /// The string of a token id.
    pub fn token(&self, id: u32) -> Option<String> {
        self.inner.id_to_token(id)
    }

    /// Each token id's text as it reads after other text (a SentencePiece
    /// token keeps its leading space); "" for special tokens and for tokens
    /// that are only part of a character. Computed once.
    pub fn token_texts(&self) -> &[String] {
        self.texts.get_or_init(|| {
            // Decoded after an anchor, so that a word-start token is read as
            // it is mid-text, not as the first token of a text.
            let anchor = self.encode_literal("a").ok().filter(|ids| ids.len() == 1).map(|ids| ids[0]);
            let anchor_text = anchor.and_then(|a| self.decode(&[a], true).ok()).unwrap_or_default();
            (0..self.vocab_size() as u32)
                .map(|id| {
                    let text = match anchor {
                        Some(a) => self
                            .decode(&[a, id], true)
                            .ok()
                            .and_then(|t| t.strip_prefix(&anchor_text).map(str::to_string)),
                        None => self.decode(&[id], true).ok(),
                    };
                    text.filter(|t| !t.contains('\u{FFFD}')).unwrap_or_default()
                })
                .collect()
        })
    }

    /// Vocabulary size including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The `tokenizer.json` text.
    pub fn json(&self) -> &str {
        &self.json
    }

    fn error(&self, e: tokenizers::Error) -> ModelError {
        ModelError::Tokenizer { path: self.source.clone(), detail: e.to_string() }
    }
}

fn strings(file: &GgufFile, key: &str) -> Result<Vec<String>> {
    let bad = || ModelError::Tokenizer {
        path: file.path().to_path_buf(),
        detail: format!("{key} is missing or not a string array"),
    };
    let items = file.get(key).and_then(MetaValue::as_array).ok_or_else(bad)?;
    items.iter().map(|v| v.as_str().map(str::to_string).ok_or_else(bad)).collect()
}

/// The regex pre-tokenizer of a GGUF `tokenizer.ggml.pre` name.
fn pre_tokenizer(path: &Path, pre: &str) -> Result<Value> {
    let byte_level = |use_regex: bool| json!({"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": use_regex});
    let split = |pattern: &str| json!({"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": false});
    Ok(match pre {
        "default" | "gpt2" | "gpt-2" => byte_level(true),
        "smollm" | "starcoder" | "refact" => json!({"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": true}, byte_level(true)]}),
        "llama-bpe" | "llama3" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        "qwen2" => json!({"type": "Sequence", "pretokenizers": [
            split(r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"),
            byte_level(false)]}),
        other => {
            return Err(ModelError::Tokenizer {
                path: path.to_path_buf(),
                detail: format!("pre-tokenizer {other:?} is not supported (supported: gpt2, smollm, llama-bpe, qwen2)"),
            })
        }
    })
}

/// The `tokenizer.json` equivalent to a GGUF file's `gpt2`-style BPE vocabulary.
pub fn gguf_tokenizer_json(file: &GgufFile) -> Result<Value> {
    let path = file.path();
    let model = file.get("tokenizer.ggml.model").and_then(MetaValue::as_str).unwrap_or("");
    if model != "gpt2" {
        return Err(ModelError::Tokenizer {
            path: path.to_path_buf(),
            detail: format!("tokenizer.ggml.model {model:?} is not supported from GGUF (only byte-level BPE, \"gpt2\"); use the Hugging Face folder"),
        });
    }
    let tokens = strings(file, "tokenizer.ggml.tokens")?;
    let merges = strings(file, "tokenizer.ggml.merges")?;
    let types: Vec<u64> = file
        .get("tokenizer.ggml.token_type")
        .and_then(MetaValue::as_array)
        .map(|a| a.iter().map(|v| v.as_u64().unwrap_or(1)).collect())
        .unwrap_or_default();
    let pre = file.get("tokenizer.ggml.pre").and_then(MetaValue::as_str).unwrap_or("default");
    let vocab: serde_json::Map<String, Value> = tokens.iter().enumerate().map(|(i, t)| (t.clone(), json!(i))).collect();
    let added: Vec<Value> = tokens
        .iter()
        .enumerate()
        .filter(|(i, _)| matches!(types.get(*i), Some(&TOKEN_TYPE_CONTROL) | Some(&TOKEN_TYPE_USER_DEFINED)))
        .map(|(i, t)| {
            let special = types.get(i) == Some(&TOKEN_TYPE_CONTROL);
            json!({"id": i, "content": t, "single_word": false, "lstrip": false, "rstrip": false,
                   "normalized": false, "special": special})
        })
        .collect();
    Ok(json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": null,
        "pre_tokenizer": pre_tokenizer(path, pre)?,
        "post_processor": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": false, "use_regex": true},
        "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
        "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
                  "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false, "ignore_merges": false,
                  "vocab": vocab, "merges": merges}
    }))
}
