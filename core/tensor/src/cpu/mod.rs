//! CPU kernels. All take plain slices in row-major layout and parallelise
//! with rayon's global pool, whose size is the process's CPU thread budget.

mod attention;
mod backward;
mod bf16;
pub(crate) mod half_dot;
mod half_gemm;
mod input_grad;
mod lora;
mod matmul;
mod ops;
pub mod pool;
mod report;
#[cfg(target_arch = "x86_64")]
mod simd512;
mod small_gemm;
mod token_lanes;

pub use attention::{causal_attention, decode_attention, full_attention, full_attention_packed, AttentionShape};
pub use backward::{
    causal_attention_backward, causal_attention_backward_on, linear_backward_input, linear_backward_weight, matmul,
    rms_norm_backward, silu_mul_backward, softmax_cross_entropy, AttentionBackwardKernel, BackwardScratch,
    BlockCompute, LoraBackward, MatRef,
};
pub use bf16::{bf16_supported, gemm_bf16, gemm_bf16_on, Bf16Kernel, Bf16Out, Bf16Rows, Bf16Weights, Epilogue};
pub(crate) use half_gemm::{bf16_into_f16, stores_bf16_as_f16};
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

/// `$kernel::<N>($args)` for N = `$count` in 1..=12 (12 for anything
/// larger): a tile's edge through the kernel compiled for its size.
macro_rules! by_count_to_12 {
    ($count:expr, $kernel:ident($($arg:expr),*)) => {
        match $count {
            1 => $kernel::<1>($($arg),*),
            2 => $kernel::<2>($($arg),*),
            3 => $kernel::<3>($($arg),*),
            4 => $kernel::<4>($($arg),*),
            5 => $kernel::<5>($($arg),*),
            6 => $kernel::<6>($($arg),*),
            7 => $kernel::<7>($($arg),*),
            8 => $kernel::<8>($($arg),*),
            9 => $kernel::<9>($($arg),*),
            10 => $kernel::<10>($($arg),*),
            11 => $kernel::<11>($($arg),*),
            _ => $kernel::<12>($($arg),*),
        }
    };
}
use by_count_to_12;

/// True when this CPU has AVX-512 F and VL, as every AVX-512 CPU since
/// Skylake-X and Zen 4 does (checked once by std, cached). The kernels are
/// compiled with VL too: without it LLVM cannot give a value that a
/// 256-bit operation also touches any of registers 16–31, and the f16 tile's
/// loop kept a third of its sums on the stack (1B f16 prefill tiles,
/// Sapphire Rapids, 2 threads: 116–130 → 135–167 GMAC/s).
pub(crate) fn has_avx512() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512vl")
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

/// Seeded test values shared by the kernels' unit tests.
#[cfg(test)]
mod test_values {
    /// Seeded uniform values in [-0.5, 0.5).
    pub(super) fn uniform(mut seed: u64) -> impl FnMut() -> f32 {
        move || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((seed >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        }
    }
}
