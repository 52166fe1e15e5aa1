//! The generation loop: prefill the prompt, then decode token by token,
//! streaming each piece of text as soon as it is complete UTF-8.

use crate::error::{ModelError, Result};
use crate::llama::Logits;
use crate::model::Model;
use crate::sampler::{top_logprobs, Sampler, SamplingParams};
use std::time::Instant;

/// What to generate.
#[derive(Debug, Clone)]
pub struct GenerateParams {
    /// Most tokens to generate.
    pub max_tokens: usize,
    /// Sampling settings.
    pub sampling: SamplingParams,
    /// Extra token ids that end generation (the model's are always used).
    pub stop_tokens: Vec<u32>,
    /// Report this many top log-probabilities per position (0: none).
    pub logprobs: usize,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams { max_tokens: 128, sampling: SamplingParams::default(), stop_tokens: Vec::new(), logprobs: 0 }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token.
    Stop,
    /// `max_tokens` or the context length.
    Length,
    /// The callback asked to stop.
    Cancelled,
}

/// One generated token, as streamed.
#[derive(Debug, Clone)]
pub struct TokenEvent {
    /// The token id.
    pub id: u32,
    /// Text completed by this token (may be empty mid-character).
    pub text: String,
    /// This token's own text (may be part of a character).
    pub token: String,
    /// Top log-probabilities at this position: (token id, token text, logprob).
    pub top_logprobs: Vec<(u32, String, f32)>,
    /// Log-probability of the chosen token, when log-probabilities were asked.
    pub logprob: Option<f32>,
}

/// The result of a generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// Generated ids (without the stop token).
    pub tokens: Vec<u32>,
    /// Their text.
    pub text: String,
    /// Why it ended.
    pub finish: FinishReason,
    /// Prompt length in tokens.
    pub prompt_tokens: usize,
    /// Seconds spent on the prompt.
    pub prefill_secs: f64,
    /// Seconds spent generating after the prompt.
    pub decode_secs: f64,
}

/// Generates from `prompt`, calling `on_token` for each token; returning
/// `false` from it cancels.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    params: &GenerateParams,
    on_token: &mut dyn FnMut(&TokenEvent) -> bool,
) -> Result<Generation> {
    if prompt.is_empty() {
        return Err(ModelError::EmptyPrompt);
    }
    let context = model.llama.context_length();
    if prompt.len() >= context {
        return Err(ModelError::ContextOverflow { tokens: prompt.len(), context });
    }
    let mut sampler = Sampler::new(params.sampling.clone())?;
    let mut stops = model.stop_tokens();
    stops.extend(&params.stop_tokens);
    let mut cache = model.llama.new_cache();
    let mut history = prompt.to_vec();
    let mut out = Generation {
        tokens: Vec::new(),
        text: String::new(),
        finish: FinishReason::Length,
        prompt_tokens: prompt.len(),
        prefill_secs: 0.0,
        decode_secs: 0.0,
    };
    let started = Instant::now();
    let mut logits = model.llama.forward(prompt, &mut cache, Logits::Last)?;
    out.prefill_secs = started.elapsed().as_secs_f64();
    let decode_start = Instant::now();
    let mut detok = Detokenizer::default();
    while out.tokens.len() < params.max_tokens {
        let top = if params.logprobs > 0 { top_logprobs(&logits, params.logprobs.max(1)) } else { Vec::new() };
        let raw = logits.clone();
        let id = sampler.sample(&mut logits, &history);
        if stops.contains(&id) {
            out.finish = FinishReason::Stop;
            break;
        }
        out.tokens.push(id);
        history.push(id);
        let piece = detok.push(model, &out.tokens)?;
        let event = token_event(model, id, piece, top, &raw, params.logprobs > 0);
        if !on_token(&event) {
            out.finish = FinishReason::Cancelled;
            break;
        }
        if cache.len() + 1 >= context || out.tokens.len() == params.max_tokens {
            break;
        }
        logits = model.llama.forward(&[id], &mut cache, Logits::Last)?;
    }
    out.decode_secs = decode_start.elapsed().as_secs_f64();
    out.text = model.tokenizer.decode(&out.tokens, true)?;
    Ok(out)
}

/// Streams text token by token in constant time per token: only a short
/// window of recent tokens is decoded, and text is held back while the last
/// token ends inside a multi-byte character (decoded as U+FFFD).
#[derive(Default)]
struct Detokenizer {
    /// Start of the window re-decoded for context (byte-level BPE and
    /// SentencePiece spacing depend on the previous token).
    prefix_offset: usize,
    /// Tokens up to here have been emitted.
    read_offset: usize,
}

impl Detokenizer {
    fn push(&mut self, model: &Model, tokens: &[u32]) -> Result<String> {
        let prefix = model.tokenizer.decode(&tokens[self.prefix_offset..self.read_offset], true)?;
        let full = model.tokenizer.decode(&tokens[self.prefix_offset..], true)?;
        if full.len() <= prefix.len() || full.ends_with('\u{FFFD}') || !full.starts_with(&prefix) {
            return Ok(String::new());
        }
        let piece = full[prefix.len()..].to_string();
        self.prefix_offset = self.read_offset;
        self.read_offset = tokens.len();
        Ok(piece)
    }
}

fn token_event(
    model: &Model,
    id: u32,
    text: String,
    top: Vec<(u32, f32)>,
    raw: &[f32],
    want_logprob: bool,
) -> TokenEvent {
    let name = |t: u32| model.tokenizer.decode(&[t], false).unwrap_or_default();
    let logprob = want_logprob.then(|| {
        top.iter().find(|(t, _)| *t == id).map(|(_, l)| *l).unwrap_or_else(|| log_softmax_at(raw, id as usize))
    });
    TokenEvent {
        id,
        text,
        token: name(id),
        top_logprobs: top.into_iter().map(|(t, l)| (t, name(t), l)).collect(),
        logprob,
    }
}

fn log_softmax_at(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    logits[index] - log_sum
}
