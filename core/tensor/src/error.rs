//! The one error type of tailor-tensor.

use crate::DType;

/// Everything that can go wrong inside the tensor core.
#[derive(Debug, thiserror::Error)]
pub enum TensorError {
    /// A shape did not have the number of elements its data holds.
    #[error("shape {shape:?} needs {expected} elements of {dtype:?} ({expected_bytes} bytes), data has {actual_bytes} bytes")]
    ShapeMismatch {
        /// The requested shape.
        shape: Vec<usize>,
        /// Its element type.
        dtype: DType,
        /// Elements the shape implies.
        expected: usize,
        /// Bytes the shape implies.
        expected_bytes: usize,
        /// Bytes actually present.
        actual_bytes: usize,
    },
    /// A block-quantized row length was not a multiple of the block size.
    #[error("{dtype:?} needs rows that are a multiple of {block} elements, got {len}")]
    BadBlockLength {
        /// The element type.
        dtype: DType,
        /// Its block size.
        block: usize,
        /// The offending row length.
        len: usize,
    },
    /// An operation was given operands of incompatible shapes.
    #[error("incompatible shapes for {op}: {detail}")]
    Incompatible {
        /// The operation.
        op: &'static str,
        /// What did not fit.
        detail: String,
    },
    /// An operation does not support this element type.
    #[error("{op} does not support dtype {dtype:?}")]
    UnsupportedDType {
        /// The operation.
        op: &'static str,
        /// The element type.
        dtype: DType,
    },
    /// A GGUF / ggml type id that tailor does not know.
    #[error("unknown ggml tensor type id {0}")]
    UnknownGgmlType(u32),
    /// A dtype name that tailor does not know.
    #[error(
        "unknown dtype {0:?} (expected one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs, nf4)"
    )]
    UnknownDTypeName(String),
    /// The requested device cannot be used in this build or on this machine.
    #[error("device {0} is unavailable: {1}")]
    DeviceUnavailable(String, String),
    /// The device memory pool's budget (or the device itself) cannot hold
    /// a request; the request fails, nothing else does.
    #[error("out of device memory: {requested} bytes requested, {in_use} of the {budget}-byte budget in use")]
    DeviceOutOfMemory {
        /// Bytes asked for.
        requested: usize,
        /// Bytes the pool had handed out.
        in_use: usize,
        /// The pool's budget.
        budget: usize,
    },
    /// NVRTC could not compile a kernel; `log` is the compiler's.
    #[error("CUDA kernel {kernel} failed to compile for {arch}:\n{log}")]
    KernelCompile {
        /// The kernel file.
        kernel: String,
        /// The target (`sm_90`, `compute_90`).
        arch: String,
        /// The compiler's log.
        log: String,
    },
    /// A CUDA driver call failed.
    #[error("CUDA driver: {0}")]
    Cuda(String),
}

/// Result alias for tailor-tensor.
pub type Result<T> = std::result::Result<T, TensorError>;
