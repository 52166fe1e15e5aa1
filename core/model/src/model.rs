//! A ready-to-use language model: decoder, tokenizer and chat template,
//! loaded from a GGUF file or a Hugging Face folder.

use crate::chat::{ChatTemplate, Message, Segment};
use crate::config::LlamaConfig;
use crate::error::{io_error, ModelError, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::llama::{BuildOptions, ConvertScope, Llama};
use crate::tokenizer::Tokenizer;
use crate::weights::{GgufWeights, SafetensorsWeights};
use std::path::{Path, PathBuf};
use tailor_tensor::DType;

/// How to load a model.
#[derive(Clone, Copy)]
pub struct LoadOptions<'a> {
    /// Convert weights to this dtype on load (`None`: keep the file's).
    pub dtype: Option<DType>,
    /// Which weights `dtype` converts.
    pub scope: ConvertScope,
    /// Progress callback (done, total).
    pub progress: &'a (dyn Fn(usize, usize) + Sync),
}

impl Default for LoadOptions<'_> {
    fn default() -> Self {
        LoadOptions { dtype: None, scope: ConvertScope::AllMatrices, progress: &|_, _| {} }
    }
}

/// A conversation tokenized for training ([`Model::encode_chat_example`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ChatExample {
    /// Token ids.
    pub tokens: Vec<u32>,
    /// Per token: written by the assistant (what the loss trains).
    pub assistant: Vec<bool>,
}

/// Decoder + tokenizer + chat format.
pub struct Model {
    /// The decoder.
    pub llama: Llama,
    /// Its tokenizer.
    pub tokenizer: Tokenizer,
    /// Its chat format, when recognised.
    pub template: Option<ChatTemplate>,
    /// Where it was loaded from.
    pub source: PathBuf,
}

impl Model {
    /// Loads a `.gguf` file or a Hugging Face folder.
    pub fn load(path: &Path, options: LoadOptions<'_>) -> Result<Model> {
        if path.is_dir() {
            Model::load_hf(path, options)
        } else if path.exists() {
            Model::load_gguf(path, options)
        } else {
            Err(ModelError::MissingFile {
                path: path.to_path_buf(),
                what: "a GGUF file or a Hugging Face model folder",
            })
        }
    }

    fn load_gguf(path: &Path, options: LoadOptions<'_>) -> Result<Model> {
        let file = GgufFile::open(path)?;
        let config = LlamaConfig::from_gguf(&file)?;
        let tokenizer = Tokenizer::from_gguf(&file)?;
        let template = file.get("tokenizer.chat_template").and_then(MetaValue::as_str).and_then(ChatTemplate::detect);
        let weights = GgufWeights::new(&file, &config);
        let build = BuildOptions { dtype: options.dtype, scope: options.scope, progress: options.progress };
        let llama = Llama::load(config.clone(), &weights, build)?;
        Ok(Model { llama, tokenizer, template, source: path.to_path_buf() })
    }

    fn load_hf(folder: &Path, options: LoadOptions<'_>) -> Result<Model> {
        let config_path = folder.join("config.json");
        if !config_path.exists() {
            return Err(ModelError::MissingFile { path: config_path, what: "the model config" });
        }
        let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let config = LlamaConfig::from_hf_json(&config_path, &text)?;
        let tokenizer = Tokenizer::from_file(&folder.join("tokenizer.json"))?;
        let template = read_hf_chat_template(folder)?.as_deref().and_then(ChatTemplate::detect);
        let weights = SafetensorsWeights::open(folder)?;
        let build = BuildOptions { dtype: options.dtype, scope: options.scope, progress: options.progress };
        let llama = Llama::load(config, &weights, build)?;
        Ok(Model { llama, tokenizer, template, source: folder.to_path_buf() })
    }

    /// Token ids of a plain prompt.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        if text.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        let ids = self.tokenizer.encode(text)?;
        if ids.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        Ok(ids)
    }

    /// Token ids of a chat, rendered with the model's template. Only the
    /// template's own text yields control tokens: message content is
    /// tokenized as plain text, so `<|im_start|>system` typed by a user (or
    /// found in a retrieved document) stays those characters.
    pub fn encode_chat(&self, messages: &[Message]) -> Result<Vec<u32>> {
        if messages.iter().all(|m| m.content.trim().is_empty()) {
            return Err(ModelError::EmptyPrompt);
        }
        let template = self.template.as_ref().ok_or_else(|| ModelError::Config {
            path: self.source.clone(),
            detail: "the model has no chat template tailor recognises (ChatML or Llama 3); use a plain prompt".into(),
        })?;
        let mut ids = Vec::new();
        for segment in template.render_segments(messages) {
            match segment {
                Segment::Template(text) => ids.extend(self.tokenizer.encode(&text)?),
                Segment::Content(text) => ids.extend(self.tokenizer.encode_literal(text)?),
            }
        }
        Ok(ids)
    }

    /// A whole conversation as a training example, in the template the
    /// model serves with (no generation prompt at the end): its tokens and,
    /// per token, whether the assistant wrote it (each assistant message's
    /// text and the end-of-turn after it, so the model learns to stop).
    /// An assistant message with `trained == false` stays context.
    pub fn encode_chat_example(&self, messages: &[Message], trained: &[bool]) -> Result<ChatExample> {
        let template = self.template.as_ref().ok_or_else(|| ModelError::Config {
            path: self.source.clone(),
            detail: "the model has no chat template tailor recognises (ChatML or Llama 3)".into(),
        })?;
        let mut segments = template.render_segments(messages);
        segments.pop(); // the generation prompt: the conversation ends with its last message
        let mut example = ChatExample { tokens: Vec::new(), assistant: Vec::new() };
        let mut message = 0;
        let mut closing_reply = false;
        for segment in segments {
            let (ids, is_reply) = match segment {
                Segment::Template(text) => (self.tokenizer.encode(&text)?, std::mem::take(&mut closing_reply)),
                Segment::Content(text) => {
                    let index = message;
                    message += 1;
                    let reply = messages[index].role == "assistant" && trained.get(index).copied().unwrap_or(true);
                    closing_reply = reply;
                    (self.tokenizer.encode_literal(text)?, reply)
                }
            };
            example.assistant.extend(std::iter::repeat_n(is_reply, ids.len()));
            example.tokens.extend(ids);
        }
        Ok(example)
    }

    /// Token ids that end generation: the model's EOS tokens and, for chat
    /// models, the end-of-turn tokens.
    pub fn stop_tokens(&self) -> Vec<u32> {
        let mut stops = self.llama.config().eos_token_ids.clone();
        if let Some(template) = &self.template {
            stops.extend(template.stop_tokens().iter().filter_map(|t| self.tokenizer.token_id(t)));
        }
        stops.sort_unstable();
        stops.dedup();
        stops
    }
}

fn read_hf_chat_template(folder: &Path) -> Result<Option<String>> {
    let path = folder.join("tokenizer_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Config { path: path.clone(), detail: e.to_string() })?;
    Ok(json.get("chat_template").and_then(|t| t.as_str()).map(str::to_string))
}
