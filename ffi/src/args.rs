//! Argument handling shared by every exported function: panics and errors
//! turned into a status, C strings and slices checked, params structs read
//! over their defaults, out-pointers checked.

use crate::error::{set_last_error, FfiError, Result};
use crate::tailor_status;
use std::ffi::{c_char, CStr, CString};
use std::panic::AssertUnwindSafe;

/// Runs `body`, turning an error or a panic into a status and this thread's last error.
pub(crate) fn guard(body: impl FnOnce() -> Result<()>) -> tailor_status {
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
pub(crate) unsafe fn required_str<'a>(ptr: *const c_char, what: &str) -> Result<&'a str> {
    // SAFETY: the caller's contract above.
    unsafe { optional_str(ptr, what) }?.ok_or_else(|| FfiError::InvalidArgument(format!("{what} is NULL")))
}

/// An optional string argument (NULL is `None`).
///
/// # Safety
/// `ptr` is NULL or a NUL-terminated string that outlives the call.
pub(crate) unsafe fn optional_str<'a>(ptr: *const c_char, what: &str) -> Result<Option<&'a str>> {
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
pub(crate) unsafe fn slice_arg<'a, T>(ptr: *const T, len: usize, what: &str) -> Result<&'a [T]> {
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
pub(crate) unsafe trait Params: Copy {
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
pub(crate) unsafe fn read_params<T: Params>(ptr: *const T, what: &str) -> Result<T> {
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
pub(crate) unsafe fn out_handle<'a, T>(out: *mut *mut T, what: &str) -> Result<&'a mut *mut T> {
    // SAFETY: non-NULL out-pointers are writable (contract above).
    let slot = unsafe { out.as_mut() }.ok_or_else(|| FfiError::InvalidArgument(format!("{what} is NULL")))?;
    *slot = std::ptr::null_mut();
    Ok(slot)
}

pub(crate) fn c_string(text: &str) -> CString {
    CString::new(text.replace('\0', " ")).unwrap_or_default()
}
