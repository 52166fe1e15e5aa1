//! Where a figure was measured: the CPU's name, the features detected at
//! run time, and the kernel path each hot operation takes on it, so a
//! benchmark line says which code ran (the CPU under the project changes
//! between machines).

use super::{bf16_supported, half_dot, half_gemm};
use crate::quant::{interleaved::GroupKernel, layout::WeightLayout, DotImpl};
use crate::DType;

/// The CPU and the kernels this process runs on it.
#[derive(Debug, Clone)]
pub struct KernelReport {
    /// The CPU's model name (`/proc/cpuinfo`), or "unknown".
    pub cpu: String,
    /// The SIMD features the kernels look for, those present.
    pub features: Vec<&'static str>,
    /// Quantized weight rows at decode.
    pub quantized_rows: &'static str,
    /// f16/bf16 weight rows at decode.
    pub half_rows: &'static str,
    /// f16/bf16 weights at prefill (many tokens).
    pub half_prefill: &'static str,
    /// The encoder's bf16 matrix products.
    pub bf16_gemm: &'static str,
}

/// This machine's report.
pub fn kernel_report() -> KernelReport {
    let quantized_rows = match (WeightLayout::chosen(), DotImpl::detect()) {
        (WeightLayout::Packed, ..) => "avx512-vnni pair-packed (q4_0, q4_1, q8_0), avx2 rows (other types)",
        (WeightLayout::Interleaved, _) if GroupKernel::detect() == GroupKernel::Vnni => {
            "interleaved groups, avx512-vnni (256-bit; prefill 512-bit: k-quants and iq4_xs two groups of sixteen rows, others token pairs)"
        }
        (WeightLayout::Interleaved, _) => "interleaved groups, avx2",
        (WeightLayout::Rows, DotImpl::Avx2) => "avx2 rows",
        (WeightLayout::Rows, DotImpl::Scalar) => "scalar rows",
    };
    KernelReport {
        cpu: cpu_name(),
        features: detected_features(),
        quantized_rows,
        half_rows: match () {
            _ if half_gemm::stores_bf16_as_f16(64) => "avx512 tiles, f16 and bf16 (stored as f16) by vfmadd231ph",
            _ if half_gemm::decodes(DType::F16, 64) && bf16_supported() => "avx512 tiles, bf16 by vdpbf16ps",
            _ if half_gemm::decodes(DType::F16, 64) => "avx512 tiles",
            _ if half_dot::simd_supported() => "avx2+f16c",
            _ => "portable",
        },
        half_prefill: match half_gemm::HalfKernel::best() {
            _ if half_gemm::stores_bf16_as_f16(64) => "avx512 tiles 4x6 (f16 and bf16 weights: f16 products)",
            best => half_gemm::HalfKernel::describe(best),
        },
        bf16_gemm: if bf16_supported() { "avx512-bf16" } else { "f32 (no avx512-bf16)" },
    }
}

fn cpu_name() -> String {
    let info = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let name = info.lines().find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')));
    name.map_or_else(|| "unknown".to_string(), |(_, n)| n.trim().to_string())
}

fn detected_features() -> Vec<&'static str> {
    #[cfg(target_arch = "x86_64")]
    {
        let checks: [(&'static str, bool); 9] = [
            ("avx2", is_x86_feature_detected!("avx2")),
            ("fma", is_x86_feature_detected!("fma")),
            ("f16c", is_x86_feature_detected!("f16c")),
            ("avx512f", is_x86_feature_detected!("avx512f")),
            ("avx512bw", is_x86_feature_detected!("avx512bw")),
            ("avx512vl", is_x86_feature_detected!("avx512vl")),
            ("avx512vnni", is_x86_feature_detected!("avx512vnni")),
            ("avx512bf16", is_x86_feature_detected!("avx512bf16")),
            ("avx512fp16", is_x86_feature_detected!("avx512fp16")),
        ];
        checks.into_iter().filter(|(_, present)| *present).map(|(name, _)| name).collect()
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        Vec::new()
    }
}
