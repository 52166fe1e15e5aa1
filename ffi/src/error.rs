//! The crate's one error type, its mapping onto `tailor_status`, and the
//! per-thread "last error" message C callers read with `tailor_last_error`.

use std::cell::RefCell;
use std::ffi::{c_char, CString};

/// Everything a libtailor call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum FfiError {
    /// The caller passed something unusable.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// tailord is not reachable.
    #[error("{0}")]
    Connect(String),
    /// The daemon answered with an error status.
    #[error("tailord answered {status}: {message}")]
    Daemon {
        /// HTTP status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The reply broke the API's promises.
    #[error("unexpected reply from tailord: {0}")]
    Protocol(String),
    /// The connection failed mid-call.
    #[error("{context}: {source}")]
    Io {
        /// What was being done.
        context: &'static str,
        /// The I/O error.
        source: std::io::Error,
    },
    /// A callback, or another thread through a cancel token, asked to stop.
    #[error("{0}")]
    Cancelled(&'static str),
    /// The call's deadline passed.
    #[error("{0}")]
    Timeout(String),
    /// The daemon reported a failure inside a stream.
    #[error("tailord failed mid-stream: {0}")]
    Stream(String),
    /// A panic inside libtailor, contained at the C boundary.
    #[error("internal error in libtailor: {0}")]
    Internal(String),
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, FfiError>;

impl FfiError {
    /// Wraps an I/O error with what was being done; a call cut short by
    /// its limits (see [`crate::http::Limits`]) is a cancellation or a timeout.
    pub fn io(context: &'static str) -> impl FnOnce(std::io::Error) -> FfiError {
        move |source| match source.get_ref().and_then(|e| e.downcast_ref::<crate::http::Cut>()) {
            Some(crate::http::Cut::Cancelled) => FfiError::Cancelled("cancelled by tailor_cancel_trigger"),
            Some(crate::http::Cut::DeadlinePassed) => {
                FfiError::Timeout(format!("the call's deadline (timeout_ms) passed while {context}"))
            }
            None => FfiError::Io { context, source },
        }
    }

    /// The `tailor_status` value C callers get.
    pub fn status(&self) -> crate::tailor_status {
        use crate::tailor_status::*;
        match self {
            FfiError::InvalidArgument(_) => TAILOR_ERR_INVALID_ARGUMENT,
            FfiError::Connect(_) => TAILOR_ERR_CONNECT,
            FfiError::Daemon { status: 401, .. } => TAILOR_ERR_UNAUTHORIZED,
            FfiError::Daemon { status: 404, .. } => TAILOR_ERR_NOT_FOUND,
            FfiError::Daemon { status: 409, .. } => TAILOR_ERR_CONFLICT,
            FfiError::Daemon { status: 413, .. } => TAILOR_ERR_TOO_LARGE,
            FfiError::Daemon { status: 503, .. } => TAILOR_ERR_UNAVAILABLE,
            FfiError::Daemon { status: 400..=499, .. } => TAILOR_ERR_BAD_REQUEST,
            FfiError::Daemon { .. } | FfiError::Stream(_) => TAILOR_ERR_SERVER,
            FfiError::Protocol(_) => TAILOR_ERR_PROTOCOL,
            FfiError::Io { .. } => TAILOR_ERR_IO,
            FfiError::Cancelled(_) => TAILOR_ERR_CANCELLED,
            FfiError::Timeout(_) => TAILOR_ERR_TIMEOUT,
            FfiError::Internal(_) => TAILOR_ERR_INTERNAL,
        }
    }
}

thread_local! {
    static LAST_ERROR: RefCell<CString> = RefCell::new(CString::default());
}

/// Records `error` as this thread's last error.
pub fn set_last_error(error: &FfiError) {
    let text = CString::new(error.to_string().replace('\0', " ")).unwrap_or_default();
    LAST_ERROR.with(|last| *last.borrow_mut() = text);
}

/// This thread's last error message; valid until the next failure on this thread.
pub fn last_error_ptr() -> *const c_char {
    LAST_ERROR.with(|last| last.borrow().as_ptr())
}
