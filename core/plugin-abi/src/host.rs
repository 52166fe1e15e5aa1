//! The host side: load a plugin from an allowed directory, check its magic
//! and ABI version, list its stages, create instances and call them.
//! Libraries are never unloaded (their code may still be referenced).

use crate::ffi::{self, HostApi, PluginDescriptor, Sink, Status, Str};
use crate::{StageKind, ABI_MAJOR, ABI_MINOR, MAGIC};
use std::ffi::{c_void, CStr};
use std::io::Write;
use std::path::{Path, PathBuf};

/// Everything that can go wrong loading or calling a plugin.
#[derive(Debug, thiserror::Error)]
pub enum PluginError {
    /// The path is outside every configured plugin directory.
    #[error("{path}: plugins load only from the configured directories ({dirs})")]
    NotAllowed {
        /// The requested path.
        path: PathBuf,
        /// The allowed directories.
        dirs: String,
    },
    /// dlopen failed.
    #[error("{path}: cannot load: {detail}")]
    Load {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// No `tailor_plugin_entry` symbol.
    #[error("{path}: not a tailor plugin (no tailor_plugin_entry): {detail}")]
    NoEntry {
        /// The library.
        path: PathBuf,
        /// The loader's message.
        detail: String,
    },
    /// Built against another ABI major.
    #[error("{path}: plugin ABI {plugin_major}.{plugin_minor} is incompatible with this host's ABI {host_major}.{host_minor} (majors differ); rebuild the plugin against tailor_plugin.h {host_major}.x")]
    AbiMismatch {
        /// The library.
        path: PathBuf,
        /// Plugin ABI major.
        plugin_major: u32,
        /// Plugin ABI minor.
        plugin_minor: u32,
        /// Host ABI major.
        host_major: u32,
        /// Host ABI minor.
        host_minor: u32,
    },
    /// The descriptor is malformed.
    #[error("{path}: bad plugin descriptor: {detail}")]
    BadDescriptor {
        /// The library.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// No stage by that name.
    #[error("plugin {plugin:?} has no stage {stage:?}")]
    UnknownStage {
        /// Plugin name.
        plugin: String,
        /// Requested stage.
        stage: String,
    },
    /// A stage reported an error.
    #[error("stage {stage:?} failed ({}): {message}", status_name(*.status))]
    Stage {
        /// Stage name.
        stage: String,
        /// Its status code.
        status: Status,
        /// Its message.
        message: String,
    },
}

fn status_name(status: Status) -> &'static str {
    match status {
        ffi::ERR_INVALID => "invalid request",
        ffi::ERR_INTERNAL => "internal error",
        ffi::ERR_CANCELLED => "cancelled",
        ffi::ERR_UNAVAILABLE => "unavailable",
        ffi::ERR_NOT_FOUND => "not found",
        ffi::ERR_CONFLICT => "conflict",
        _ => "unknown status",
    }
}

unsafe extern "C" fn log_to_stderr(_ctx: *mut c_void, level: i32, message: Str) {
    // SAFETY: the plugin passes a view valid for this call.
    let text = unsafe { message.as_str() }.unwrap_or("<non-UTF-8 log message>");
    // Not eprintln!: it panics when stderr is gone, and this runs inside C.
    let _ = writeln!(std::io::stderr(), "plugin[{level}]: {text}");
}

unsafe extern "C" fn never_cancelled(_ctx: *mut c_void, _request_id: u64) -> i32 {
    0
}

struct StaticHost(HostApi);
// SAFETY: the default host API holds no state (null ctx, stateless functions).
unsafe impl Sync for StaticHost {}

/// A host API with logging to stderr and no other services, for tools and tests.
pub fn default_host() -> &'static HostApi {
    static HOST: StaticHost = StaticHost(HostApi {
        struct_size: std::mem::size_of::<HostApi>() as u32,
        abi_major: ABI_MAJOR,
        abi_minor: ABI_MINOR,
        cpu_threads: 1,
        host_ctx: std::ptr::null_mut(),
        log: Some(log_to_stderr),
        progress: None,
        is_cancelled: Some(never_cancelled),
        call_stage: None,
        parallel_for: None,
        device: -1,
        device_reserve: None,
        device_release: None,
    });
    &HOST.0
}

/// A stage a plugin offers.
#[derive(Debug, Clone, PartialEq)]
pub struct StageInfo {
    /// Its name.
    pub name: String,
    /// Its kind (None for kinds newer than this host).
    pub kind: Option<StageKind>,
    /// Whether one instance accepts concurrent calls.
    pub concurrent: bool,
}

/// A loaded plugin.
pub struct Plugin {
    path: PathBuf,
    name: String,
    version: String,
    descriptor: &'static PluginDescriptor,
}

// SAFETY: the descriptor is immutable static data of a library that is never
// unloaded; stage functions are called through instances, which enforce the
// header's threading contract.
unsafe impl Send for Plugin {}
// SAFETY: as above.
unsafe impl Sync for Plugin {}

impl Plugin {
    /// Loads `path` if it lies inside one of `allowed_dirs`, and checks it.
    pub fn load(path: &Path, allowed_dirs: &[PathBuf], host: &'static HostApi) -> Result<Plugin, PluginError> {
        let resolved = allowed_path(path, allowed_dirs)?;
        let load_error = |e: libloading::Error| PluginError::Load { path: resolved.clone(), detail: e.to_string() };
        // SAFETY: loading a library runs its initialisers; plugins come only
        // from directories the operator configured (checked above).
        let library = unsafe { libloading::Library::new(&resolved) }.map_err(load_error)?;
        let library: &'static libloading::Library = Box::leak(Box::new(library));
        // SAFETY: the symbol's type is fixed by the ABI (tailor_plugin_entry_fn).
        let entry = unsafe { library.get::<ffi::EntryFn>(b"tailor_plugin_entry\0") }
            .map_err(|e| PluginError::NoEntry { path: resolved.clone(), detail: e.to_string() })?;
        // SAFETY: the symbol stays valid: the library is never unloaded.
        let entry: ffi::EntryFn = *entry;
        Plugin::from_entry(entry, &resolved, host)
    }

    /// A plugin linked into this program (first-party stages), known by its
    /// entry function; `label` names it in errors.
    pub fn from_entry(entry: ffi::EntryFn, label: &Path, host: &'static HostApi) -> Result<Plugin, PluginError> {
        let resolved = label.to_path_buf();
        // SAFETY: calling the entry with a valid static host API, as the ABI says.
        let descriptor = unsafe { entry(host, ABI_MAJOR) };
        // SAFETY: a non-null descriptor must stay valid for the process (ABI).
        let descriptor = unsafe { descriptor.as_ref() }.ok_or_else(|| PluginError::BadDescriptor {
            path: resolved.clone(),
            detail: "tailor_plugin_entry returned NULL".into(),
        })?;
        check_descriptor(&resolved, descriptor)?;
        let text = |p: *const std::ffi::c_char| {
            // SAFETY: checked non-null; NUL-terminated static strings (ABI).
            unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
        };
        Ok(Plugin { name: text(descriptor.name), version: text(descriptor.version), path: resolved, descriptor })
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The plugin's version string.
    pub fn version(&self) -> &str {
        &self.version
    }

    /// The library path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn stage_table(&self) -> &'static [ffi::Stage] {
        // SAFETY: check_descriptor verified the pointer and count.
        unsafe { std::slice::from_raw_parts(self.descriptor.stages, self.descriptor.stage_count as usize) }
    }

    /// The stages it offers.
    pub fn stages(&self) -> Vec<StageInfo> {
        self.stage_table()
            .iter()
            .map(|s| StageInfo {
                // SAFETY: names were checked non-null and are static C strings.
                name: unsafe { CStr::from_ptr(s.name) }.to_string_lossy().into_owned(),
                kind: StageKind::from_raw(s.kind),
                concurrent: s.flags & ffi::FLAG_CONCURRENT != 0,
            })
            .collect()
    }

    /// Creates an instance of stage `name` from a JSON config.
    pub fn instantiate(&self, name: &str, config_json: &str) -> Result<StageInstance, PluginError> {
        let stages = self.stage_table();
        let index = self
            .stages()
            .iter()
            .position(|s| s.name == name)
            .ok_or_else(|| PluginError::UnknownStage { plugin: self.name.clone(), stage: name.to_string() })?;
        let stage = &stages[index];
        let mut instance: *mut c_void = std::ptr::null_mut();
        let mut error = Collector::default();
        let create = stage.create.ok_or_else(|| self.bad("stage has no create function"))?;
        // SAFETY: create is the plugin's function; the views and sinks are
        // valid for the duration of the call.
        let status = unsafe { create(Str::from(config_json), &mut instance, &mut error.sink()) };
        if status != ffi::OK {
            return Err(PluginError::Stage { stage: name.to_string(), status, message: error.text() });
        }
        Ok(StageInstance { stage, instance, name: name.to_string() })
    }

    fn bad(&self, detail: &str) -> PluginError {
        PluginError::BadDescriptor { path: self.path.clone(), detail: detail.to_string() }
    }
}

fn allowed_path(path: &Path, allowed_dirs: &[PathBuf]) -> Result<PathBuf, PluginError> {
    let not_allowed = || PluginError::NotAllowed {
        path: path.to_path_buf(),
        dirs: allowed_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(", "),
    };
    let resolved = std::fs::canonicalize(path)
        .map_err(|e| PluginError::Load { path: path.to_path_buf(), detail: e.to_string() })?;
    let inside = allowed_dirs.iter().filter_map(|d| std::fs::canonicalize(d).ok()).any(|d| resolved.starts_with(d));
    if inside {
        Ok(resolved)
    } else {
        Err(not_allowed())
    }
}

fn check_descriptor(path: &Path, d: &PluginDescriptor) -> Result<(), PluginError> {
    let bad = |detail: String| Err(PluginError::BadDescriptor { path: path.to_path_buf(), detail });
    if d.magic != MAGIC {
        return bad(format!("magic {:#010x}, expected {MAGIC:#010x}", d.magic));
    }
    if d.abi_major != ABI_MAJOR {
        return Err(PluginError::AbiMismatch {
            path: path.to_path_buf(),
            plugin_major: d.abi_major,
            plugin_minor: d.abi_minor,
            host_major: ABI_MAJOR,
            host_minor: ABI_MINOR,
        });
    }
    if (d.struct_size as usize) < std::mem::size_of::<PluginDescriptor>() {
        return bad(format!("descriptor of {} bytes is smaller than ABI 1.0's", d.struct_size));
    }
    if d.name.is_null() || d.version.is_null() || (d.stage_count > 0 && d.stages.is_null()) || d.stage_count > 1024 {
        return bad("null name, version or stage table".into());
    }
    // SAFETY: pointer and count checked just above.
    let stages = unsafe { std::slice::from_raw_parts(d.stages, d.stage_count as usize) };
    for s in stages {
        if s.name.is_null()
            || s.create.is_none()
            || s.call.is_none()
            || (s.struct_size as usize) < std::mem::size_of::<ffi::Stage>()
        {
            return bad("a stage lacks a name, create or call, or is smaller than ABI 1.0's".into());
        }
    }
    Ok(())
}

/// An instance of a stage; destroyed on drop.
pub struct StageInstance {
    stage: &'static ffi::Stage,
    instance: *mut c_void,
    name: String,
}

// SAFETY: instances are plain plugin-owned pointers; whether calls may run
// concurrently is the stage's declared flag, which callers honour
// (`concurrent` in StageInfo).
unsafe impl Send for StageInstance {}
// SAFETY: as above.
unsafe impl Sync for StageInstance {}

impl StageInstance {
    /// Runs one request; each streamed chunk goes to `on_chunk`, which
    /// returns `false` to cancel.
    pub fn call(
        &self,
        request_id: u64,
        request_json: &str,
        on_chunk: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), PluginError> {
        let call = self.stage.call.ok_or_else(|| PluginError::Stage {
            stage: self.name.clone(),
            status: ffi::ERR_UNAVAILABLE,
            message: "no call function".into(),
        })?;
        let mut forward = Forward { on_chunk, bad_utf8: false, panicked: None };
        let mut out = Sink { ctx: &mut forward as *mut Forward as *mut c_void, emit: Some(forward_emit) };
        let mut error = Collector::default();
        // SAFETY: the plugin's call function, with an instance it created and
        // sinks that stay valid until it returns.
        let status = unsafe { call(self.instance, request_id, Str::from(request_json), &mut out, &mut error.sink()) };
        if let Some(message) = forward.panicked {
            return Err(PluginError::Stage {
                stage: self.name.clone(),
                status: ffi::ERR_INTERNAL,
                message: format!("the host's handler of this stage's output panicked: {message}"),
            });
        }
        if forward.bad_utf8 {
            return Err(PluginError::Stage {
                stage: self.name.clone(),
                status: ffi::ERR_INTERNAL,
                message: "emitted non-UTF-8 output".into(),
            });
        }
        match status {
            ffi::OK => Ok(()),
            status => Err(PluginError::Stage { stage: self.name.clone(), status, message: error.text() }),
        }
    }

    /// Runs one request and returns its whole output.
    pub fn call_collect(&self, request_id: u64, request_json: &str) -> Result<String, PluginError> {
        let mut out = String::new();
        self.call(request_id, request_json, &mut |chunk| {
            out.push_str(chunk);
            true
        })?;
        Ok(out)
    }
}

impl Drop for StageInstance {
    fn drop(&mut self) {
        if let Some(destroy) = self.stage.destroy {
            // SAFETY: the instance was created by this stage and is destroyed once.
            unsafe { destroy(self.instance) };
        }
    }
}

struct Forward<'a> {
    on_chunk: &'a mut dyn FnMut(&str) -> bool,
    bad_utf8: bool,
    /// The message of a panic in `on_chunk` (caught: it must not unwind into C).
    panicked: Option<String>,
}

unsafe extern "C" fn forward_emit(ctx: *mut c_void, chunk: Str) -> Status {
    // SAFETY: ctx is the Forward that StageInstance::call keeps alive for
    // the duration of the plugin's call.
    let forward = unsafe { &mut *(ctx as *mut Forward) };
    // SAFETY: the plugin passes a view valid for this call.
    let text = match unsafe { chunk.as_str() } {
        Ok(text) => text,
        Err(_) => {
            forward.bad_utf8 = true;
            return ffi::ERR_CANCELLED;
        }
    };
    let on_chunk = &mut forward.on_chunk;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| on_chunk(text))) {
        Ok(true) => ffi::OK,
        Ok(false) => ffi::ERR_CANCELLED,
        Err(panic) => {
            forward.panicked = Some(crate::shim::panic_message(panic.as_ref()));
            ffi::ERR_CANCELLED
        }
    }
}

/// Collects an error sink's chunks.
#[derive(Default)]
struct Collector(String);

impl Collector {
    fn sink(&mut self) -> Sink {
        Sink { ctx: self as *mut Collector as *mut c_void, emit: Some(collect_emit) }
    }

    fn text(&self) -> String {
        if self.0.is_empty() {
            "(no message)".into()
        } else {
            self.0.clone()
        }
    }
}

unsafe extern "C" fn collect_emit(ctx: *mut c_void, chunk: Str) -> Status {
    if chunk.len == 0 || chunk.ptr.is_null() {
        return ffi::OK;
    }
    // SAFETY: ctx is a Collector alive for the duration of the call.
    let collector = unsafe { &mut *(ctx as *mut Collector) };
    // SAFETY: the plugin passes a view valid for this call.
    collector
        .0
        .push_str(&String::from_utf8_lossy(unsafe { std::slice::from_raw_parts(chunk.ptr as *const u8, chunk.len) }));
    ffi::OK
}
