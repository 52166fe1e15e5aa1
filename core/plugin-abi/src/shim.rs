//! The C-facing wrappers of a Rust [`Stage`]: every entry point catches
//! panics (a panic must never unwind into C) and reports them through the
//! error sink as `ERR_INTERNAL`.

use crate::ffi::{self, Sink, Status, Str};
use crate::{Stage, StageError};
use std::ffi::{c_char, c_void};
use std::panic::{catch_unwind, AssertUnwindSafe};

/// Writes `message` to an error sink, if there is one.
///
/// # Safety
/// `sink` is null or points to a valid sink for the duration of the call.
unsafe fn report(sink: *mut Sink, message: &str) {
    if let Some(sink) = sink.as_ref() {
        if let Some(emit) = sink.emit {
            emit(sink.ctx, Str::from(message));
        }
    }
}

pub(crate) fn panic_message(payload: &(dyn std::any::Any + Send)) -> String {
    let text = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic payload".into());
    format!("stage panicked: {text}")
}

/// The value of a caught stage call, or the status of its failure after
/// reporting it: an `Err` carries its status, a panic is `ERR_INTERNAL`.
///
/// # Safety
/// `error` is null or points to a valid sink for the duration of the call.
unsafe fn settle<T, E: Into<StageError>>(
    result: std::thread::Result<Result<T, E>>,
    error: *mut Sink,
) -> Result<T, Status> {
    match result {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => {
            let e: StageError = e.into();
            report(error, &e.message);
            Err(e.status)
        }
        Err(payload) => {
            report(error, &panic_message(payload.as_ref()));
            Err(ffi::ERR_INTERNAL)
        }
    }
}

unsafe extern "C" fn create_shim<S: Stage>(config: Str, instance: *mut *mut c_void, error: *mut Sink) -> Status {
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host passes a view valid for this call.
        let config = unsafe { config.as_str() }.map_err(|e| format!("config is not UTF-8: {e}"))?;
        S::create(config)
    }));
    match settle(result, error) {
        Ok(stage) if !instance.is_null() => {
            *instance = Box::into_raw(Box::new(stage)) as *mut c_void;
            ffi::OK
        }
        Ok(_) => {
            report(error, "create: null instance pointer");
            ffi::ERR_INVALID
        }
        Err(status) => status,
    }
}

unsafe extern "C" fn call_shim<S: Stage>(
    instance: *mut c_void,
    request_id: u64,
    request: Str,
    out: *mut Sink,
    error: *mut Sink,
) -> Status {
    let Some(stage) = (instance as *const S).as_ref() else {
        report(error, "call: null instance");
        return ffi::ERR_INVALID;
    };
    let mut cancelled = false;
    let result = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: the host passes a view valid for this call.
        let request =
            unsafe { request.as_str() }.map_err(|e| StageError::invalid(format!("request is not UTF-8: {e}")))?;
        let mut emit = |chunk: &str| {
            // SAFETY: `out` is null or valid for this call (host contract).
            let status = unsafe { out.as_ref() }.and_then(|s| s.emit.map(|f| unsafe { f(s.ctx, Str::from(chunk)) }));
            cancelled |= status == Some(ffi::ERR_CANCELLED);
            !cancelled
        };
        stage.call(request_id, request, &mut emit)
    }));
    match settle(result, error) {
        Ok(()) if cancelled => ffi::ERR_CANCELLED,
        Ok(()) => ffi::OK,
        Err(status) => status,
    }
}

unsafe extern "C" fn destroy_shim<S: Stage>(instance: *mut c_void) {
    if instance.is_null() {
        return;
    }
    // A panic in Drop is swallowed: there is nobody to report it to.
    let _ = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: `instance` came from Box::into_raw in create_shim and the
        // host destroys each instance once.
        drop(unsafe { Box::from_raw(instance as *mut S) });
    }));
}

impl ffi::Stage {
    /// The stage table entry of a Rust stage.
    pub fn of<S: Stage>() -> ffi::Stage {
        ffi::Stage {
            struct_size: std::mem::size_of::<ffi::Stage>() as u32,
            kind: S::KIND as u32,
            flags: if S::CONCURRENT { ffi::FLAG_CONCURRENT } else { 0 },
            name: S::NAME.as_ptr(),
            create: Some(create_shim::<S>),
            call: Some(call_shim::<S>),
            destroy: Some(destroy_shim::<S>),
        }
    }
}

/// The descriptor and stage table of a Rust plugin, built once and kept
/// for the life of the process (see [`crate::export_plugin!`]).
pub struct StageTable {
    stages: Vec<ffi::Stage>,
    descriptor: ffi::PluginDescriptor,
}

// SAFETY: the table is immutable after construction; its raw pointers point
// at 'static strings and at `stages`, which never moves or changes.
unsafe impl Sync for StageTable {}
// SAFETY: as above.
unsafe impl Send for StageTable {}

impl StageTable {
    /// A table for `stages`; `name` and `version` end with a NUL.
    pub fn new(name: &'static str, version: &'static str, stages: Vec<ffi::Stage>) -> StageTable {
        assert!(name.ends_with('\0') && version.ends_with('\0'), "plugin name and version must be NUL-terminated");
        let descriptor = descriptor_for(name.as_ptr() as *const c_char, version.as_ptr() as *const c_char, &stages);
        StageTable { stages, descriptor }
    }

    /// The descriptor (valid as long as the table).
    pub fn descriptor(&self) -> *const ffi::PluginDescriptor {
        debug_assert_eq!(self.descriptor.stages, self.stages.as_ptr());
        &self.descriptor
    }
}

/// A descriptor for this crate's ABI version listing `stages`.
pub fn descriptor_for(name: *const c_char, version: *const c_char, stages: &[ffi::Stage]) -> ffi::PluginDescriptor {
    ffi::PluginDescriptor {
        magic: crate::MAGIC,
        abi_major: crate::ABI_MAJOR,
        abi_minor: crate::ABI_MINOR,
        struct_size: std::mem::size_of::<ffi::PluginDescriptor>() as u32,
        name,
        version,
        stage_count: stages.len() as u32,
        stages: stages.as_ptr(),
    }
}
