//! The CUDA backend's parts. The kernel sources and the memory pool's
//! bookkeeping are built everywhere (the pool is tested on the CPU); the
//! NVRTC compiler and the device itself (feature `cuda`) load CUDA's
//! libraries at run time, so a build with the feature still runs, and
//! falls back to the CPU, on a machine without them.

#[cfg(feature = "cuda")]
pub mod backend;
#[cfg(feature = "cuda")]
pub mod driver;
#[cfg(feature = "cuda")]
pub mod emulator;
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod nvrtc;
pub mod pool;
#[cfg(feature = "cuda")]
pub mod testing;
