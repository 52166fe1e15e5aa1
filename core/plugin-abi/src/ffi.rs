//! `#[repr(C)]` mirror of include/tailor_plugin.h. Keep the two in step:
//! append only, bump the minor.

use std::ffi::{c_char, c_void};

/// `tailor_plugin_status`.
pub type Status = u32;
/// `TAILOR_PLUGIN_OK`.
pub const OK: Status = 0;
/// `TAILOR_PLUGIN_ERR_INVALID`.
pub const ERR_INVALID: Status = 1;
/// `TAILOR_PLUGIN_ERR_INTERNAL`.
pub const ERR_INTERNAL: Status = 2;
/// `TAILOR_PLUGIN_ERR_CANCELLED`.
pub const ERR_CANCELLED: Status = 3;
/// `TAILOR_PLUGIN_ERR_UNAVAILABLE`.
pub const ERR_UNAVAILABLE: Status = 4;
/// `TAILOR_PLUGIN_ERR_NOT_FOUND` (ABI 1.2).
pub const ERR_NOT_FOUND: Status = 5;
/// `TAILOR_PLUGIN_ERR_CONFLICT` (ABI 1.2).
pub const ERR_CONFLICT: Status = 6;
/// `TAILOR_STAGE_FLAG_CONCURRENT`.
pub const FLAG_CONCURRENT: u32 = 1;

/// `tailor_str`: a borrowed UTF-8 view.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Str {
    /// First byte.
    pub ptr: *const c_char,
    /// Length in bytes.
    pub len: usize,
}

impl Str {
    /// A view of `s` (valid while `s` lives).
    pub fn from(s: &str) -> Str {
        Str { ptr: s.as_ptr() as *const c_char, len: s.len() }
    }

    /// The text, if valid UTF-8.
    ///
    /// # Safety
    /// `ptr` must point to `len` readable bytes for the returned lifetime.
    pub unsafe fn as_str<'a>(&self) -> Result<&'a str, std::str::Utf8Error> {
        if self.len == 0 {
            return Ok("");
        }
        std::str::from_utf8(std::slice::from_raw_parts(self.ptr as *const u8, self.len))
    }
}

/// `tailor_sink`.
#[repr(C)]
pub struct Sink {
    /// Receiver state.
    pub ctx: *mut c_void,
    /// Receives one chunk.
    pub emit: Option<unsafe extern "C" fn(ctx: *mut c_void, chunk: Str) -> Status>,
}

/// `tailor_host_api`.
#[repr(C)]
pub struct HostApi {
    /// sizeof as the host knows it.
    pub struct_size: u32,
    /// Host ABI major.
    pub abi_major: u32,
    /// Host ABI minor.
    pub abi_minor: u32,
    /// CPU threads granted to the plugin.
    pub cpu_threads: u32,
    /// Host state passed back to every service.
    pub host_ctx: *mut c_void,
    /// Logging.
    pub log: Option<unsafe extern "C" fn(host_ctx: *mut c_void, level: i32, message: Str)>,
    /// Progress of long work.
    pub progress: Option<unsafe extern "C" fn(host_ctx: *mut c_void, task: Str, done: u64, total: u64)>,
    /// Cancellation check.
    pub is_cancelled: Option<unsafe extern "C" fn(host_ctx: *mut c_void, request_id: u64) -> i32>,
    /// Calls another stage.
    pub call_stage: Option<
        unsafe extern "C" fn(
            host_ctx: *mut c_void,
            stage: Str,
            request_json: Str,
            out: *mut Sink,
            error: *mut Sink,
        ) -> Status,
    >,
    /// Runs `slot(job_ctx, s, slots)` for every `s` in `0..slots` on the
    /// host's kernel threads (one pool for the whole process; `slots` is
    /// `cpu_threads`) and returns when all are done (ABI 1.3).
    pub parallel_for: Option<unsafe extern "C" fn(host_ctx: *mut c_void, slot: SlotFn, job_ctx: *mut c_void)>,
    /// The device the daemon serves on: -1 for the CPU, else the CUDA
    /// ordinal (ABI 1.4).
    pub device: i32,
    /// Reserves bytes of the daemon's device budget; non-zero when granted
    /// (ABI 1.4).
    pub device_reserve: Option<unsafe extern "C" fn(host_ctx: *mut c_void, bytes: u64) -> i32>,
    /// Gives reserved bytes back (ABI 1.4).
    pub device_release: Option<unsafe extern "C" fn(host_ctx: *mut c_void, bytes: u64)>,
}

/// `tailor_slot_fn`: one slot of a parallel job; it must not unwind.
pub type SlotFn = unsafe extern "C" fn(job_ctx: *mut c_void, slot: u32, slots: u32);

/// `tailor_stage`.
#[repr(C)]
pub struct Stage {
    /// sizeof as the plugin knows it.
    pub struct_size: u32,
    /// `tailor_stage_kind`.
    pub kind: u32,
    /// `TAILOR_STAGE_FLAG_*`.
    pub flags: u32,
    /// NUL-terminated name.
    pub name: *const c_char,
    /// Creates an instance.
    pub create: Option<unsafe extern "C" fn(config_json: Str, instance: *mut *mut c_void, error: *mut Sink) -> Status>,
    /// Runs a request.
    pub call: Option<
        unsafe extern "C" fn(
            instance: *mut c_void,
            request_id: u64,
            request_json: Str,
            out: *mut Sink,
            error: *mut Sink,
        ) -> Status,
    >,
    /// Destroys an instance.
    pub destroy: Option<unsafe extern "C" fn(instance: *mut c_void)>,
}

/// `tailor_plugin_descriptor`.
#[repr(C)]
pub struct PluginDescriptor {
    /// `TAILOR_PLUGIN_MAGIC`.
    pub magic: u32,
    /// ABI major the plugin was built against.
    pub abi_major: u32,
    /// ABI minor.
    pub abi_minor: u32,
    /// sizeof as the plugin knows it.
    pub struct_size: u32,
    /// NUL-terminated plugin name.
    pub name: *const c_char,
    /// NUL-terminated version.
    pub version: *const c_char,
    /// Entries in `stages`.
    pub stage_count: u32,
    /// The stage table.
    pub stages: *const Stage,
}

/// `tailor_plugin_entry_fn`.
pub type EntryFn = unsafe extern "C" fn(host: *const HostApi, host_abi_major: u32) -> *const PluginDescriptor;
