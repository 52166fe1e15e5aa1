//! Kernels compiled at run time by NVRTC (loaded dynamically, so nothing of
//! CUDA is needed to build tailor), to CUBIN for the device's own
//! architecture (a driver older than the compiler cannot JIT newer PTX),
//! and cached on disk by (source, options, architecture) so a daemon
//! restart does not compile again.

use super::kernels::KernelSource;
use crate::{Result, TensorError};
use cudarc::nvrtc::{result, sys};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Options every kernel is compiled with.
const OPTIONS: &[&str] = &["--std=c++17", "--fmad=true"];

/// What NVRTC produces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Machine code for `sm_<arch>`, what the runtime loads.
    Cubin,
    /// PTX for `compute_<arch>`, what CI hands to ptxas for its resource
    /// report.
    Ptx,
}

/// True when the NVRTC library can be loaded (from the CUDA toolkit, or the
/// `nvidia-cuda-nvrtc` wheel's lib folder on `LD_LIBRARY_PATH`).
pub fn available() -> bool {
    // SAFETY: only tries to dlopen the library by its candidate names.
    unsafe { sys::is_culib_present() }
}

fn require() -> Result<()> {
    if available() {
        return Ok(());
    }
    let hint = "libnvrtc.so not found: install the CUDA toolkit, or run scripts/cuda_toolchain.sh and put the \
                nvidia-cuda-nvrtc wheel's lib folder on LD_LIBRARY_PATH";
    Err(TensorError::DeviceUnavailable("nvrtc".into(), hint.into()))
}

/// NVRTC's (major, minor) version.
pub fn version() -> Result<(i32, i32)> {
    require()?;
    let (mut major, mut minor) = (0, 0);
    // SAFETY: the library is present (checked above); both pointers are
    // valid for writes.
    let status = unsafe { sys::nvrtcVersion(&mut major, &mut minor) };
    check(status, "nvrtcVersion")?;
    Ok((major, minor))
}

/// The architecture option for `arch` (90 for sm_90) and `output`.
fn arch_option(arch: u32, output: Output) -> String {
    match output {
        Output::Cubin => format!("--gpu-architecture=sm_{arch}"),
        Output::Ptx => format!("--gpu-architecture=compute_{arch}"),
    }
}

/// Compiles `kernel` for `arch`; a compile error carries NVRTC's log and the
/// kernel's file name.
pub fn compile(kernel: &KernelSource, arch: u32, output: Output) -> Result<Vec<u8>> {
    require()?;
    let source =
        CString::new(kernel.full_source()).map_err(|_| compile_error(kernel, arch, output, "source holds a NUL"))?;
    let name = CString::new(kernel.file).map_err(|_| compile_error(kernel, arch, output, "file name holds a NUL"))?;
    let program = result::create_program(&source, Some(&name))
        .map_err(|e| compile_error(kernel, arch, output, &e.to_string()))?;
    let program = Program(program);
    let mut options: Vec<String> = OPTIONS.iter().map(|o| o.to_string()).collect();
    options.push(arch_option(arch, output));
    // SAFETY: `program` was created above and is destroyed only by its Drop.
    if let Err(e) = unsafe { result::compile_program(program.0, &options) } {
        let log = program.log().unwrap_or_else(|_| e.to_string());
        return Err(compile_error(kernel, arch, output, &log));
    }
    program.output(output)
}

fn compile_error(kernel: &KernelSource, arch: u32, output: Output, log: &str) -> TensorError {
    let target = arch_option(arch, output).trim_start_matches("--gpu-architecture=").to_string();
    TensorError::KernelCompile { kernel: kernel.file.to_string(), arch: target, log: log.to_string() }
}

fn check(status: sys::nvrtcResult, call: &str) -> Result<()> {
    match status {
        sys::nvrtcResult::NVRTC_SUCCESS => Ok(()),
        other => Err(TensorError::Cuda(format!("{call}: {other:?}"))),
    }
}

/// An NVRTC program, destroyed on drop.
struct Program(sys::nvrtcProgram);

impl Program {
    /// The compiler's log.
    fn log(&self) -> Result<String> {
        // SAFETY: the program is live (destroyed only in Drop).
        let raw = unsafe { result::get_program_log(self.0) }.map_err(|e| TensorError::Cuda(e.to_string()))?;
        let bytes: Vec<u8> = raw.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect();
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }

    /// The compiled CUBIN, or the PTX text without its trailing NUL.
    fn output(&self, output: Output) -> Result<Vec<u8>> {
        match output {
            Output::Ptx => {
                // SAFETY: the program is live and compiled.
                let raw = unsafe { result::get_ptx(self.0) }.map_err(|e| TensorError::Cuda(e.to_string()))?;
                Ok(raw.iter().map(|&c| c as u8).take_while(|&b| b != 0).collect())
            }
            Output::Cubin => {
                let mut size = 0usize;
                // SAFETY: the program is live and was compiled for an sm_
                // target; `size` is valid for writes.
                check(unsafe { sys::nvrtcGetCUBINSize(self.0, &mut size) }, "nvrtcGetCUBINSize")?;
                let mut cubin = vec![0u8; size];
                // SAFETY: `cubin` holds the `size` bytes NVRTC reported.
                check(unsafe { sys::nvrtcGetCUBIN(self.0, cubin.as_mut_ptr().cast()) }, "nvrtcGetCUBIN")?;
                Ok(cubin)
            }
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        // SAFETY: the program was created by nvrtcCreateProgram and is
        // destroyed once, here. A failure leaks it, nothing worse.
        let _ = unsafe { result::destroy_program(self.0) };
    }
}

/// Compiled kernels kept on disk, keyed by what determines their bytes.
#[derive(Debug, Clone)]
pub struct KernelCache {
    dir: Option<PathBuf>,
}

impl KernelCache {
    /// The cache in `dir`; `None` compiles every time.
    pub fn new(dir: Option<PathBuf>) -> KernelCache {
        KernelCache { dir }
    }

    /// `$TAILOR_KERNEL_CACHE`, else `$XDG_CACHE_HOME/tailor/kernels`, else
    /// `~/.cache/tailor/kernels`; none when no such folder can be named.
    pub fn default_dir() -> Option<PathBuf> {
        let var = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        var("TAILOR_KERNEL_CACHE")
            .or_else(|| var("XDG_CACHE_HOME").map(|d| d.join("tailor/kernels")))
            .or_else(|| var("HOME").map(|d| d.join(".cache/tailor/kernels")))
    }

    /// Where `kernel` for `sm_<arch>` is (or would be) cached. The key is
    /// what the CUBIN's code depends on, not which NVRTC made it, so a cache
    /// filled on a machine with NVRTC serves one without it (the driver
    /// loads any CUBIN for its own architecture).
    pub fn path_for(&self, kernel: &KernelSource, arch: u32) -> Option<PathBuf> {
        let dir = self.dir.as_ref()?;
        let key = fnv1a(&[kernel.full_source().as_bytes(), OPTIONS.join(" ").as_bytes()]);
        Some(dir.join(format!("{}-sm_{arch}-{key:016x}.cubin", kernel.name)))
    }

    /// The CUBIN of `kernel` for `sm_<arch>`: read from the cache, or
    /// compiled and then written there (atomically; a cache folder that
    /// cannot be written only costs a compile next time).
    pub fn cubin(&self, kernel: &KernelSource, arch: u32) -> Result<Vec<u8>> {
        let path = self.path_for(kernel, arch);
        if let Some(cached) = path.as_deref().and_then(|p| std::fs::read(p).ok()) {
            return Ok(cached);
        }
        let cubin = compile(kernel, arch, Output::Cubin)?;
        if let Some(path) = path {
            let _ = write_atomically(&path, &cubin);
        }
        Ok(cubin)
    }
}

/// Writes `bytes` to a temporary file beside `path`, then renames it over.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let temporary = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&temporary, bytes)?;
    std::fs::rename(&temporary, path)
}

/// 64-bit FNV-1a over the parts, each followed by a separator byte.
fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash = 0xcbf2_9ce4_8422_2325u64;
    for part in parts {
        for &byte in part.iter().chain(&[0xff]) {
            hash = (hash ^ byte as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
    hash
}
