//! Where a tensor lives and where kernels run.
//!
//! The CPU is always available. The CUDA device exists in the type so that
//! callers can be written once; in a build without the `cuda` feature (or on a
//! machine without a driver) asking for it returns
//! [`TensorError::DeviceUnavailable`] instead of failing later, and callers
//! stay on the CPU with a note saying why.

use crate::{Result, TensorError};

/// A compute device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Device {
    /// Host memory and CPU kernels.
    Cpu,
    /// An NVIDIA GPU by ordinal.
    Cuda(usize),
}

impl Device {
    /// Returns the CUDA device `ordinal` if this build has CUDA support and
    /// the machine a driver (whether the ordinal exists shows when a
    /// backend is made on it: `cuda::backend::CudaBackend::new`).
    pub fn cuda(ordinal: usize) -> Result<Device> {
        match cuda_unavailable_reason() {
            None => Ok(Device::Cuda(ordinal)),
            Some(why) => Err(TensorError::DeviceUnavailable(format!("cuda:{ordinal}"), why.to_string())),
        }
    }

    /// True when the device can run kernels in this process.
    pub fn is_available(self) -> bool {
        match self {
            Device::Cpu => true,
            Device::Cuda(ordinal) => Device::cuda(ordinal).is_ok(),
        }
    }

    /// The device `spec` (`cpu`, `cuda`, `cuda:N`) names, or the CPU when it
    /// names a CUDA device this build or machine cannot use; the note then
    /// says why, for the caller's log line. Anything else is an error.
    pub fn select(spec: &str) -> Result<(Device, Option<String>)> {
        let names_cuda = spec == "cuda" || spec.strip_prefix("cuda:").is_some_and(|n| n.parse::<usize>().is_ok());
        match Device::parse(spec) {
            Ok(device) => Ok((device, None)),
            Err(TensorError::DeviceUnavailable(name, why)) if names_cuda => {
                Ok((Device::Cpu, Some(format!("{name} is unavailable ({why}); running on the CPU"))))
            }
            Err(other) => Err(other),
        }
    }

    /// Parses `cpu` or `cuda` / `cuda:N`, checking availability.
    pub fn parse(spec: &str) -> Result<Device> {
        match spec {
            "cpu" => Ok(Device::Cpu),
            "cuda" => Device::cuda(0),
            other => match other.strip_prefix("cuda:").and_then(|n| n.parse().ok()) {
                Some(ordinal) => Device::cuda(ordinal),
                None => Err(TensorError::DeviceUnavailable(other.to_string(), "expected cpu, cuda or cuda:N".into())),
            },
        }
    }
}

/// Why this build or machine cannot run CUDA, or `None` when it can.
fn cuda_unavailable_reason() -> Option<&'static str> {
    if !cfg!(feature = "cuda") {
        return Some("this build has no CUDA support (rebuild with --features cuda)");
    }
    #[cfg(feature = "cuda")]
    if !crate::cuda::driver::driver_present() {
        return Some("no CUDA driver (libcuda.so) on this machine; using the CPU");
    }
    None
}

impl std::fmt::Display for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Device::Cpu => f.write_str("cpu"),
            Device::Cuda(n) => write!(f, "cuda:{n}"),
        }
    }
}
