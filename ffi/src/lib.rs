//! libtailor: the C API of `include/tailor.h`, a client of a running
//! tailord. The header is written by hand; `tests/header.rs` checks that
//! it declares exactly what this crate exports (via cbindgen).
//!
//! Layout: `http` speaks HTTP/1.1 over a Unix socket or TCP, `client` is
//! the API as Rust calls, and the C layer converts arguments and results
//! around those calls, one module per part of the header: `session` (the
//! client handle), `models`, `generation` (chat, completion, answers and
//! their sources), `retrieval` (search, indexes), `embeddings`, `adapters`; `args`
//! holds what they share. This file has the status enum and the version.
//! Every exported function catches panics and reports failures as a
//! `tailor_status` plus a per-thread message.
//!
//! Names here are the C names, so the header and the code read alike.
#![allow(non_camel_case_types)]

pub mod adapters;
mod args;
pub mod client;
pub mod embeddings;
pub mod error;
pub mod fine_tuning;
pub mod generation;
pub mod http;
pub mod models;
pub mod retrieval;
pub mod session;

use error::last_error_ptr;
use std::ffi::{c_char, c_int, CStr};

/// `TAILOR_API_VERSION`: major * 10000 + minor * 100 + patch.
pub const TAILOR_API_VERSION: u32 = 10500;

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
    /// A callback or a cancel token asked to stop.
    TAILOR_ERR_CANCELLED = 11,
    /// A contained bug in libtailor.
    TAILOR_ERR_INTERNAL = 12,
    /// API 1.3: the name is taken (an index or adapter that exists).
    TAILOR_ERR_CONFLICT = 13,
    /// API 1.4: the call's deadline (`timeout_ms`) passed.
    TAILOR_ERR_TIMEOUT = 14,
}

const STATUS_NAMES: [&CStr; 15] = [
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
    c"TAILOR_ERR_CONFLICT",
    c"TAILOR_ERR_TIMEOUT",
];

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
