//! LoRA adapters on a running tailord (API 1.1): load a PEFT folder under a
//! name, unload it, list what is loaded. A chat or completion then names
//! the adapter in its params (`adapter`, `adapter_scale`).

use crate::args::{c_string, guard, optional_str, out_handle, required_str};
use crate::client::AdapterEntry;
use crate::session::{client_ref, tailor_client};
use crate::tailor_status;
use std::ffi::{c_char, CString};

/// Loads the adapter folder `path` (a path on the daemon's machine, under
/// the stage's `adapter_dirs`) as `name` on generate stage `model` (NULL:
/// the first).
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapter_load(
    client: *mut tailor_client,
    model: *const c_char,
    name: *const c_char,
    path: *const c_char,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, model, name, path) = unsafe {
            (
                client_ref(client)?,
                optional_str(model, "model")?,
                required_str(name, "name")?,
                required_str(path, "path")?,
            )
        };
        client.adapter_load(model, name, path)
    })
}

/// Unloads adapter `name` of generate stage `model` (NULL: the first).
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapter_unload(
    client: *mut tailor_client,
    model: *const c_char,
    name: *const c_char,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for every pointer read here.
        let (client, model, name) =
            unsafe { (client_ref(client)?, optional_str(model, "model")?, required_str(name, "name")?) };
        client.adapter_unload(model, name)
    })
}

/// One listed adapter, its strings owned for C.
struct Entry {
    name: CString,
    model: CString,
    rank: u32,
}

/// The daemon's adapters.
pub struct tailor_adapters {
    entries: Vec<Entry>,
}

/// Lists the adapters of every generate stage.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapters_list(
    client: *mut tailor_client,
    out_adapters: *mut *mut tailor_adapters,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_adapters, "out_adapters") }?;
        // SAFETY: tailor.h's contract.
        let listed = unsafe { client_ref(client) }?.adapters()?;
        let entries = listed
            .iter()
            .map(|AdapterEntry { name, model, rank, .. }| Entry {
                name: c_string(name),
                model: c_string(model),
                rank: *rank,
            })
            .collect();
        *slot = Box::into_raw(Box::new(tailor_adapters { entries }));
        Ok(())
    })
}

/// How many adapters.
///
/// # Safety
/// `adapters` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapters_count(adapters: *const tailor_adapters) -> usize {
    // SAFETY: the caller's contract.
    unsafe { adapters.as_ref() }.map_or(0, |a| a.entries.len())
}

/// An adapter's name; NULL past the end.
///
/// # Safety
/// `adapters` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapters_name(adapters: *const tailor_adapters, index: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    let entry = unsafe { adapters.as_ref() }.and_then(|a| a.entries.get(index));
    entry.map_or(std::ptr::null(), |e| e.name.as_ptr())
}

/// The generate stage (base model) an adapter belongs to; NULL past the end.
///
/// # Safety
/// `adapters` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapters_model(adapters: *const tailor_adapters, index: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    let entry = unsafe { adapters.as_ref() }.and_then(|a| a.entries.get(index));
    entry.map_or(std::ptr::null(), |e| e.model.as_ptr())
}

/// An adapter's largest rank; 0 past the end.
///
/// # Safety
/// `adapters` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapters_rank(adapters: *const tailor_adapters, index: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { adapters.as_ref() }.and_then(|a| a.entries.get(index)).map_or(0, |e| e.rank)
}

/// Frees an adapter list (NULL is fine).
///
/// # Safety
/// `adapters` is NULL or from tailor_adapters_list, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_adapters_free(adapters: *mut tailor_adapters) {
    if !adapters.is_null() {
        // SAFETY: made by Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(adapters) });
    }
}
