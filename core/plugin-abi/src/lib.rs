//! tailor-plugin-abi: the Rust side of `include/tailor_plugin.h`.
//!
//! - [`ffi`]: the `#[repr(C)]` mirror of the header, field for field.
//! - [`Stage`] and [`export_plugin!`]: write a stage in safe Rust; the macro
//!   exports `tailor_plugin_entry` and wraps every call so a panic becomes
//!   `TAILOR_PLUGIN_ERR_INTERNAL` with its message, never an unwind across C.
//! - [`host`]: what a host (tailord) uses to load a plugin, check its ABI
//!   version and call its stages.

pub mod ffi;
pub mod host;
pub mod services;
mod shim;

pub use shim::{descriptor_for, StageTable};

/// ABI major this crate implements; a plugin with another major is refused.
pub const ABI_MAJOR: u32 = 1;
/// ABI minor this crate implements.
pub const ABI_MINOR: u32 = 4;
/// `TAILOR_PLUGIN_MAGIC`.
pub const MAGIC: u32 = 0x504C_5254;

/// What a stage does (`tailor_stage_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum StageKind {
    /// Text in, text out.
    Filter = 1,
    /// Query in, hits out.
    Search = 2,
    /// Prompt in, tokens out.
    Generate = 3,
    /// Texts in, vectors out.
    Embed = 4,
    /// Hits in, reordered hits out.
    Rerank = 5,
    /// A training job.
    Train = 6,
    /// Document management (ABI 1.1).
    Index = 7,
}

impl StageKind {
    /// The kind of a raw value, if known.
    pub fn from_raw(raw: u32) -> Option<StageKind> {
        use StageKind::*;
        [Filter, Search, Generate, Embed, Rerank, Train, Index].into_iter().find(|k| *k as u32 == raw)
    }
}

/// A pipeline stage written in Rust. One value is one instance (`create`).
pub trait Stage: Sized + Send + Sync + 'static {
    /// The stage's kind.
    const KIND: StageKind;
    /// Its name (unique within the plugin), NUL-terminated.
    const NAME: &'static std::ffi::CStr;
    /// True when `call` may run concurrently on one instance.
    const CONCURRENT: bool = true;

    /// A new instance from the stage's JSON config.
    fn create(config_json: &str) -> Result<Self, String>;

    /// Handles one JSON request; each `emit` streams a chunk of the result
    /// and returns `false` when the host wants no more.
    fn call(&self, request_id: u64, request_json: &str, emit: &mut dyn FnMut(&str) -> bool) -> Result<(), StageError>;
}

/// Why a stage call failed: a status for the host (which maps it to an
/// HTTP status) and a message. A plain `String` converts to
/// `ERR_INVALID`, so `?` on string errors keeps working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageError {
    /// One of the `ffi::ERR_*` statuses.
    pub status: ffi::Status,
    /// What went wrong, for the caller.
    pub message: String,
}

impl StageError {
    /// The request is wrong (`ERR_INVALID`).
    pub fn invalid(message: impl Into<String>) -> StageError {
        StageError { status: ffi::ERR_INVALID, message: message.into() }
    }

    /// The request names something the stage does not have (`ERR_NOT_FOUND`).
    pub fn not_found(message: impl Into<String>) -> StageError {
        StageError { status: ffi::ERR_NOT_FOUND, message: message.into() }
    }

    /// The request conflicts with the stage's state (`ERR_CONFLICT`).
    pub fn conflict(message: impl Into<String>) -> StageError {
        StageError { status: ffi::ERR_CONFLICT, message: message.into() }
    }

    /// The stage failed on its own account (`ERR_INTERNAL`).
    pub fn internal(message: impl Into<String>) -> StageError {
        StageError { status: ffi::ERR_INTERNAL, message: message.into() }
    }
}

impl From<String> for StageError {
    fn from(message: String) -> StageError {
        StageError::invalid(message)
    }
}

impl From<&str> for StageError {
    fn from(message: &str) -> StageError {
        StageError::invalid(message)
    }
}

impl std::fmt::Display for StageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

/// Exports `tailor_plugin_entry` for a plugin made of the given stages:
/// `export_plugin!(name: "my-plugin", version: "0.1.0", stages: [Upper, Lower]);`
#[macro_export]
macro_rules! export_plugin {
    (name: $name:literal, version: $version:literal, stages: [$($stage:ty),+ $(,)?]) => {
        /// The plugin's entry point (see include/tailor_plugin.h).
        ///
        /// # Safety
        /// Called by the host with a valid (or null) host API pointer.
        #[no_mangle]
        pub unsafe extern "C" fn tailor_plugin_entry(
            host: *const $crate::ffi::HostApi,
            _host_abi_major: u32,
        ) -> *const $crate::ffi::PluginDescriptor {
            // SAFETY: the host's table outlives its use of this library.
            unsafe { $crate::services::set_plugin_host(host) };
            static TABLE: std::sync::OnceLock<$crate::StageTable> = std::sync::OnceLock::new();
            let table = TABLE.get_or_init(|| {
                $crate::StageTable::new(
                    concat!($name, "\0"),
                    concat!($version, "\0"),
                    vec![$($crate::ffi::Stage::of::<$stage>()),+],
                )
            });
            table.descriptor()
        }
    };
}

/// Re-exported for the macro's use.
pub use shim::descriptor_for as _descriptor_for;
