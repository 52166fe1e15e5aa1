//! Listing the daemon's stages with their shapes, and counting tokens.

use crate::args::{c_string, guard, out_handle, required_str};
use crate::client::ModelEntry;
use crate::session::{client_ref, tailor_client};
use crate::tailor_status;
use std::ffi::{c_char, CString};

/// One listed model with its strings as C reads them.
struct Listed {
    id: CString,
    kind: CString,
    entry: ModelEntry,
}

/// The daemon's stages, by name and kind.
pub struct tailor_models {
    entries: Vec<Listed>,
}

impl tailor_models {
    /// The entry at `index` of a live list (NULL or past the end: none).
    ///
    /// # Safety
    /// `models` is NULL or live.
    unsafe fn entry<'a>(models: *const tailor_models, index: usize) -> Option<&'a Listed> {
        // SAFETY: the caller's contract.
        unsafe { models.as_ref() }.and_then(|m| m.entries.get(index))
    }
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
        let entries =
            models.into_iter().map(|entry| Listed { id: c_string(&entry.id), kind: c_string(&entry.kind), entry });
        *slot = Box::into_raw(Box::new(tailor_models { entries: entries.collect() }));
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
    unsafe { tailor_models::entry(models, index) }.map_or(std::ptr::null(), |m| m.id.as_ptr())
}

/// A model's stage kind.
///
/// # Safety
/// `models` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_models_kind(models: *const tailor_models, index: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { tailor_models::entry(models, index) }.map_or(std::ptr::null(), |m| m.kind.as_ptr())
}

/// API 1.4: a model's context length in tokens (per text for an embed stage).
///
/// # Safety
/// `models` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_models_context_length(models: *const tailor_models, index: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { tailor_models::entry(models, index) }.map_or(0, |m| m.entry.context_length)
}

/// API 1.4: floats per embedding of an embed stage.
///
/// # Safety
/// `models` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_models_embedding_dim(models: *const tailor_models, index: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { tailor_models::entry(models, index) }.map_or(0, |m| m.entry.embedding_dim)
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

/// Token ids of a prompt.
pub struct tailor_tokens {
    ids: Vec<u32>,
    context_length: u32,
}

/// API 1.4: the token ids a generation of `text` on `model` starts from.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_tokenize(
    client: *mut tailor_client,
    model: *const c_char,
    text: *const c_char,
    out_tokens: *mut *mut tailor_tokens,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_tokens, "out_tokens") }?;
        // SAFETY: tailor.h's contract.
        let (client, model, text) =
            unsafe { (client_ref(client)?, required_str(model, "model")?, required_str(text, "text")?) };
        let tokens = client.tokenize(model, text)?;
        *slot = Box::into_raw(Box::new(tailor_tokens { ids: tokens.ids, context_length: tokens.context_length }));
        Ok(())
    })
}

/// How many tokens.
///
/// # Safety
/// `tokens` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_tokens_count(tokens: *const tailor_tokens) -> usize {
    // SAFETY: the caller's contract.
    unsafe { tokens.as_ref() }.map_or(0, |t| t.ids.len())
}

/// The ids, borrowed (NULL when there are none).
///
/// # Safety
/// `tokens` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_tokens_ids(tokens: *const tailor_tokens) -> *const u32 {
    // SAFETY: the caller's contract.
    unsafe { tokens.as_ref() }.filter(|t| !t.ids.is_empty()).map_or(std::ptr::null(), |t| t.ids.as_ptr())
}

/// The model's context length, which prompt and answer share.
///
/// # Safety
/// `tokens` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_tokens_context_length(tokens: *const tailor_tokens) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { tokens.as_ref() }.map_or(0, |t| t.context_length)
}

/// Frees token ids (NULL is fine).
///
/// # Safety
/// `tokens` is NULL or from tailor_tokenize, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_tokens_free(tokens: *mut tailor_tokens) {
    if !tokens.is_null() {
        // SAFETY: made by Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(tokens) });
    }
}
