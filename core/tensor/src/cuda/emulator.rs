//! The kernels' own CUDA source run on the CPU, for machines without a GPU:
//! each `.cu` file is compiled by g++ against `kernels/emulator.h` (CUDA
//! threads as OS threads, barriers for `__syncthreads` and warp shuffles,
//! device memory as host memory) into a shared library, and launched with
//! the same parameters the driver would get. The ops of
//! [`super::backend::Backend`] then run unchanged, so their size checks,
//! grids and parameter lists are tested with the kernels' indexing,
//! masking and reductions against the CPU twins in CI. It measures
//! nothing about speed, and it cannot see a kernel that relies on warp
//! lockstep without a shuffle or barrier: the GPU tests remain the proof.

use super::backend::Executor;
use super::kernels::KernelSource;
use crate::{Result, TensorError};
use std::collections::HashMap;
use std::ffi::{c_void, CString};
use std::path::Path;
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

/// The emulator's header, written beside the sources it compiles.
const HEADER: &str = include_str!("../../kernels/emulator.h");

/// A launch entry point of an emulated kernel library.
type Entry = unsafe extern "C" fn(grid_x: u32, grid_y: u32, threads: u32, params: *mut *mut c_void);

/// Runs kernels on the CPU from their CUDA source.
pub struct Emulator {
    compiler: String,
}

/// dlopen handles by kernel name, shared by every emulator of the process
/// (each kernel is compiled once) and kept for its life.
static LIBRARIES: Mutex<Option<HashMap<&'static str, usize>>> = Mutex::new(None);

impl Emulator {
    /// An emulator compiling with `$CXX` (default g++).
    pub fn new() -> Result<Emulator> {
        let compiler = std::env::var("CXX").unwrap_or_else(|_| "g++".into());
        Ok(Emulator { compiler })
    }

    /// The loaded library of `kernel`, compiled at its first use in this
    /// process.
    fn library(&self, kernel: &'static KernelSource) -> Result<usize> {
        let mut libraries = LIBRARIES.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let libraries = libraries.get_or_insert_with(HashMap::new);
        if let Some(&handle) = libraries.get(kernel.name) {
            return Ok(handle);
        }
        let handle = self.compile(kernel)?;
        libraries.insert(kernel.name, handle);
        Ok(handle)
    }

    /// Compiles `kernel` into a shared library in a folder of its own and
    /// loads it; the folder goes once it is loaded (the mapping stays).
    fn compile(&self, kernel: &'static KernelSource) -> Result<usize> {
        static BUILDS: AtomicUsize = AtomicUsize::new(0);
        let build = BUILDS.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("tailor-emulator-{}-{build}", std::process::id()));
        let setup = |e: std::io::Error| emulator_error(kernel.file, e.to_string());
        std::fs::create_dir_all(&dir).map_err(setup)?;
        let loaded = self.compile_in(&dir, kernel);
        let _ = std::fs::remove_dir_all(&dir);
        loaded
    }

    fn compile_in(&self, dir: &Path, kernel: &'static KernelSource) -> Result<usize> {
        let setup = |e: std::io::Error| emulator_error(kernel.file, e.to_string());
        std::fs::write(dir.join("emulator.h"), HEADER).map_err(setup)?;
        let exports: String = kernel.entries.iter().map(|e| format!("TAILOR_EMULATOR_EXPORT({e})\n")).collect();
        let source = dir.join(format!("{}.cpp", kernel.name));
        let library = dir.join(format!("lib{}.so", kernel.name));
        let text = format!("#include \"emulator.h\"\n{}\n{exports}", kernel.full_source());
        std::fs::write(&source, text).map_err(setup)?;
        let output = Command::new(&self.compiler)
            .args(["-std=c++20", "-O1", "-shared", "-fPIC", "-pthread", "-o"])
            .arg(&library)
            .arg(&source)
            .output()
            .map_err(|e| emulator_error(kernel.file, format!("running {}: {e}", self.compiler)))?;
        if !output.status.success() {
            return Err(emulator_error(kernel.file, String::from_utf8_lossy(&output.stderr).into_owned()));
        }
        let path = CString::new(library.to_string_lossy().as_bytes())
            .map_err(|e| emulator_error(kernel.file, e.to_string()))?;
        // SAFETY: dlopen of a library this function just built from the
        // kernel's source; its constructors are the C++ runtime's only.
        let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL) };
        if handle.is_null() {
            return Err(emulator_error(kernel.file, format!("dlopen {} failed", library.display())));
        }
        Ok(handle as usize)
    }
}

fn emulator_error(kernel: &str, log: String) -> TensorError {
    TensorError::KernelCompile { kernel: kernel.to_string(), arch: "the CPU emulator".into(), log }
}

/// Emulated device memory: 16-byte aligned (float4 loads), zero-filled.
pub type HostBlock = Vec<u128>;

impl Executor for Emulator {
    type Block = HostBlock;

    fn describe(&self) -> String {
        "CUDA kernels emulated on the CPU".into()
    }

    fn allocate(&self, bytes: usize) -> Result<HostBlock> {
        Ok(vec![0u128; bytes.div_ceil(16)])
    }

    fn address(&self, block: &mut HostBlock) -> u64 {
        block.as_mut_ptr() as u64
    }

    fn copy_in(&self, bytes: &[u8], block: &mut HostBlock) -> Result<()> {
        bytemuck::cast_slice_mut::<u128, u8>(block)[..bytes.len()].copy_from_slice(bytes);
        Ok(())
    }

    fn copy_out(&self, block: &HostBlock, out: &mut [u8]) -> Result<()> {
        out.copy_from_slice(&bytemuck::cast_slice::<u128, u8>(block)[..out.len()]);
        Ok(())
    }

    fn copy_between(
        &self,
        from: &HostBlock,
        from_offset: usize,
        to: &mut HostBlock,
        to_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let source = &bytemuck::cast_slice::<u128, u8>(from)[from_offset..from_offset + bytes];
        bytemuck::cast_slice_mut::<u128, u8>(to)[to_offset..to_offset + bytes].copy_from_slice(source);
        Ok(())
    }

    fn synchronize(&self) -> Result<()> {
        Ok(())
    }

    unsafe fn launch(
        &self,
        kernel: &'static KernelSource,
        entry: &str,
        grid: (u32, u32),
        threads: u32,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let handle = self.library(kernel)?;
        let symbol =
            CString::new(format!("tailor_emulate_{entry}")).map_err(|e| emulator_error(kernel.file, e.to_string()))?;
        // SAFETY: `handle` is a live dlopen handle (never closed).
        let address = unsafe { libc::dlsym(handle as *mut c_void, symbol.as_ptr()) };
        if address.is_null() {
            return Err(emulator_error(kernel.file, format!("no entry {entry}")));
        }
        // SAFETY: TAILOR_EMULATOR_EXPORT defines every tailor_emulate_*
        // symbol with exactly the `Entry` signature; the caller guarantees
        // `params` fit the kernel, and every device address among them is
        // a live host block of this executor's.
        unsafe {
            let launch: Entry = std::mem::transmute::<*mut c_void, Entry>(address);
            launch(grid.0, grid.1, threads, params.as_mut_ptr());
        }
        Ok(())
    }
}
