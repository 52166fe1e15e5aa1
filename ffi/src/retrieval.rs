//! Search and document management in the daemon's indexes.

use crate::args::{c_string, guard, optional_str, out_handle, read_params, required_str, slice_arg, Params};
use crate::error::Result;
use crate::generation::{tailor_source, tailor_sources};
use crate::session::{client_ref, tailor_client};
use crate::tailor_status;
use std::ffi::{c_char, CString};

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
        let counts = client.index_info(index)?;
        // SAFETY: NULL or writable, by the contract.
        unsafe {
            if let Some(out) = out_documents.as_mut() {
                *out = counts.documents;
            }
            if let Some(out) = out_chunks.as_mut() {
                *out = counts.chunks;
            }
        }
        Ok(())
    })
}

/// API 1.4: deletes an index with its documents.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_index_drop(client: *mut tailor_client, index: *const c_char) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract.
        let (client, index) = unsafe { (client_ref(client)?, required_str(index, "index")?) };
        client.index_drop(index)
    })
}

/// One listed index with its strings as C reads them.
struct ListedIndex {
    name: CString,
    kind: CString,
    dim: u32,
}

/// The daemon's indexes.
pub struct tailor_indexes {
    entries: Vec<ListedIndex>,
}

impl tailor_indexes {
    /// The entry at `index` of a live list (NULL or past the end: none).
    ///
    /// # Safety
    /// `indexes` is NULL or live.
    unsafe fn entry<'a>(indexes: *const tailor_indexes, index: usize) -> Option<&'a ListedIndex> {
        // SAFETY: the caller's contract.
        unsafe { indexes.as_ref() }.and_then(|l| l.entries.get(index))
    }
}

/// API 1.4: lists the indexes of the daemon's index stage.
///
/// # Safety
/// Pointers follow tailor.h's contract.
#[no_mangle]
pub unsafe extern "C" fn tailor_indexes_list(
    client: *mut tailor_client,
    out_indexes: *mut *mut tailor_indexes,
) -> tailor_status {
    guard(|| {
        // SAFETY: tailor.h's contract for out-pointers.
        let slot = unsafe { out_handle(out_indexes, "out_indexes") }?;
        // SAFETY: tailor.h's contract.
        let listed = unsafe { client_ref(client) }?.indexes()?;
        let entries = listed
            .iter()
            .map(|i| ListedIndex { name: c_string(&i.name), kind: c_string(&i.kind), dim: i.dim })
            .collect();
        *slot = Box::into_raw(Box::new(tailor_indexes { entries }));
        Ok(())
    })
}

/// How many indexes.
///
/// # Safety
/// `indexes` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_indexes_count(indexes: *const tailor_indexes) -> usize {
    // SAFETY: the caller's contract.
    unsafe { indexes.as_ref() }.map_or(0, |l| l.entries.len())
}

/// An index's name.
///
/// # Safety
/// `indexes` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_indexes_name(indexes: *const tailor_indexes, index: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { tailor_indexes::entry(indexes, index) }.map_or(std::ptr::null(), |i| i.name.as_ptr())
}

/// An index's structure: "flat" or "hnsw".
///
/// # Safety
/// `indexes` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_indexes_kind(indexes: *const tailor_indexes, index: usize) -> *const c_char {
    // SAFETY: the caller's contract.
    unsafe { tailor_indexes::entry(indexes, index) }.map_or(std::ptr::null(), |i| i.kind.as_ptr())
}

/// Floats per vector of an index.
///
/// # Safety
/// `indexes` is NULL or live.
#[no_mangle]
pub unsafe extern "C" fn tailor_indexes_dim(indexes: *const tailor_indexes, index: usize) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { tailor_indexes::entry(indexes, index) }.map_or(0, |i| i.dim)
}

/// Frees an index list (NULL is fine).
///
/// # Safety
/// `indexes` is NULL or from tailor_indexes_list, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn tailor_indexes_free(indexes: *mut tailor_indexes) {
    if !indexes.is_null() {
        // SAFETY: made by Box::into_raw, freed once.
        drop(unsafe { Box::from_raw(indexes) });
    }
}
