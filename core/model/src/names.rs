//! The decoder's per-layer tensors and their names, in one table: the
//! Hugging Face name (what safetensors folders and PEFT adapters use), the
//! GGUF name, and each projection's shape. The loader, the GGUF renaming,
//! the GGUF → HF converter and the adapter loader all read it, so a name
//! is spelled once.

use crate::config::LlamaConfig;

/// A linear projection of a decoder layer (what LoRA can target).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proj {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// MLP gate (SwiGLU).
    Gate,
    /// MLP up.
    Up,
    /// MLP down.
    Down,
}

impl Proj {
    /// Every projection, in the order a layer runs them.
    pub const ALL: [Proj; 7] = [Proj::Q, Proj::K, Proj::V, Proj::O, Proj::Gate, Proj::Up, Proj::Down];

    /// Position in [`Proj::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// Path inside a layer, Hugging Face style (`self_attn.q_proj`).
    pub fn hf_path(self) -> &'static str {
        match self {
            Proj::Q => "self_attn.q_proj",
            Proj::K => "self_attn.k_proj",
            Proj::V => "self_attn.v_proj",
            Proj::O => "self_attn.o_proj",
            Proj::Gate => "mlp.gate_proj",
            Proj::Up => "mlp.up_proj",
            Proj::Down => "mlp.down_proj",
        }
    }

    /// The module's own name, the last part of [`Proj::hf_path`] (`q_proj`):
    /// what PEFT's `target_modules` lists.
    pub fn module_name(self) -> &'static str {
        let path = self.hf_path();
        path.rsplit('.').next().unwrap_or(path)
    }

    /// The name llama.cpp gives it inside a block (`attn_q`).
    pub fn gguf_path(self) -> &'static str {
        match self {
            Proj::Q => "attn_q",
            Proj::K => "attn_k",
            Proj::V => "attn_v",
            Proj::O => "attn_output",
            Proj::Gate => "ffn_gate",
            Proj::Up => "ffn_up",
            Proj::Down => "ffn_down",
        }
    }

    /// `(out_features, in_features)` of this projection in a model of `config`.
    pub fn shape(self, config: &LlamaConfig) -> (usize, usize) {
        let (hidden, ffn) = (config.hidden_size, config.intermediate_size);
        match self {
            Proj::Q => (config.q_dim(), hidden),
            Proj::K | Proj::V => (config.kv_dim(), hidden),
            Proj::O => (hidden, config.q_dim()),
            Proj::Gate | Proj::Up => (ffn, hidden),
            Proj::Down => (hidden, ffn),
        }
    }

    /// Whether the projection carries a bias when the config has
    /// `attention_bias` (Qwen2's q/k/v).
    pub fn may_have_bias(self) -> bool {
        matches!(self, Proj::Q | Proj::K | Proj::V)
    }

    /// The module's full Hugging Face name in `layer` (`model.layers.3.self_attn.q_proj`).
    pub fn module(self, layer: usize) -> String {
        format!("{}.{}", layer_prefix(layer), self.hf_path())
    }
}

/// The norms of a decoder layer: (Hugging Face path, GGUF path).
pub const LAYER_NORMS: [(&str, &str); 2] = [("input_layernorm", "attn_norm"), ("post_attention_layernorm", "ffn_norm")];

/// Tensors outside the layers: (Hugging Face name, GGUF name).
pub const GLOBAL_TENSORS: [(&str, &str); 3] = [
    ("model.embed_tokens.weight", "token_embd.weight"),
    ("model.norm.weight", "output_norm.weight"),
    ("lm_head.weight", "output.weight"),
];

/// `model.layers.N`, the Hugging Face prefix of layer `layer`.
pub fn layer_prefix(layer: usize) -> String {
    format!("model.layers.{layer}")
}

/// Every (Hugging Face path, GGUF path) pair inside a layer.
pub fn layer_parts() -> impl Iterator<Item = (&'static str, &'static str)> {
    LAYER_NORMS.into_iter().chain(Proj::ALL.into_iter().map(|p| (p.hf_path(), p.gguf_path())))
}
