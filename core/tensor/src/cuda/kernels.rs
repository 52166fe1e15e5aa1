//! The CUDA kernels' sources, one op per `.cu` file under `kernels/`,
//! embedded in the binary so that a GPU machine needs no file beside it.
//! NVRTC compiles each at first use ([`super::nvrtc`]); CI compiles every
//! one without a GPU. Each file is compiled after a shared prelude
//! (half-float conversions, warp and block reductions) and a `#line`
//! directive, so compiler messages name the file and line of the op.

/// One `.cu` file: an op and the entry points it exports.
#[derive(Debug, Clone, Copy)]
pub struct KernelSource {
    /// The op's name, also the module's name in the kernel cache.
    pub name: &'static str,
    /// The file under `core/tensor/kernels/`.
    pub file: &'static str,
    /// The file's text.
    pub code: &'static str,
    /// The `extern "C"` kernels the file defines.
    pub entries: &'static [&'static str],
}

/// The prelude every kernel is compiled after.
pub const PRELUDE: &str = include_str!("../../kernels/prelude.cuh");

/// RMSNorm over rows, and its backward (inputs, weight).
pub const RMS_NORM: KernelSource = KernelSource {
    name: "rms_norm",
    file: "rms_norm.cu",
    code: include_str!("../../kernels/rms_norm.cu"),
    entries: &["rms_norm", "rms_norm_backward", "rms_norm_backward_weight"],
};

/// Rotary position embedding from the host's cos/sin tables (forward and
/// backward: the opposite rotation).
pub const ROPE: KernelSource =
    KernelSource { name: "rope", file: "rope.cu", code: include_str!("../../kernels/rope.cu"), entries: &["rope"] };

/// SwiGLU's silu(gate) · up, and its backward.
pub const SILU_MUL: KernelSource = KernelSource {
    name: "silu_mul",
    file: "silu_mul.cu",
    code: include_str!("../../kernels/silu_mul.cu"),
    entries: &["silu_mul", "silu_mul_backward"],
};

/// Embedding gather from f32, f16 or bf16 tables, and its backward into an
/// f32 table gradient.
pub const EMBEDDING: KernelSource = KernelSource {
    name: "embedding",
    file: "embedding.cu",
    code: include_str!("../../kernels/embedding.cu"),
    entries: &["embedding_f32", "embedding_f16", "embedding_bf16", "embedding_backward"],
};

/// Linear layers on weights as stored (GGUF blocks, f16, bf16, f32): a
/// decode kernel (8 tokens a launch), a prefill one (32 tokens a launch,
/// the same per-token sums), and the input gradient.
pub const LINEAR: KernelSource = KernelSource {
    name: "linear",
    file: "linear.cu",
    code: include_str!("../../kernels/linear.cu"),
    entries: &[
        "linear_q4_0",
        "linear_q4_1",
        "linear_q8_0",
        "linear_q4_k",
        "linear_q6_k",
        "linear_f16",
        "linear_bf16",
        "linear_f32",
        "linear_wide_q4_0",
        "linear_wide_q4_1",
        "linear_wide_q8_0",
        "linear_wide_q4_k",
        "linear_wide_q6_k",
        "linear_wide_f16",
        "linear_wide_bf16",
        "linear_wide_f32",
        "linear_backward_q4_0",
        "linear_backward_q4_1",
        "linear_backward_q8_0",
        "linear_backward_q4_k",
        "linear_backward_q6_k",
        "linear_backward_f16",
        "linear_backward_bf16",
        "linear_backward_f32",
    ],
};

/// Decode attention over each sequence's cached keys and values.
pub const ATTENTION_DECODE: KernelSource = KernelSource {
    name: "attention_decode",
    file: "attention_decode.cu",
    code: include_str!("../../kernels/attention_decode.cu"),
    entries: &["attention_decode", "attention_decode_f16", "attention_decode_bf16"],
};

/// Causal prefill attention (flash style: key/value tiles in shared
/// memory, online softmax).
pub const ATTENTION_PREFILL: KernelSource = KernelSource {
    name: "attention_prefill",
    file: "attention_prefill.cu",
    code: include_str!("../../kernels/attention_prefill.cu"),
    entries: &["attention_prefill", "attention_prefill_f16", "attention_prefill_bf16"],
};

/// Softmax cross-entropy with its gradient in place (training's loss).
pub const SOFTMAX_XENT: KernelSource = KernelSource {
    name: "softmax_xent",
    file: "softmax_xent.cu",
    code: include_str!("../../kernels/softmax_xent.cu"),
    entries: &["softmax_xent"],
};

/// LoRA shrink and expand batched across adapters: a row at a time (BGMV,
/// decode) or a tile of rows sharing an adapter at a time (SGMV, prefill).
pub const LORA: KernelSource = KernelSource {
    name: "lora",
    file: "lora.cu",
    code: include_str!("../../kernels/lora.cu"),
    entries: &["lora_shrink", "lora_expand", "lora_shrink_segments", "lora_expand_segments"],
};

/// The backward of causal attention over packed sequences (dq with each
/// row's log-sum-exp, then dk and dv).
pub const ATTENTION_BACKWARD: KernelSource = KernelSource {
    name: "attention_backward",
    file: "attention_backward.cu",
    code: include_str!("../../kernels/attention_backward.cu"),
    entries: &["attention_backward_dq", "attention_backward_dkv"],
};

/// A small f32 product with strided operands (weight and adapter
/// gradients).
pub const MATMUL: KernelSource = KernelSource {
    name: "matmul",
    file: "matmul.cu",
    code: include_str!("../../kernels/matmul.cu"),
    entries: &["matmul_f32"],
};

/// The residual stream's addition and the q/k/v biases.
pub const ADD: KernelSource = KernelSource {
    name: "add",
    file: "add.cu",
    code: include_str!("../../kernels/add.cu"),
    entries: &["add_in_place", "add_bias"],
};

/// New keys and values appended to each sequence's cache (a decode batch in
/// one launch).
pub const KV_STORE: KernelSource = KernelSource {
    name: "kv_store",
    file: "kv_store.cu",
    code: include_str!("../../kernels/kv_store.cu"),
    entries: &["kv_store", "kv_store_f16", "kv_store_bf16"],
};

/// Every kernel, in the order CI compiles them.
pub const ALL: &[KernelSource] = &[
    RMS_NORM,
    ROPE,
    SILU_MUL,
    EMBEDDING,
    LINEAR,
    ATTENTION_DECODE,
    ATTENTION_PREFILL,
    SOFTMAX_XENT,
    LORA,
    ADD,
    KV_STORE,
    ATTENTION_BACKWARD,
    MATMUL,
];

impl KernelSource {
    /// What NVRTC compiles: the prelude, then the file under its own name
    /// and line numbers.
    pub fn full_source(&self) -> String {
        format!("{PRELUDE}\n#line 1 \"{}\"\n{}", self.file, self.code)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_entry_is_defined_in_its_file_and_names_are_unique() {
        let mut names = std::collections::HashSet::new();
        for kernel in ALL {
            assert!(names.insert(kernel.name), "{} listed twice", kernel.name);
            for entry in kernel.entries {
                let defined = [format!(" {entry}("), format!("({entry}, "), format!(", {entry}, ")]
                    .iter()
                    .any(|pattern| kernel.code.contains(pattern));
                assert!(defined, "{}: no kernel named {entry}", kernel.file);
            }
        }
    }
}
