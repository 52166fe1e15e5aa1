//! The CUDA driver as an [`Executor`]: a context on one device, its default
//! stream (every copy and launch in issue order), and the kernels compiled
//! by NVRTC for the device's architecture, loaded once per process.

use super::backend::Executor;
use super::kernels::KernelSource;
use super::nvrtc::KernelCache;
use crate::{Result, TensorError};
use cudarc::driver::{
    result as driver_result, CudaContext, CudaFunction, CudaModule, CudaSlice, CudaStream, DevicePtr, DriverError,
};
use cudarc::nvrtc::Ptx;
use std::collections::HashMap;
use std::ffi::c_void;
use std::sync::{Arc, Mutex};

/// True when the CUDA driver library can be loaded on this machine.
pub fn driver_present() -> bool {
    // SAFETY: only tries to dlopen libcuda by its candidate names.
    unsafe { cudarc::driver::sys::is_culib_present() }
}

/// A driver error as tailor's; out-of-memory keeps its own variant so the
/// pool can release its cache and retry.
fn driver(error: DriverError) -> TensorError {
    if error.0 == cudarc::driver::sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY {
        TensorError::DeviceOutOfMemory { requested: 0, in_use: 0, budget: 0 }
    } else {
        TensorError::Cuda(error.to_string())
    }
}

/// One CUDA device owned by this process.
pub struct CudaExecutor {
    context: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    arch: u32,
    cache: KernelCache,
    modules: Mutex<HashMap<&'static str, Arc<CudaModule>>>,
}

impl CudaExecutor {
    /// Device `ordinal`. Fails with [`TensorError::DeviceUnavailable`] when
    /// there is no driver or no such device.
    pub fn new(ordinal: usize) -> Result<CudaExecutor> {
        let unavailable = |why: String| TensorError::DeviceUnavailable(format!("cuda:{ordinal}"), why);
        if !driver_present() {
            return Err(unavailable("no CUDA driver (libcuda.so) on this machine".into()));
        }
        let count = CudaContext::device_count().map_err(|e| unavailable(e.to_string()))?;
        if ordinal >= count.max(0) as usize {
            return Err(unavailable(format!("the machine has {count} CUDA device(s)")));
        }
        let context = CudaContext::new(ordinal).map_err(|e| unavailable(e.to_string()))?;
        let (major, minor) = context.compute_capability().map_err(driver)?;
        let stream = context.default_stream();
        Ok(CudaExecutor {
            context,
            stream,
            arch: (major * 10 + minor) as u32,
            cache: KernelCache::new(KernelCache::default_dir()),
            modules: Mutex::new(HashMap::new()),
        })
    }

    /// The device's architecture (90 for sm_90).
    pub fn arch(&self) -> u32 {
        self.arch
    }

    /// The compiled kernel `entry` of `kernel`, compiled (or read from the
    /// disk cache) and loaded at first use.
    fn function(&self, kernel: &'static KernelSource, entry: &str) -> Result<CudaFunction> {
        let mut modules = self.modules.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let module = match modules.get(kernel.name) {
            Some(module) => Arc::clone(module),
            None => {
                let cubin = self.cache.cubin(kernel, self.arch)?;
                let module = self.context.load_module(Ptx::from_binary(cubin)).map_err(driver)?;
                modules.insert(kernel.name, Arc::clone(&module));
                module
            }
        };
        module.load_function(entry).map_err(driver)
    }
}

impl Executor for CudaExecutor {
    type Block = CudaSlice<u8>;

    fn describe(&self) -> String {
        let name = self.context.name().unwrap_or_else(|_| "unknown device".into());
        format!("{name} (sm_{})", self.arch)
    }

    fn allocate(&self, bytes: usize) -> Result<CudaSlice<u8>> {
        // SAFETY: uninitialised device memory, as the trait documents: every
        // op writes a buffer before reading it.
        unsafe { self.stream.alloc::<u8>(bytes) }.map_err(driver)
    }

    fn address(&self, block: &mut CudaSlice<u8>) -> u64 {
        block.device_ptr(&self.stream).0
    }

    fn copy_in(&self, bytes: &[u8], block: &mut CudaSlice<u8>) -> Result<()> {
        self.stream.memcpy_htod(bytes, &mut block.slice_mut(..bytes.len())).map_err(driver)
    }

    fn copy_out(&self, block: &CudaSlice<u8>, out: &mut [u8]) -> Result<()> {
        self.stream.memcpy_dtoh(&block.slice(..out.len()), out).map_err(driver)?;
        self.synchronize()
    }

    fn copy_between(
        &self,
        from: &CudaSlice<u8>,
        from_offset: usize,
        to: &mut CudaSlice<u8>,
        to_offset: usize,
        bytes: usize,
    ) -> Result<()> {
        let source = from.slice(from_offset..from_offset + bytes);
        self.stream.memcpy_dtod(&source, &mut to.slice_mut(to_offset..to_offset + bytes)).map_err(driver)
    }

    fn synchronize(&self) -> Result<()> {
        self.stream.synchronize().map_err(driver)
    }

    unsafe fn launch(
        &self,
        kernel: &'static KernelSource,
        entry: &str,
        grid: (u32, u32),
        threads: u32,
        params: &mut [*mut c_void],
    ) -> Result<()> {
        let function = self.function(kernel, entry)?;
        // SAFETY: the caller guarantees `params` fit the kernel and its
        // buffers; the function belongs to this context and the stream to
        // it as well.
        unsafe {
            driver_result::launch_kernel(
                function.cu_function(),
                (grid.0, grid.1, 1),
                (threads, 1, 1),
                0,
                self.stream.cu_stream(),
                params,
            )
        }
        .map_err(driver)
    }
}
