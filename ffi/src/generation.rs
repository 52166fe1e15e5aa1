//! Chat and plain completion, streamed through a C callback, and the
//! answers and retrieved passages they hand back.

use crate::args::{c_string, guard, optional_str, out_handle, read_params, required_str, slice_arg, Params};
use crate::client::{Answer, Choice, Client, Route, Source, Unfinished};
use crate::error::{FfiError, Result};
use crate::session::{client_ref, tailor_client};
use crate::tailor_status;
use serde_json::{json, Value};
use std::ffi::c_int;
use std::ffi::{c_char, c_void, CString};

/// Streaming callback: return 0 to go on.
pub type tailor_token_fn =
    Option<unsafe extern "C" fn(text: *const c_char, len: usize, user_data: *mut c_void) -> c_int>;

/// A chat message.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_message {
    /// "system", "user" or "assistant".
    pub role: *const c_char,
    /// The text.
    pub content: *const c_char,
}

/// A chat request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_chat_params {
    /// `sizeof` the struct the caller filled.
    pub struct_size: usize,
    /// A generate stage's name.
    pub model: *const c_char,
    /// The conversation.
    pub messages: *const tailor_message,
    /// How many messages.
    pub n_messages: usize,
    /// <= 0: the daemon's default.
    pub max_tokens: i32,
    /// 0: greedy.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// <= 0: off.
    pub top_k: i32,
    /// < 0: none.
    pub seed: i64,
    /// Streaming callback or NULL.
    pub on_token: tailor_token_fn,
    /// Passed to the callback.
    pub user_data: *mut c_void,
    /// RAG index or NULL.
    pub index: *const c_char,
    /// Hits for RAG; 0: 4.
    pub k: u32,
    /// API 1.1: a LoRA adapter's name, or NULL for the base model.
    pub adapter: *const c_char,
    /// API 1.1: multiplier on the adapter's delta; 0: 1.
    pub adapter_scale: f32,
    /// API 1.3: the output options every generation takes.
    pub output: tailor_output_options,
    /// API 1.4: generations of the prompt; 0: 1.
    pub n: u32,
    /// API 1.4: < 0: none; 0..=20: each token's log-probability and this many alternatives.
    pub logprobs: i32,
}

// SAFETY: repr(C), struct_size first.
unsafe impl Params for tailor_chat_params {
    fn defaults() -> Self {
        tailor_chat_params {
            struct_size: std::mem::size_of::<Self>(),
            model: std::ptr::null(),
            messages: std::ptr::null(),
            n_messages: 0,
            max_tokens: 0,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: -1,
            on_token: None,
            user_data: std::ptr::null_mut(),
            index: std::ptr::null(),
            k: 0,
            adapter: std::ptr::null(),
            adapter_scale: 0.0,
            output: tailor_output_options::defaults(),
            n: 0,
            logprobs: -1,
        }
    }
}

/// API 1.3: stop strings, penalties and structured output, appended to
/// both params structs.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_output_options {
    /// Up to 4 stop strings; the answer ends before the first to appear.
    pub stop: *const *const c_char,
    /// How many.
    pub n_stop: usize,
    /// -2..2; 0: off.
    pub presence_penalty: f32,
    /// -2..2; 0: off.
    pub frequency_penalty: f32,
    /// A JSON schema (text) the answer validates against, `"object"` for
    /// any JSON object, or NULL for free text.
    pub json_schema: *const c_char,
}

impl tailor_output_options {
    fn defaults() -> Self {
        tailor_output_options {
            stop: std::ptr::null(),
            n_stop: 0,
            presence_penalty: 0.0,
            frequency_penalty: 0.0,
            json_schema: std::ptr::null(),
        }
    }

    /// Writes these options into an OpenAI request.
    ///
    /// # Safety
    /// The pointers follow tailor.h's contract (NULL, or valid for the call).
    unsafe fn write_into(&self, request: &mut Value) -> Result<()> {
        // SAFETY: the caller's contract.
        let stops = unsafe { slice_arg(self.stop, self.n_stop, "stop") }?;
        let stops = stops
            .iter()
            .enumerate()
            // SAFETY: each entry is a NUL-terminated string (contract).
            .map(|(i, &s)| unsafe { required_str(s, &format!("stop[{i}]")) })
            .collect::<Result<Vec<&str>>>()?;
        if !stops.is_empty() {
            request["stop"] = json!(stops);
        }
        if self.presence_penalty != 0.0 {
            request["presence_penalty"] = json!(self.presence_penalty);
        }
        if self.frequency_penalty != 0.0 {
            request["frequency_penalty"] = json!(self.frequency_penalty);
        }
        // SAFETY: the caller's contract.
        match unsafe { optional_str(self.json_schema, "json_schema") }? {
            None => {}
            Some("object") => request["response_format"] = json!({"type": "json_object"}),
            Some(text) => {
                let schema: Value = serde_json::from_str(text)
                    .map_err(|e| FfiError::InvalidArgument(format!("json_schema is not JSON: {e}")))?;
                request["response_format"] =
                    json!({"type": "json_schema", "json_schema": {"name": "answer", "schema": schema}});
            }
        }
        Ok(())
    }
}

/// Default chat params.
#[no_mangle]
pub extern "C" fn tailor_chat_default_params() -> tailor_chat_params {
    tailor_chat_params::defaults()
}

/// A completion request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_generate_params {
    /// `sizeof` the struct the caller filled.
    pub struct_size: usize,
    /// A generate stage's name.
    pub model: *const c_char,
    /// The prompt, sent as is.
    pub prompt: *const c_char,
    /// <= 0: the daemon's default.
    pub max_tokens: i32,
    /// 0: greedy.
    pub temperature: f32,
    /// Nucleus sampling mass.
    pub top_p: f32,
    /// <= 0: off.
    pub top_k: i32,
    /// < 0: none.
    pub seed: i64,
    /// Streaming callback or NULL.
    pub on_token: tailor_token_fn,
    /// Passed to the callback.
    pub user_data: *mut c_void,
    /// API 1.1: a LoRA adapter's name, or NULL for the base model.
    pub adapter: *const c_char,
    /// API 1.1: multiplier on the adapter's delta; 0: 1.
    pub adapter_scale: f32,
    /// API 1.3: the output options every generation takes.
    pub output: tailor_output_options,
    /// API 1.4: as in [`tailor_chat_params`].
    pub n: u32,
    /// API 1.4: as in [`tailor_chat_params`].
    pub logprobs: i32,
}

// SAFETY: repr(C), struct_size first.
unsafe impl Params for tailor_generate_params {
    fn defaults() -> Self {
        tailor_generate_params {
            struct_size: std::mem::size_of::<Self>(),
            model: std::ptr::null(),
            prompt: std::ptr::null(),
            max_tokens: 0,
            temperature: 0.0,
            top_p: 1.0,
            top_k: 0,
            seed: -1,
            on_token: None,
            user_data: std::ptr::null_mut(),
            adapter: std::ptr::null(),
            adapter_scale: 0.0,
            output: tailor_output_options::defaults(),
            n: 0,
            logprobs: -1,
        }
    }
}

/// Default completion params.
#[no_mangle]
pub extern "C" fn tailor_generate_default_params() -> tailor_generate_params {
    tailor_generate_params::defaults()
}

/// One retrieved passage, as C reads it.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_source {
    /// 1-based citation number.
    pub number: u32,
    /// Cosine similarity.
    pub score: f32,
    /// Document id.
    pub doc_id: *const c_char,
    /// Where the document came from.
    pub source: *const c_char,
    /// The passage.
    pub text: *const c_char,
    /// Byte span start.
    pub span_start: usize,
    /// Byte span end.
    pub span_end: usize,
}

/// A list of passages; owns the strings its entries point to.
pub struct tailor_sources {
    pub(crate) items: Vec<tailor_source>,
    _strings: Vec<CString>,
}

impl tailor_sources {
    pub(crate) fn new(sources: &[Source]) -> tailor_sources {
        let mut strings = Vec::with_capacity(sources.len() * 3);
        let mut keep = |text: &str| {
            let owned = c_string(text);
            // The CString's heap buffer does not move when `strings` grows.
            let ptr = owned.as_ptr();
            strings.push(owned);
            ptr
        };
        let items = sources
            .iter()
            .map(|s| tailor_source {
                number: s.number,
                score: s.score,
                doc_id: keep(&s.doc_id),
                source: keep(&s.source),
                text: keep(&s.text),
                span_start: s.span.0,
                span_end: s.span.1,
            })
            .collect();
        tailor_sources { items, _strings: strings }
    }
}

/// An alternative token (API 1.4).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_top_logprob {
    /// Its text.
    pub token: *const c_char,
    /// Its natural log-probability.
    pub logprob: f64,
}

/// A generated token's log-probability (API 1.4).
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_token_logprob {
    /// Its text.
    pub token: *const c_char,
    /// Its natural log-probability.
    pub logprob: f64,
    /// How many alternatives `top` holds.
    pub n_top: usize,
    /// The most likely alternatives, most likely first.
    pub top: *const tailor_top_logprob,
}

/// One choice of an answer; owns the strings and arrays its entries point to.
struct AnswerChoice {
    text: CString,
    finish_reason: CString,
    logprobs: Vec<tailor_token_logprob>,
    _tops: Vec<Vec<tailor_top_logprob>>,
    _strings: Vec<CString>,
}

impl AnswerChoice {
    fn new(choice: &Choice) -> AnswerChoice {
        let mut strings = Vec::new();
        let mut keep = |text: &str| {
            let owned = c_string(text);
            // The CString's heap buffer does not move when `strings` grows.
            let ptr = owned.as_ptr();
            strings.push(owned);
            ptr
        };
        let tops: Vec<Vec<tailor_top_logprob>> = choice
            .logprobs
            .iter()
            .map(|t| t.top.iter().map(|a| tailor_top_logprob { token: keep(&a.token), logprob: a.logprob }).collect())
            .collect();
        let logprobs = choice
            .logprobs
            .iter()
            .zip(&tops)
            // Each inner Vec's buffer stays put when `tops` moves into the struct.
            .map(|(t, top)| tailor_token_logprob {
                token: keep(&t.token),
                logprob: t.logprob,
                n_top: top.len(),
                top: if top.is_empty() { std::ptr::null() } else { top.as_ptr() },
            })
            .collect();
        AnswerChoice {
            text: c_string(&choice.text),
            finish_reason: c_string(&choice.finish_reason),
            logprobs,
            _tops: tops,
            _strings: strings,
        }
    }
}

/// A finished (or, with a 1.4 params struct, a cut-short) generation.
pub struct tailor_answer {
    choices: Vec<AnswerChoice>,
    prompt_tokens: u32,
    completion_tokens: u32,
    sources: tailor_sources,
}

impl tailor_answer {
    fn new(answer: &Answer) -> tailor_answer {
        tailor_answer {
            choices: answer.choices.iter().map(AnswerChoice::new).collect(),
            prompt_tokens: answer.prompt_tokens,
            completion_tokens: answer.completion_tokens,
            sources: tailor_sources::new(&answer.sources),
        }
    }

    /// Choice `index` of a live answer (NULL or past the end: none).
    ///
    /// # Safety
    /// `answer` is NULL or live.
    unsafe fn choice<'a>(answer: *const tailor_answer, index: usize) -> Option<&'a AnswerChoice> {
        // SAFETY: the caller's contract.
        unsafe { answer.as_ref() }.and_then(|a| a.choices.get(index))
    }
}

/// Sampling fields shared by chat and completion requests.
pub(crate) fn sampling_into(request: &mut Value, max_tokens: i32, temperature: f32, top_p: f32, top_k: i32, seed: i64) {
    if max_tokens > 0 {
        request["max_tokens"] = json!(max_tokens);
    }
    request["temperature"] = json!(temperature);
    request["top_p"] = json!(top_p);
    if top_k > 0 {
        request["top_k"] = json!(top_k);
    }
    if seed >= 0 {
        request["seed"] = json!(seed);
    }
}

/// The adapter fields of a request (`tailor.adapter`, `tailor.adapter_scale`).
///
/// # Safety
/// `adapter` is NULL or a NUL-terminated string.
unsafe fn adapter_into(request: &mut Value, adapter: *const c_char, scale: f32) -> Result<()> {
    // SAFETY: the caller's contract.
    if let Some(name) = unsafe { optional_str(adapter, "adapter") }? {
        request["tailor"]["adapter"] = json!(name);
        if scale != 0.0 {
            request["tailor"]["adapter_scale"] = json!(scale);
        }
    }
    Ok(())
}

/// The API 1.4 fields of either params struct (`n`, `logprobs`) in `route`'s request shape.
fn choices_into(request: &mut Value, route: Route, n: u32, logprobs: i32) {
    if n > 0 {
        request["n"] = json!(n);
    }
    if logprobs >= 0 {
        match route {
            Route::Chat => {
                request["logprobs"] = json!(true);
                request["top_logprobs"] = json!(logprobs);
            }
            Route::Completion => request["logprobs"] = json!(logprobs),
        }
    }
}

/// Runs a generation, streaming through the C callback when there is one.
pub(crate) fn run_generation(
    client: &Client,
    route: Route,
    request: Value,
    on_token: tailor_token_fn,
    user_data: *mut c_void,
) -> std::result::Result<Answer, Unfinished> {
    let Some(callback) = on_token else { return client.generate(route, request, None) };
    let mut forward = |piece: &str| {
        let text = c_string(piece);
        // SAFETY: the callback and user_data come from the caller's params;
        // `text` lives across the call.
        unsafe { callback(text.as_ptr(), text.as_bytes().len(), user_data) == 0 }
    };
    client.generate(route, request, Some(&mut forward))
}

/// Hands the answer out through `slot`. A generation cut short (by the
/// callback, a cancel token, the deadline, a broken stream) still fails,
/// but hands out what had arrived when the caller's params struct is from
/// API 1.4 on: older callers do not free an answer after a failure.
fn hand_out(
    slot: &mut *mut tailor_answer,
    outcome: std::result::Result<Answer, Unfinished>,
    keeps_partial: bool,
) -> Result<()> {
    match outcome {
        Ok(answer) => {
            *slot = Box::into_raw(Box::new(tailor_answer::new(&answer)));
            Ok(())
        }
        Err(Unfinished { error, partial }) => {
            if let Some(partial) = partial.filter(|_| keeps_partial) {
                *slot = Box::into_raw(Box::new(tailor_answer::new(&partial)));
            }
            Err(error)
        }
    }
}

/// A chat answer.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_chat(
    client: *mut tailor_client,
    params: *const tailor_chat_params,
    out_answer: *mut *mut tailor_answer,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_answer, "out_answer") }?;
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, params) = unsafe { (client_ref(client)?, read_params(params, "params")?) };
        // SAFETY: as above.
        let messages = unsafe { slice_arg(params.messages, params.n_messages, "messages") }?;
        let mut list = Vec::with_capacity(messages.len());
        for (i, m) in messages.iter().enumerate() {
            // SAFETY: as above.
            let (role, content) = unsafe {
                (
                    required_str(m.role, &format!("messages[{i}].role"))?,
                    required_str(m.content, &format!("messages[{i}].content"))?,
                )
            };
            list.push(json!({"role": role, "content": content}));
        }
        // SAFETY: as above.
        let (model, index) = unsafe { (required_str(params.model, "model")?, optional_str(params.index, "index")?) };
        let mut request = json!({"model": model, "messages": list});
        sampling_into(&mut request, params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed);
        if let Some(index) = index {
            request["tailor"] = json!({"index": index, "k": if params.k == 0 { 4 } else { params.k }});
        }
        // SAFETY: as above.
        unsafe { adapter_into(&mut request, params.adapter, params.adapter_scale) }?;
        // SAFETY: as above.
        unsafe { params.output.write_into(&mut request) }?;
        choices_into(&mut request, Route::Chat, params.n, params.logprobs);
        let outcome = run_generation(client, Route::Chat, request, params.on_token, params.user_data);
        let keeps_partial = params.struct_size >= std::mem::offset_of!(tailor_chat_params, logprobs) + 4;
        hand_out(slot, outcome, keeps_partial)
    })
}

/// A plain completion.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_generate(
    client: *mut tailor_client,
    params: *const tailor_generate_params,
    out_answer: *mut *mut tailor_answer,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_answer, "out_answer") }?;
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, params) = unsafe { (client_ref(client)?, read_params(params, "params")?) };
        // SAFETY: as above.
        let (model, prompt) = unsafe { (required_str(params.model, "model")?, required_str(params.prompt, "prompt")?) };
        let mut request = json!({"model": model, "prompt": prompt});
        sampling_into(&mut request, params.max_tokens, params.temperature, params.top_p, params.top_k, params.seed);
        // SAFETY: tailor.h's contract.
        unsafe { adapter_into(&mut request, params.adapter, params.adapter_scale) }?;
        // SAFETY: as above.
        unsafe { params.output.write_into(&mut request) }?;
        choices_into(&mut request, Route::Completion, params.n, params.logprobs);
        let outcome = run_generation(client, Route::Completion, request, params.on_token, params.user_data);
        let keeps_partial = params.struct_size >= std::mem::offset_of!(tailor_generate_params, logprobs) + 4;
        hand_out(slot, outcome, keeps_partial)
    })
}

/// The answer's text (its first choice's).
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_text(answer: *const tailor_answer) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { tailor_answer_choice_text(answer, 0) }
}

/// Why generation stopped (the first choice).
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_finish_reason(answer: *const tailor_answer) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { tailor_answer_choice_finish_reason(answer, 0) }
}

/// API 1.4: how many choices (the request's `n`).
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_choices_count(answer: *const tailor_answer) -> usize {
    // SAFETY: the caller's contract.
    unsafe { answer.as_ref() }.map_or(0, |a| a.choices.len())
}

/// API 1.4: a choice's text; NULL past the end.
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_choice_text(answer: *const tailor_answer, choice: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { tailor_answer::choice(answer, choice) }.map_or(std::ptr::null(), |c| c.text.as_ptr())
}

/// API 1.4: why a choice stopped; NULL past the end.
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_choice_finish_reason(
    answer: *const tailor_answer,
    choice: usize,
) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { tailor_answer::choice(answer, choice) }.map_or(std::ptr::null(), |c| c.finish_reason.as_ptr())
}

/// API 1.4: how many tokens of a choice carry log-probabilities (0 when
/// none were asked for).
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_logprobs_count(answer: *const tailor_answer, choice: usize) -> usize {
    // SAFETY: the caller's contract.
    unsafe { tailor_answer::choice(answer, choice) }.map_or(0, |c| c.logprobs.len())
}

/// API 1.4: the log-probability of a choice's token `index`, borrowed from
/// the answer; NULL past the end.
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_logprob(
    answer: *const tailor_answer,
    choice: usize,
    index: usize,
) -> *const tailor_token_logprob {
    // SAFETY: the caller's contract.
    let entry = unsafe { tailor_answer::choice(answer, choice) }.and_then(|c| c.logprobs.get(index));
    entry.map_or(std::ptr::null(), |e| e as *const tailor_token_logprob)
}

/// Prompt tokens.
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_prompt_tokens(answer: *const tailor_answer) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { answer.as_ref() }.map_or(0, |a| a.prompt_tokens)
}

/// Generated tokens.
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_completion_tokens(answer: *const tailor_answer) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { answer.as_ref() }.map_or(0, |a| a.completion_tokens)
}

/// The answer's RAG sources, borrowed.
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_sources(answer: *const tailor_answer) -> *const tailor_sources {
    // SAFETY: the caller's contract.
    unsafe { answer.as_ref() }.map_or(std::ptr::null(), |a| &a.sources as *const tailor_sources)
}

/// Frees an answer (NULL is fine).
///
/// # Safety
/// `answer` is NULL or from tailor_chat / tailor_generate, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_free(answer: *mut tailor_answer) {
    if !answer.is_null() {
        // SAFETY: made by Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(answer) });
    }
}
