//! tailor-tensor: the numeric core every other crate stands on.
//!
//! It owns the element types (dense `f32`/`f16`/`bf16` and the GGUF block
//! formats), the [`Tensor`] container with its [`Device`], and the CPU kernels
//! (dense and quantized matmul, normalisation, RoPE, softmax, activations and
//! attention over a KV cache). The CPU path is the embedded default and the
//! reference any accelerator kernel is tested against.

pub mod cpu;
pub mod cuda;
pub mod device;
pub mod dtype;
pub mod error;
pub mod quant;
pub mod tensor;

pub use device::Device;
pub use dtype::DType;
pub use error::{Result, TensorError};
pub use tensor::{Storage, Tensor};
