//! The client handle: settings for reaching one daemon, checked at open;
//! derived handles with their own deadline and a cancel token.

use crate::args::{c_string, guard, optional_str, out_handle, read_params, Params};
use crate::client::Client;
use crate::error::{FfiError, Result};
use crate::http;
use crate::tailor_status;
use std::ffi::{c_char, CStr, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

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
pub(crate) fn env_c_string(slot: &'static OnceLock<Option<CString>>, name: &str) -> Option<&'static CStr> {
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

/// A flag that stops calls from another thread (API 1.4).
pub struct tailor_cancel {
    flag: Arc<AtomicBool>,
}

/// A new, unraised cancel token.
#[no_mangle]
pub extern "C" fn tailor_cancel_new() -> *mut tailor_cancel {
    Box::into_raw(Box::new(tailor_cancel { flag: Arc::new(AtomicBool::new(false)) }))
}

/// Raises the token: every call on a client derived with it ends with
/// TAILOR_ERR_CANCELLED within about 50 ms, and later ones at once.
///
/// # Safety
/// `cancel` is NULL or live; any thread may call this.
#[no_mangle]
pub unsafe extern "C" fn tailor_cancel_trigger(cancel: *const tailor_cancel) {
    // SAFETY: the caller's contract.
    if let Some(cancel) = unsafe { cancel.as_ref() } {
        cancel.flag.store(true, Ordering::Release);
    }
}

/// Frees a token (NULL is fine); clients derived with it keep their share.
///
/// # Safety
/// `cancel` is NULL or from tailor_cancel_new, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_cancel_free(cancel: *mut tailor_cancel) {
    if !cancel.is_null() {
        // SAFETY: made by Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(cancel) });
    }
}

/// A client with `client`'s settings whose calls each end within
/// `timeout_ms` (0: `client`'s bound) and stop once `cancel` (NULL: none)
/// is raised. Sends nothing.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_client_derive(
    client: *mut tailor_client,
    timeout_ms: u32,
    cancel: *const tailor_cancel,
    out_client: *mut *mut tailor_client,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_client, "out_client") }?;
        // SAFETY: tailor.h's contract.
        let (client, cancel) = unsafe { (client_ref(client)?, cancel.as_ref()) };
        let timeout = (timeout_ms > 0).then(|| Duration::from_millis(timeout_ms.into()));
        let client = client.with_limits(timeout, cancel.map(|c| c.flag.clone()));
        *slot = Box::into_raw(Box::new(tailor_client { client }));
        Ok(())
    })
}

/// The client behind a handle.
///
/// # Safety
/// `client` is NULL or a live handle.
pub(crate) unsafe fn client_ref<'a>(client: *mut tailor_client) -> Result<&'a Client> {
    // SAFETY: the caller's contract.
    unsafe { client.as_ref() }.map(|c| &c.client).ok_or_else(|| FfiError::InvalidArgument("client is NULL".into()))
}
