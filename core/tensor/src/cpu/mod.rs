//! CPU kernels. All take plain slices in row-major layout and parallelise
//! with rayon's global pool, whose size is the process's CPU thread budget.

mod attention;
mod backward;
mod bf16;
mod bf16_grad;
mod bf16_lanes;
pub(crate) mod half_dot;
mod half_gemm;
mod lora;
mod matmul;
mod ops;
pub mod pool;
mod report;
#[cfg(target_arch = "x86_64")]
mod simd512;
mod small_gemm;

pub use attention::{causal_attention, decode_attention, full_attention, full_attention_packed, AttentionShape};
pub use backward::{
    causal_attention_backward, causal_attention_backward_on, linear_backward_input, linear_backward_weight, matmul,
    rms_norm_backward, silu_mul_backward, softmax_cross_entropy, AttentionBackwardKernel, BackwardScratch,
    LoraBackward, MatRef,
};
pub use bf16::{bf16_supported, gemm_bf16, gemm_bf16_on, Bf16Kernel, Bf16Out, Bf16Rows, Bf16Weights, Epilogue};
pub use lora::{lora_deltas, lora_deltas_on, LoraGroup, LoraKernel, LoraMatrix, LoraPair};
pub use matmul::{
    dot_f32, gemm_f32, linear, linear_many, linear_many_decode, linear_many_prefill, linear_many_train, matvec_f32,
    LinearScratch, QUANT_GEMM_MIN_TOKENS,
};
pub use ops::{
    add_in_place, erf, erf_f32, exp_fast, gelu_in_place, layer_norm, residual_layer_norm, rms_norm, silu_mul,
    softmax_in_place, RopeTable,
};
pub use report::{kernel_report, KernelReport};

/// True when this CPU has AVX-512F (checked once by std, cached).
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// True when this CPU has AVX2 and FMA (checked once by std, cached).
pub(crate) fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}
