//! Sentence embeddings from an embed stage.

use crate::args::{guard, out_handle, required_str, slice_arg};
use crate::error::{FfiError, Result};
use crate::session::{client_ref, tailor_client};
use crate::tailor_status;
use std::ffi::c_char;

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
