//! The generation loop: prefill the prompt, then decode token by token,
//! streaming each piece of text as soon as it is complete UTF-8.

use crate::decoder::{CpuDecoder, Decoder, DecoderCache};
use crate::error::{ModelError, Result};
use crate::grammar::{JsonGrammar, JsonState};
use crate::kv_cache::KvCache;
use crate::lora::ActiveAdapter;
use crate::model::Model;
use crate::sampler::{top_logprobs, Sampler, SamplingParams};
use std::sync::Arc;
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
    /// Texts that end generation where they first appear, matched across
    /// token boundaries; neither they nor anything after them is returned,
    /// and text that may be the start of one is held back until it is not.
    pub stop_strings: Vec<String>,
    /// Report this many top log-probabilities per position (0: none).
    pub logprobs: usize,
    /// Constrain the answer to JSON (any object, or a schema's values): the
    /// sequence ends with a stop token once the value is complete.
    pub grammar: Option<Arc<JsonGrammar>>,
    /// The LoRA adapter to generate with (none: the base model).
    pub adapter: Option<ActiveAdapter>,
}

impl Default for GenerateParams {
    fn default() -> Self {
        GenerateParams {
            max_tokens: 128,
            sampling: SamplingParams::default(),
            stop_tokens: Vec::new(),
            stop_strings: Vec::new(),
            logprobs: 0,
            grammar: None,
            adapter: None,
        }
    }
}

/// Why generation ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// A stop token or a stop string.
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
    /// This token's own text (may be part of a character); filled only when
    /// log-probabilities were asked (it costs a decode per token).
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
    /// The end of `text` that no token event carried: text held back as the
    /// possible start of a stop string when a stop token came instead.
    /// Streaming callers print it after the last event.
    pub unstreamed: String,
}

/// Generates from `prompt` on the CPU, calling `on_token` for each token;
/// returning `false` from it cancels.
pub fn generate(
    model: &Model,
    prompt: &[u32],
    params: &GenerateParams,
    on_token: &mut dyn FnMut(&TokenEvent) -> bool,
) -> Result<Generation> {
    generate_on(model, &mut CpuDecoder::new(&model.llama), prompt, params, on_token)
}

/// [`generate`] on `decoder` (the CPU's, or a device's).
pub fn generate_on<D: Decoder>(
    model: &Model,
    decoder: &mut D,
    prompt: &[u32],
    params: &GenerateParams,
    on_token: &mut dyn FnMut(&TokenEvent) -> bool,
) -> Result<Generation> {
    let cache = decoder.new_cache()?;
    let (mut sequence, mut logits) = Sequence::start_on(model, decoder, prompt, params, cache)?;
    let adapter = [params.adapter.clone()];
    loop {
        let step = sequence.accept(model, &mut logits)?;
        if let Some(event) = &step.event {
            if !on_token(event) {
                sequence.cancel();
                break;
            }
        }
        let Some(next) = step.next else { break };
        // The batched decode path with a batch of one: the same arithmetic
        // as a request running in tailor-engine's batch.
        let stepped = decoder.decode(&[next], &mut [sequence.cache_mut()], &adapter)?;
        logits.clear();
        logits.extend_from_slice(stepped);
    }
    sequence.finish(model)
}

/// One generation as a state machine, so a scheduler can run many in one
/// batch: [`Sequence::start`] prefills the prompt, then each decode step's
/// logits go to [`Sequence::accept`], which samples, streams and says which
/// token to feed next (none when the sequence is done).
pub struct Sequence<C = KvCache> {
    params: GenerateParams,
    sampler: Sampler,
    stops: Vec<u32>,
    cache: C,
    history: Vec<u32>,
    detok: Detokenizer,
    /// Stop-string matching (boxed: most sequences have none, and the
    /// scheduler moves sequences around).
    stop_text: Box<StopText>,
    /// Where the JSON recognizer stands, when the answer is constrained.
    json: Option<Box<JsonState>>,
    out: Generation,
    decode_start: Instant,
    done: bool,
}

/// Where stop-string matching stands.
#[derive(Default)]
struct StopText {
    /// Text withheld from the stream: it may be the start of a stop string.
    held: String,
    /// Text streamed so far (the answer, when a stop string ends it).
    streamed: String,
    /// True once a stop string ended the sequence.
    stopped: bool,
}

/// What one accepted step produced.
pub struct Step {
    /// The token to stream, unless a stop token ended the sequence.
    pub event: Option<TokenEvent>,
    /// The token to run next; `None` when the sequence is finished.
    pub next: Option<u32>,
}

impl Sequence<KvCache> {
    /// Checks the prompt, prefills it on the CPU, and returns the sequence
    /// with the logits of its first generated position.
    pub fn start(model: &Model, prompt: &[u32], params: &GenerateParams) -> Result<(Sequence, Vec<f32>)> {
        Sequence::start_from(model, prompt, params, model.llama.new_cache())
    }

    /// Like [`Sequence::start`], with `cache` already holding the keys and
    /// values of the prompt's first `cache.len()` tokens (a reused prefix).
    pub fn start_from(
        model: &Model,
        prompt: &[u32],
        params: &GenerateParams,
        cache: KvCache,
    ) -> Result<(Sequence, Vec<f32>)> {
        Sequence::start_on(model, &mut CpuDecoder::new(&model.llama), prompt, params, cache)
    }
}

impl<C: DecoderCache> Sequence<C> {
    /// Checks the prompt and prefills it on `decoder` into `cache`, which
    /// may already hold the keys and values of the prompt's first
    /// `cache.len()` tokens (a reused prefix): only the rest is prefilled,
    /// so that the result is exactly that of a full prefill (at least
    /// `Llama::EXACT_PREFILL_MIN` tokens must remain). Returns the sequence
    /// with the logits of its first generated position.
    pub fn start_on<D: Decoder<Cache = C>>(
        model: &Model,
        decoder: &mut D,
        prompt: &[u32],
        params: &GenerateParams,
        mut cache: C,
    ) -> Result<(Sequence<C>, Vec<f32>)> {
        if prompt.is_empty() {
            return Err(ModelError::EmptyPrompt);
        }
        let context = model.llama.context_length();
        if prompt.len() >= context {
            return Err(ModelError::ContextOverflow { tokens: prompt.len(), context });
        }
        let sampler = Sampler::new(params.sampling.clone())?;
        if params.stop_strings.iter().any(String::is_empty) {
            return Err(ModelError::InvalidParameter("a stop string is empty".into()));
        }
        let mut stops = model.stop_tokens();
        stops.extend(&params.stop_tokens);
        let left = prompt.len().saturating_sub(cache.len());
        if !cache.is_empty() && left < crate::Llama::EXACT_PREFILL_MIN {
            return Err(ModelError::InvalidParameter(format!(
                "a reused prefix must leave {} prompt tokens, it leaves {left}",
                crate::Llama::EXACT_PREFILL_MIN
            )));
        }
        let started = Instant::now();
        let logits = decoder.prefill(&prompt[cache.len()..], &mut cache, params.adapter.as_ref())?;
        let out = Generation {
            tokens: Vec::new(),
            text: String::new(),
            finish: FinishReason::Length,
            prompt_tokens: prompt.len(),
            prefill_secs: started.elapsed().as_secs_f64(),
            decode_secs: 0.0,
            unstreamed: String::new(),
        };
        let sequence = Sequence {
            params: params.clone(),
            sampler,
            stops,
            cache,
            history: prompt.to_vec(),
            detok: Detokenizer::default(),
            stop_text: Box::default(),
            json: params.grammar.as_ref().map(|g| Box::new(g.start())),
            out,
            decode_start: Instant::now(),
            done: params.max_tokens == 0,
        };
        Ok((sequence, logits))
    }

    /// Samples from the logits of the next position and streams the token.
    pub fn accept(&mut self, model: &Model, logits: &mut [f32]) -> Result<Step> {
        if self.done {
            return Ok(Step { event: None, next: None });
        }
        let want = self.params.logprobs;
        let top = if want > 0 { top_logprobs(logits, want) } else { Vec::new() };
        let raw = if want > 0 { logits.to_vec() } else { Vec::new() };
        if let (Some(grammar), Some(state)) = (&self.params.grammar, &self.json) {
            mask_to_grammar(model, grammar, state, &self.stops, logits);
        }
        let id = self.sampler.sample(logits, &self.history);
        if let (Some(grammar), Some(state)) = (&self.params.grammar, &mut self.json) {
            if !self.stops.contains(&id) {
                state.feed(grammar, &model.tokenizer.token_texts()[id as usize]);
            }
        }
        if self.stops.contains(&id) {
            self.out.finish = FinishReason::Stop;
            self.out.unstreamed = std::mem::take(&mut self.stop_text.held);
            self.done = true;
            return Ok(Step { event: None, next: None });
        }
        self.out.tokens.push(id);
        self.history.push(id);
        let piece = self.detok.push(model, &self.out.tokens)?;
        let full = self.cache.len() + 1 >= model.llama.context_length();
        self.done = full || self.out.tokens.len() >= self.params.max_tokens;
        let piece = self.release(piece);
        self.stop_text.streamed.push_str(&piece);
        let event = token_event(model, id, piece, top, &raw, want > 0);
        Ok(Step { event: Some(event), next: (!self.done).then_some(id) })
    }

    /// The part of a new piece of text that may be streamed now: all of it
    /// without stop strings; else the text before a stop string that has
    /// appeared (which ends the sequence), or all but the longest end that
    /// could still grow into one (everything once the sequence is done).
    fn release(&mut self, piece: String) -> String {
        if self.params.stop_strings.is_empty() {
            return piece;
        }
        let held = &mut self.stop_text.held;
        held.push_str(&piece);
        let first_stop = self.params.stop_strings.iter().filter_map(|stop| held.find(stop.as_str())).min();
        if let Some(at) = first_stop {
            held.truncate(at);
            self.out.finish = FinishReason::Stop;
            self.stop_text.stopped = true;
            self.done = true;
        }
        let keep = if self.done { 0 } else { partial_stop_len(held, &self.params.stop_strings) };
        let rest = held.split_off(held.len() - keep);
        std::mem::replace(held, rest)
    }

    /// Ends the sequence early: the caller stopped listening.
    pub fn cancel(&mut self) {
        self.out.finish = FinishReason::Cancelled;
        self.done = true;
    }

    /// True once it needs no more steps.
    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The sequence's KV cache (right after `start`: the prompt's).
    pub fn cache(&self) -> &C {
        &self.cache
    }

    /// The sequence's KV cache (what the next decode step appends to).
    pub fn cache_mut(&mut self) -> &mut C {
        &mut self.cache
    }

    /// The adapter it runs with.
    pub fn adapter(&self) -> Option<&ActiveAdapter> {
        self.params.adapter.as_ref()
    }

    /// Tokens generated so far.
    pub fn generated(&self) -> usize {
        self.out.tokens.len()
    }

    /// The result, with the whole text decoded.
    pub fn finish(mut self, model: &Model) -> Result<Generation> {
        self.out.decode_secs = self.decode_start.elapsed().as_secs_f64();
        self.out.text = match self.stop_text.stopped {
            true => self.stop_text.streamed,
            false => model.tokenizer.decode(&self.out.tokens, true)?,
        };
        Ok(self.out)
    }
}

/// Sets the logit of every token the grammar does not allow next to −∞:
/// tokens whose text keeps the recognizer in its language, and the stop
/// tokens once the value is complete (then nothing else).
fn mask_to_grammar(model: &Model, grammar: &JsonGrammar, state: &JsonState, stops: &[u32], logits: &mut [f32]) {
    let texts = model.tokenizer.token_texts();
    let complete = state.is_complete();
    let mut allowed_any = false;
    for (id, logit) in logits.iter_mut().enumerate() {
        let allowed = if stops.contains(&(id as u32)) {
            complete
        } else {
            !complete && texts.get(id).is_some_and(|text| !text.is_empty() && state.clone().feed(grammar, text))
        };
        if allowed {
            allowed_any = true;
        } else {
            *logit = f32::NEG_INFINITY;
        }
    }
    if !allowed_any {
        // No token continues the value (a dead end the vocabulary cannot
        // leave): end rather than sample from nothing.
        for &stop in stops {
            if let Some(logit) = logits.get_mut(stop as usize) {
                *logit = 0.0;
            }
        }
    }
}

/// Length in bytes of the longest end of `text` that is the start (not the
/// whole) of one of `stops`: text that must wait for the next token.
fn partial_stop_len(text: &str, stops: &[String]) -> usize {
    stops
        .iter()
        .flat_map(|stop| {
            let longest = (stop.len() - 1).min(text.len());
            (1..=longest).rev().find(|&n| {
                text.is_char_boundary(text.len() - n) && stop.as_bytes().starts_with(&text.as_bytes()[text.len() - n..])
            })
        })
        .max()
        .unwrap_or(0)
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
        token: if want_logprob { name(id) } else { String::new() },
        top_logprobs: top.into_iter().map(|(t, l)| (t, name(t), l)).collect(),
        logprob,
    }
}

fn log_softmax_at(logits: &[f32], index: usize) -> f32 {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let log_sum = logits.iter().map(|l| ((l - max) as f64).exp()).sum::<f64>().ln() as f32 + max;
    logits[index] - log_sum
}
