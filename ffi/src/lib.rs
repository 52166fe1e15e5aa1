//! libtailor: the C API of `include/tailor.h`, a client of a running
//! tailord. The header is written by hand; `tests/header.rs` checks that
//! it declares exactly what this file exports (via cbindgen).
//!
//! Layout: `http` speaks HTTP/1.1 over a Unix socket or TCP, `client` is
//! the API as Rust calls, and this file converts C arguments and results
//! around those calls. Every exported function catches panics and reports
//! failures as a `tailor_status` plus a per-thread message.
//!
//! Names here are the C names, so the header and the code read alike.
#![allow(non_camel_case_types)]

pub mod client;
pub mod error;
pub mod http;

use client::{Answer, Client, Route, Source};
use error::{last_error_ptr, set_last_error, FfiError, Result};
use serde_json::{json, Value};
use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::panic::AssertUnwindSafe;
use std::sync::OnceLock;
use std::time::Duration;

/// `TAILOR_API_VERSION`: major * 10000 + minor * 100 + patch.
pub const TAILOR_API_VERSION: u32 = 10000;

/// Outcome of every call (`tailor_status` in the header).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum tailor_status {
    /// Success.
    TAILOR_OK = 0,
    /// NULL where a value is needed, bad struct_size, not UTF-8.
    TAILOR_ERR_INVALID_ARGUMENT = 1,
    /// tailord is not reachable.
    TAILOR_ERR_CONNECT = 2,
    /// Missing or wrong bearer token.
    TAILOR_ERR_UNAUTHORIZED = 3,
    /// Unknown model, stage or route.
    TAILOR_ERR_NOT_FOUND = 4,
    /// The daemon refused the request.
    TAILOR_ERR_BAD_REQUEST = 5,
    /// The request body is over the daemon's limit.
    TAILOR_ERR_TOO_LARGE = 6,
    /// The daemon is busy or a stage is not ready.
    TAILOR_ERR_UNAVAILABLE = 7,
    /// A stage failed inside the daemon.
    TAILOR_ERR_SERVER = 8,
    /// The reply broke the API's promises.
    TAILOR_ERR_PROTOCOL = 9,
    /// The connection broke or timed out.
    TAILOR_ERR_IO = 10,
    /// A callback asked to stop.
    TAILOR_ERR_CANCELLED = 11,
    /// A contained bug in libtailor.
    TAILOR_ERR_INTERNAL = 12,
}

const STATUS_NAMES: [&CStr; 13] = [
    c"TAILOR_OK",
    c"TAILOR_ERR_INVALID_ARGUMENT",
    c"TAILOR_ERR_CONNECT",
    c"TAILOR_ERR_UNAUTHORIZED",
    c"TAILOR_ERR_NOT_FOUND",
    c"TAILOR_ERR_BAD_REQUEST",
    c"TAILOR_ERR_TOO_LARGE",
    c"TAILOR_ERR_UNAVAILABLE",
    c"TAILOR_ERR_SERVER",
    c"TAILOR_ERR_PROTOCOL",
    c"TAILOR_ERR_IO",
    c"TAILOR_ERR_CANCELLED",
    c"TAILOR_ERR_INTERNAL",
];

/// Runs `body`, turning an error or a panic into a status and this thread's last error.
fn guard(body: impl FnOnce() -> Result<()>) -> tailor_status {
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(body)).unwrap_or_else(|payload| {
        let message = payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic".to_string());
        Err(FfiError::Internal(message))
    });
    match outcome {
        Ok(()) => tailor_status::TAILOR_OK,
        Err(error) => {
            set_last_error(&error);
            error.status()
        }
    }
}

/// A required string argument.
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives the call.
unsafe fn required_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    // SAFETY: the caller's contract above.
    unsafe { optional_str(ptr, what) }?.ok_or_else(|| FfiError::InvalidArgument(format!("{what} is NULL")))
}

/// An optional string argument (NULL is `None`).
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives the call.
unsafe fn optional_str<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>> {
    if ptr.is_null() {
        return Ok(None);
    }
    // SAFETY: non-NULL, and NUL-terminated by the caller's contract.
    let text = unsafe { CStr::from_ptr(ptr) };
    text.to_str().map(Some).map_err(|_| FfiError::InvalidArgument(format!("{what} is not UTF-8")))
}

/// A slice argument; NULL is allowed only when `len` is 0.
///
/// # Safety
/// `ptr` is NULL or points to `len` initialized values that outlive the call.
unsafe fn slice_arg<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T]> {
    if len == 0 {
        return Ok(&[]);
    }
    if ptr.is_null() {
        return Err(FfiError::InvalidArgument(format!("{what} is NULL but its count is {len}")));
    }
    // SAFETY: non-NULL with `len` values, by the caller's contract.
    Ok(unsafe { std::slice::from_raw_parts(ptr, len) })
}

/// Params structs start with `struct_size`.
///
/// # Safety
/// Implementors are `#[repr(C)]` with a `size_t struct_size` first field.
unsafe trait Params: Copy {
    fn defaults() -> Self;
}

/// Reads a params struct that may come from an older header: the bytes
/// the caller has (`struct_size`) over the defaults. Fields are only ever
/// appended, each new one starting at or after the old struct's size, so a
/// shorter struct is a prefix of this one.
///
/// # Safety
/// `ptr` is NULL or points to at least `struct_size` readable bytes, its
/// first field being that `size_t`.
unsafe fn read_params<T: Params>(ptr: *const T, what: &str) -> Result<T> {
    if ptr.is_null() {
        return Err(FfiError::InvalidArgument(format!("{what} is NULL")));
    }
    // SAFETY: a non-NULL params pointer starts with a size_t (contract above).
    let size = unsafe { std::ptr::read_unaligned(ptr.cast::<usize>()) };
    let full = std::mem::size_of::<T>();
    if size < std::mem::size_of::<usize>() || size > full {
        let hint = if size > full { " (a newer tailor.h than this library)" } else { "" };
        return Err(FfiError::InvalidArgument(format!(
            "{what}->struct_size is {size}, this library takes {}..={full}{hint}; start from the default params",
            std::mem::size_of::<usize>()
        )));
    }
    let mut params = T::defaults();
    // SAFETY: `size` bytes are readable at `ptr` (contract) and fit in `params`
    // (size <= full); T is plain old data, and the prefix of a valid older
    // struct is a valid prefix of T.
    unsafe { std::ptr::copy_nonoverlapping(ptr.cast::<u8>(), (&mut params as *mut T).cast::<u8>(), size) };
    Ok(params)
}

/// The slot behind an out-pointer, checked for NULL and set to NULL.
///
/// # Safety
/// `out` is NULL or writable for the duration of the call.
unsafe fn out_handle<'a, T>(out: *mut *mut T, what: &str) -> Result<&'a mut *mut T> {
    // SAFETY: non-NULL out-pointers are writable (contract above).
    let slot = unsafe { out.as_mut() }.ok_or_else(|| FfiError::InvalidArgument(format!("{what} is NULL")))?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).unwrap_or_default()
}

// ---- status and version -------------------------------------------------

/// A static name for a status value.
#[no_mangle]
pub extern "C" fn tailor_status_name(status: c_int) -> *const c_char {
    let name = usize::try_from(status).ok().and_then(|i| STATUS_NAMES.get(i)).copied();
    name.unwrap_or(c"TAILOR_ERR_UNKNOWN").as_ptr()
}

/// This thread's last error message.
#[no_mangle]
pub extern "C" fn tailor_last_error() -> *const c_char {
    last_error_ptr()
}

/// The library's version.
#[no_mangle]
pub extern "C" fn tailor_version() -> *const c_char {
    static VERSION: &CStr = {
        match CStr::from_bytes_with_nul(concat!(env!("CARGO_PKG_VERSION"), "\0").as_bytes()) {
            Ok(v) => v,
            Err(_) => c"unknown",
        }
    };
    VERSION.as_ptr()
}

/// `TAILOR_API_VERSION` of the header the library was built with.
#[no_mangle]
pub extern "C" fn tailor_api_version() -> u32 {
    TAILOR_API_VERSION
}

// ---- client -------------------------------------------------------------

/// An open client: settings for reaching one daemon.
pub struct tailor_client {
    client: Client,
}

/// How to reach the daemon.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_client_params {
    /// `sizeof` the struct the caller filled.
    pub struct_size: usize,
    /// The Unix socket.
    pub socket_path: *const c_char,
    /// "host:port" instead of the socket.
    pub address: *const c_char,
    /// Bearer token.
    pub token: *const c_char,
    /// Per-call wait limit in ms; 0 waits forever.
    pub timeout_ms: u32,
}

/// A C string from an environment variable, kept for the process's life.
fn env_c_string(slot: &'static OnceLock<Option<CString>>, name: &str) -> Option<&'static CStr> {
    slot.get_or_init(|| std::env::var(name).ok().filter(|v| !v.is_empty()).map(|v| c_string(&v))).as_deref()
}

// SAFETY: repr(C), struct_size first.
unsafe impl Params for tailor_client_params {
    fn defaults() -> Self {
        static SOCKET: OnceLock<Option<CString>> = OnceLock::new();
        static TOKEN: OnceLock<Option<CString>> = OnceLock::new();
        let socket = env_c_string(&SOCKET, "TAILOR_SOCKET").unwrap_or(c"/run/tailor/tailord.sock");
        tailor_client_params {
            struct_size: std::mem::size_of::<Self>(),
            socket_path: socket.as_ptr(),
            address: std::ptr::null(),
            token: env_c_string(&TOKEN, "TAILOR_TOKEN").map_or(std::ptr::null(), CStr::as_ptr),
            timeout_ms: 300_000,
        }
    }
}

/// Default client params.
#[no_mangle]
pub extern "C" fn tailor_client_default_params() -> tailor_client_params {
    tailor_client_params::defaults()
}

/// Opens a client after checking that the daemon answers.
///
/// # Safety
/// `params` and `out_client` follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_client_open(
    params: *const tailor_client_params,
    out_client: *mut *mut tailor_client,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_client, "out_client") }?;
        // SAFETY: tailor.h's contract for params.
        let params = unsafe { read_params(params, "params") }?;
        // SAFETY: the strings in params follow tailor.h's contract.
        let (socket, address, token) = unsafe {
            (
                optional_str(params.socket_path, "socket_path")?,
                optional_str(params.address, "address")?,
                optional_str(params.token, "token")?,
            )
        };
        let endpoint = match (address, socket) {
            (Some(address), _) => http::Endpoint::Tcp(address.to_string()),
            (None, Some(socket)) => http::Endpoint::Unix(socket.into()),
            (None, None) => return Err(FfiError::InvalidArgument("neither socket_path nor address is set".into())),
        };
        let timeout = (params.timeout_ms > 0).then(|| Duration::from_millis(params.timeout_ms.into()));
        let client = Client::open(endpoint, token.map(str::to_string), timeout)?;
        *slot = Box::into_raw(Box::new(tailor_client { client }));
        Ok(())
    })
}

/// Frees a client (NULL is fine).
///
/// # Safety
/// `client` is NULL or from tailor_client_open, not yet closed.
#[no_mangle]
pub unsafe extern "C" fn tailor_client_close(client: *mut tailor_client) {
    if !client.is_null() {
        // SAFETY: made by Box::into_raw in tailor_client_open, freed once.
        drop(unsafe { Box::from_raw(client) });
    }
}

/// The client behind a handle.
///
/// # Safety
/// `client` is NULL or a live handle.
unsafe fn client_ref<'a>(client: *mut tailor_client) -> Result<&'a Client> {
    // SAFETY: the caller's contract.
    unsafe { client.as_ref() }.map(|c| &c.client).ok_or_else(|| FfiError::InvalidArgument("client is NULL".into()))
}

// ---- models -------------------------------------------------------------

/// The daemon's stages, by name and kind.
pub struct tailor_models {
    entries: Vec<(CString, CString)>,
}

/// Lists the daemon's models.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_models_list(
    client: *mut tailor_client,
    out_models: *mut *mut tailor_models,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_models, "out_models") }?;
        // SAFETY: tailor.h's contract.
        let models = unsafe { client_ref(client) }?.models()?;
        let entries = models.iter().map(|(id, kind)| (c_string(id), c_string(kind))).collect();
        *slot = Box::into_raw(Box::new(tailor_models { entries }));
        Ok(())
    })
}

/// How many models.
///
/// # Safety
/// `models` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_models_count(models: *const tailor_models) -> usize {
    // SAFETY: the caller's contract.
    unsafe { models.as_ref() }.map_or(0, |m| m.entries.len())
}

/// A model's name.
///
/// # Safety
/// `models` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_models_id(models: *const tailor_models, index: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    let entry = unsafe { models.as_ref() }.and_then(|m| m.entries.get(index));
    entry.map_or(std::ptr::null(), |(id, _)| id.as_ptr())
}

/// A model's stage kind.
///
/// # Safety
/// `models` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_models_kind(models: *const tailor_models, index: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    let entry = unsafe { models.as_ref() }.and_then(|m| m.entries.get(index));
    entry.map_or(std::ptr::null(), |(_, kind)| kind.as_ptr())
}

/// Frees a model list (NULL is fine).
///
/// # Safety
/// `models` is NULL or from tailor_models_list, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_models_free(models: *mut tailor_models) {
    if !models.is_null() {
        // SAFETY: made by Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(models) });
    }
}

// ---- chat and completion ------------------------------------------------

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
        }
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
    items: Vec<tailor_source>,
    _strings: Vec<CString>,
}

impl tailor_sources {
    fn new(sources: &[Source]) -> tailor_sources {
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

/// A finished generation.
pub struct tailor_answer {
    text: CString,
    finish_reason: CString,
    prompt_tokens: u32,
    completion_tokens: u32,
    sources: tailor_sources,
}

impl tailor_answer {
    fn new(answer: &Answer) -> tailor_answer {
        tailor_answer {
            text: c_string(&answer.text),
            finish_reason: c_string(&answer.finish_reason),
            prompt_tokens: answer.prompt_tokens,
            completion_tokens: answer.completion_tokens,
            sources: tailor_sources::new(&answer.sources),
        }
    }
}

/// Sampling fields shared by chat and completion requests.
fn sampling_into(request: &mut Value, max_tokens: i32, temperature: f32, top_p: f32, top_k: i32, seed: i64) {
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

/// Runs a generation, streaming through the C callback when there is one.
fn run_generation(
    client: &Client,
    route: Route,
    request: Value,
    on_token: tailor_token_fn,
    user_data: *mut c_void,
) -> Result<Answer> {
    let Some(callback) = on_token else { return client.generate(route, request, None) };
    let mut forward = |piece: &str| {
        let text = c_string(piece);
        // SAFETY: the callback and user_data come from the caller's params;
        // `text` lives across the call.
        unsafe { callback(text.as_ptr(), text.as_bytes().len(), user_data) == 0 }
    };
    client.generate(route, request, Some(&mut forward))
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
        let answer = run_generation(client, Route::Chat, request, params.on_token, params.user_data)?;
        *slot = Box::into_raw(Box::new(tailor_answer::new(&answer)));
        Ok(())
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
        let answer = run_generation(client, Route::Completion, request, params.on_token, params.user_data)?;
        *slot = Box::into_raw(Box::new(tailor_answer::new(&answer)));
        Ok(())
    })
}

/// The answer's text.
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_text(answer: *const tailor_answer) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { answer.as_ref() }.map_or(std::ptr::null(), |a| a.text.as_ptr())
}

/// Why generation stopped.
///
/// # Safety
/// `answer` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_answer_finish_reason(answer: *const tailor_answer) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { answer.as_ref() }.map_or(std::ptr::null(), |a| a.finish_reason.as_ptr())
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

// ---- retrieval ----------------------------------------------------------

/// A search request.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_search_params {
    /// `sizeof` the struct the caller filled.
    pub struct_size: usize,
    /// The index.
    pub index: *const c_char,
    /// The query text.
    pub query: *const c_char,
    /// Hits; 0: 4.
    pub k: u32,
}

// SAFETY: repr(C), struct_size first.
unsafe impl Params for tailor_search_params {
    fn defaults() -> Self {
        tailor_search_params {
            struct_size: std::mem::size_of::<Self>(),
            index: std::ptr::null(),
            query: std::ptr::null(),
            k: 0,
        }
    }
}

/// Default search params.
#[no_mangle]
pub extern "C" fn tailor_search_default_params() -> tailor_search_params {
    tailor_search_params::defaults()
}

/// Searches an index.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_search(
    client: *mut tailor_client,
    params: *const tailor_search_params,
    out_sources: *mut *mut tailor_sources,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_sources, "out_sources") }?;
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, params) = unsafe { (client_ref(client)?, read_params(params, "params")?) };
        // SAFETY: as above.
        let (index, query) = unsafe { (required_str(params.index, "index")?, required_str(params.query, "query")?) };
        let hits = client.search(index, query, if params.k == 0 { 4 } else { params.k })?;
        *slot = Box::into_raw(Box::new(tailor_sources::new(&hits)));
        Ok(())
    })
}

/// How many passages.
///
/// # Safety
/// `sources` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_sources_count(sources: *const tailor_sources) -> usize {
    // SAFETY: the caller's contract.
    unsafe { sources.as_ref() }.map_or(0, |s| s.items.len())
}

/// One passage, borrowed.
///
/// # Safety
/// `sources` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_sources_get(sources: *const tailor_sources, index: usize) -> *const tailor_source {
    // SAFETY: the caller's contract.
    let item = unsafe { sources.as_ref() }.and_then(|s| s.items.get(index));
    item.map_or(std::ptr::null(), |s| s as *const tailor_source)
}

/// Frees search results (NULL is fine).
///
/// # Safety
/// `sources` is NULL or from tailor_search, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_sources_free(sources: *mut tailor_sources) {
    if !sources.is_null() {
        // SAFETY: made by Box::into_raw in tailor_search, freed once.
        drop(unsafe { Box::from_raw(sources) });
    }
}

/// Creates an index.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_index_create(
    client: *mut tailor_client,
    index: *const c_char,
    kind: *const c_char,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract.
        let (client, index, kind) =
            unsafe { (client_ref(client)?, required_str(index, "index")?, optional_str(kind, "kind")?) };
        client.index_create(index, kind.unwrap_or("flat"))
    })
}

/// A document to add.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct tailor_document {
    /// Unique in the index.
    pub id: *const c_char,
    /// The text.
    pub text: *const c_char,
}

/// Adds documents.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_index_add(
    client: *mut tailor_client,
    index: *const c_char,
    documents: *const tailor_document,
    n_documents: usize,
    out_added: *mut usize,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, index) = unsafe { (client_ref(client)?, required_str(index, "index")?) };
        // SAFETY: as above.
        let documents = unsafe { slice_arg(documents, n_documents, "documents") }?;
        let mut pairs = Vec::with_capacity(documents.len());
        for (i, d) in documents.iter().enumerate() {
            // SAFETY: as above.
            let pair = unsafe {
                (
                    required_str(d.id, &format!("documents[{i}].id"))?,
                    required_str(d.text, &format!("documents[{i}].text"))?,
                )
            };
            pairs.push(pair);
        }
        let added = client.index_add(index, &pairs)?;
        // SAFETY: NULL or writable, by the contract.
        if let Some(out) = unsafe { out_added.as_mut() } {
            *out = added;
        }
        Ok(())
    })
}

/// Deletes documents.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_index_delete(
    client: *mut tailor_client,
    index: *const c_char,
    ids: *const *const c_char,
    n_ids: usize,
    out_deleted: *mut usize,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, index) = unsafe { (client_ref(client)?, required_str(index, "index")?) };
        // SAFETY: as above.
        let ids = unsafe { slice_arg(ids, n_ids, "ids") }?;
        // SAFETY: as above.
        let ids: Vec<&str> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| unsafe { required_str(*id, &format!("ids[{i}]")) })
            .collect::<Result<_>>()?;
        let deleted = client.index_delete(index, &ids)?;
        // SAFETY: NULL or writable, by the contract.
        if let Some(out) = unsafe { out_deleted.as_mut() } {
            *out = deleted;
        }
        Ok(())
    })
}

/// Counts of an index.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_index_info(
    client: *mut tailor_client,
    index: *const c_char,
    out_documents: *mut usize,
    out_chunks: *mut usize,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract.
        let (client, index) = unsafe { (client_ref(client)?, required_str(index, "index")?) };
        let (documents, chunks) = client.index_info(index)?;
        // SAFETY: NULL or writable, by the contract.
        unsafe {
            if let Some(out) = out_documents.as_mut() {
                *out = documents;
            }
            if let Some(out) = out_chunks.as_mut() {
                *out = chunks;
            }
        }
        Ok(())
    })
}

// ---- embeddings ---------------------------------------------------------

/// Vectors, row-major.
pub struct tailor_embeddings {
    dim: usize,
    data: Vec<f32>,
}

/// Embeds texts.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_embed(
    client: *mut tailor_client,
    model: *const c_char,
    texts: *const *const c_char,
    n_texts: usize,
    out_embeddings: *mut *mut tailor_embeddings,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_embeddings, "out_embeddings") }?;
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, model) = unsafe { (client_ref(client)?, required_str(model, "model")?) };
        // SAFETY: as above.
        let texts = unsafe { slice_arg(texts, n_texts, "texts") }?;
        if texts.is_empty() {
            return Err(FfiError::InvalidArgument("no texts to embed".into()));
        }
        // SAFETY: as above.
        let texts: Vec<&str> = texts
            .iter()
            .enumerate()
            .map(|(i, t)| unsafe { required_str(*t, &format!("texts[{i}]")) })
            .collect::<Result<_>>()?;
        let vectors = client.embed(model, &texts)?;
        let dim = vectors.first().map_or(0, Vec::len);
        if vectors.iter().any(|v| v.len() != dim) {
            return Err(FfiError::Protocol("embeddings of different widths".into()));
        }
        *slot = Box::into_raw(Box::new(tailor_embeddings { dim, data: vectors.concat() }));
        Ok(())
    })
}

/// How many vectors.
///
/// # Safety
/// `embeddings` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_embeddings_count(embeddings: *const tailor_embeddings) -> usize {
    // SAFETY: the caller's contract.
    unsafe { embeddings.as_ref() }.map_or(0, |e| e.data.len().checked_div(e.dim).unwrap_or(0))
}

/// The vectors' width.
///
/// # Safety
/// `embeddings` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_embeddings_dim(embeddings: *const tailor_embeddings) -> usize {
    // SAFETY: the caller's contract.
    unsafe { embeddings.as_ref() }.map_or(0, |e| e.dim)
}

/// One vector, borrowed.
///
/// # Safety
/// `embeddings` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_embeddings_vector(embeddings: *const tailor_embeddings, index: usize) -> *const f32 {
    // SAFETY: the caller's contract.
    let Some(e) = (unsafe { embeddings.as_ref() }) else { return std::ptr::null() };
    let row = index.checked_mul(e.dim).and_then(|start| e.data.get(start..start + e.dim));
    row.filter(|r| !r.is_empty()).map_or(std::ptr::null(), <[f32]>::as_ptr)
}

/// Frees embeddings (NULL is fine).
///
/// # Safety
/// `embeddings` is NULL or from tailor_embed, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_embeddings_free(embeddings: *mut tailor_embeddings) {
    if !embeddings.is_null() {
        // SAFETY: made by Box::into_raw in tailor_embed, freed once.
        drop(unsafe { Box::from_raw(embeddings) });
    }
}
