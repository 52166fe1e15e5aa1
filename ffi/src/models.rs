//! Listing the daemon's stages.

use crate::args::{c_string, guard, out_handle};
use crate::session::{client_ref, tailor_client};
use crate::tailor_status;
use std::ffi::{c_char, CString};

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
