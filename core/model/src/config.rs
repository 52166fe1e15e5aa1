//! Hyper-parameters of a Llama-family decoder, read from a Hugging Face
//! `config.json` or from GGUF metadata. One struct with switches covers
//! Llama 2/3, Mistral, Qwen2 and SmolLM.

use crate::error::{ModelError, Result};
use crate::gguf::GgufFile;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// Architectures the decoder implements (`model_type` / `general.architecture`).
pub const SUPPORTED_ARCHITECTURES: [&str; 3] = ["llama", "mistral", "qwen2"];

/// Llama 3.1-style RoPE frequency scaling.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RopeScaling {
    /// `llama3` is the only type implemented.
    pub rope_type: String,
    /// Scaling factor.
    pub factor: f32,
    /// Low-frequency factor.
    pub low_freq_factor: f32,
    /// High-frequency factor.
    pub high_freq_factor: f32,
    /// Context the model was pre-trained on.
    pub original_max_position_embeddings: usize,
}

/// Hyper-parameters of the decoder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LlamaConfig {
    /// `llama`, `mistral` or `qwen2`.
    pub model_type: String,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Decoder blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention).
    pub num_key_value_heads: usize,
    /// Values per head.
    pub head_dim: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// RMSNorm epsilon.
    pub rms_norm_eps: f64,
    /// RoPE base.
    pub rope_theta: f64,
    /// Optional RoPE scaling.
    pub rope_scaling: Option<RopeScaling>,
    /// Longest context.
    pub max_position_embeddings: usize,
    /// Whether the output projection reuses the token embeddings.
    pub tie_word_embeddings: bool,
    /// Whether q/k/v projections have a bias (Qwen2).
    pub attention_bias: bool,
    /// Beginning-of-sequence token.
    pub bos_token_id: Option<u32>,
    /// End-of-sequence tokens.
    pub eos_token_ids: Vec<u32>,
}

#[derive(Deserialize)]
struct HfConfig {
    model_type: Option<String>,
    architectures: Option<Vec<String>>,
    hidden_size: usize,
    intermediate_size: usize,
    num_hidden_layers: usize,
    num_attention_heads: usize,
    num_key_value_heads: Option<usize>,
    head_dim: Option<usize>,
    vocab_size: usize,
    rms_norm_eps: f64,
    rope_theta: Option<f64>,
    rope_scaling: Option<serde_json::Value>,
    max_position_embeddings: Option<usize>,
    tie_word_embeddings: Option<bool>,
    attention_bias: Option<bool>,
    bos_token_id: Option<u32>,
    eos_token_id: Option<serde_json::Value>,
}

impl LlamaConfig {
    /// Reads a Hugging Face `config.json`.
    pub fn from_hf_json(path: &Path, text: &str) -> Result<LlamaConfig> {
        let bad = |detail: String| ModelError::Config { path: path.to_path_buf(), detail };
        let hf: HfConfig = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
        let model_type = hf
            .model_type
            .clone()
            .or_else(|| hf.architectures.as_ref().and_then(|a| a.first()).map(|a| arch_from_class(a)))
            .ok_or_else(|| bad("neither model_type nor architectures is set".into()))?;
        check_architecture(path, &model_type)?;
        let eos_token_ids = match &hf.eos_token_id {
            Some(serde_json::Value::Number(n)) => n.as_u64().map(|v| vec![v as u32]).unwrap_or_default(),
            Some(serde_json::Value::Array(a)) => a.iter().filter_map(|v| v.as_u64()).map(|v| v as u32).collect(),
            _ => Vec::new(),
        };
        let rope_scaling = match &hf.rope_scaling {
            None | Some(serde_json::Value::Null) => None,
            Some(value) => Some(parse_rope_scaling(value).map_err(bad)?),
        };
        let config = LlamaConfig {
            attention_bias: hf.attention_bias.unwrap_or(model_type == "qwen2"),
            model_type,
            hidden_size: hf.hidden_size,
            intermediate_size: hf.intermediate_size,
            num_hidden_layers: hf.num_hidden_layers,
            num_attention_heads: hf.num_attention_heads,
            num_key_value_heads: hf.num_key_value_heads.unwrap_or(hf.num_attention_heads),
            head_dim: hf.head_dim.unwrap_or(hf.hidden_size / hf.num_attention_heads.max(1)),
            vocab_size: hf.vocab_size,
            rms_norm_eps: hf.rms_norm_eps,
            rope_theta: hf.rope_theta.unwrap_or(10_000.0),
            rope_scaling,
            max_position_embeddings: hf.max_position_embeddings.unwrap_or(2048),
            tie_word_embeddings: hf.tie_word_embeddings.unwrap_or(false),
            bos_token_id: hf.bos_token_id,
            eos_token_ids,
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Reads the hyper-parameters from GGUF metadata (`{arch}.*` keys).
    pub fn from_gguf(file: &GgufFile) -> Result<LlamaConfig> {
        let path = file.path();
        let bad = |detail: String| ModelError::Config { path: path.to_path_buf(), detail };
        let arch = file
            .get("general.architecture")
            .and_then(|v| v.as_str())
            .ok_or_else(|| bad("general.architecture is missing".into()))?
            .to_string();
        check_architecture(path, &arch)?;
        let int = |key: &str| -> Result<usize> {
            let full = format!("{arch}.{key}");
            file.get(&full)
                .and_then(|v| v.as_u64())
                .map(|v| v as usize)
                .ok_or_else(|| bad(format!("{full} is missing")))
        };
        let float = |key: &str| file.get(&format!("{arch}.{key}")).and_then(|v| v.as_f64());
        let hidden_size = int("embedding_length")?;
        let heads = int("attention.head_count")?;
        let vocab_size = match file.get("tokenizer.ggml.tokens").and_then(|v| v.as_array()) {
            Some(tokens) => tokens.len(),
            None => int("vocab_size")?,
        };
        let tied = !file.tensors.contains_key("output.weight");
        let token_id = |key: &str| file.get(key).and_then(|v| v.as_u64()).map(|v| v as u32);
        let config = LlamaConfig {
            attention_bias: file.tensors.contains_key("blk.0.attn_q.bias"),
            model_type: arch.clone(),
            hidden_size,
            intermediate_size: int("feed_forward_length")?,
            num_hidden_layers: int("block_count")?,
            num_attention_heads: heads,
            num_key_value_heads: int("attention.head_count_kv").unwrap_or(heads),
            head_dim: int("attention.key_length").unwrap_or(hidden_size / heads.max(1)),
            vocab_size,
            rms_norm_eps: float("attention.layer_norm_rms_epsilon").unwrap_or(1e-5),
            rope_theta: float("rope.freq_base").unwrap_or(10_000.0),
            rope_scaling: None,
            max_position_embeddings: int("context_length").unwrap_or(2048),
            tie_word_embeddings: tied,
            bos_token_id: token_id("tokenizer.ggml.bos_token_id"),
            eos_token_ids: token_id("tokenizer.ggml.eos_token_id").into_iter().collect(),
        };
        config.validate(path)?;
        Ok(config)
    }

    /// Checks the values are mutually consistent.
    pub fn validate(&self, path: &Path) -> Result<()> {
        let bad = |detail: String| Err(ModelError::Config { path: path.to_path_buf(), detail });
        if self.hidden_size == 0 || self.num_hidden_layers == 0 || self.vocab_size == 0 || self.intermediate_size == 0 {
            return bad("hidden_size, num_hidden_layers, intermediate_size and vocab_size must be positive".into());
        }
        if self.num_attention_heads == 0 || self.num_key_value_heads == 0 {
            return bad("head counts must be positive".into());
        }
        if !self.num_attention_heads.is_multiple_of(self.num_key_value_heads) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {}",
                self.num_attention_heads, self.num_key_value_heads
            ));
        }
        if self.head_dim == 0 || !self.head_dim.is_multiple_of(2) || self.head_dim > 1024 {
            return bad(format!("head_dim {} must be even, positive and at most 1024", self.head_dim));
        }
        // The RoPE table is sized from this before any weight is read.
        if self.max_position_embeddings == 0 || self.max_position_embeddings > MAX_CONTEXT {
            return bad(format!("context length {} is outside 1..={MAX_CONTEXT}", self.max_position_embeddings));
        }
        if !(self.rope_theta.is_finite() && self.rope_theta > 0.0) {
            return bad(format!("rope_theta {} must be a positive number", self.rope_theta));
        }
        Ok(())
    }

    /// Width of the key/value projections.
    pub fn kv_dim(&self) -> usize {
        self.num_key_value_heads * self.head_dim
    }

    /// Head layout of the attention layers.
    pub fn attention_shape(&self) -> tailor_tensor::cpu::AttentionShape {
        tailor_tensor::cpu::AttentionShape {
            n_head: self.num_attention_heads,
            n_kv_head: self.num_key_value_heads,
            head_dim: self.head_dim,
        }
    }

    /// Width of the query projection.
    pub fn q_dim(&self) -> usize {
        self.num_attention_heads * self.head_dim
    }

    /// The `config.json` a Hugging Face loader expects for this model.
    pub fn to_hf_json(&self) -> serde_json::Value {
        let class = match self.model_type.as_str() {
            "mistral" => "MistralForCausalLM",
            "qwen2" => "Qwen2ForCausalLM",
            _ => "LlamaForCausalLM",
        };
        serde_json::json!({
            "architectures": [class],
            "model_type": self.model_type,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "vocab_size": self.vocab_size,
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "max_position_embeddings": self.max_position_embeddings,
            "tie_word_embeddings": self.tie_word_embeddings,
            "attention_bias": self.attention_bias,
            "mlp_bias": false,
            "hidden_act": "silu",
            "bos_token_id": self.bos_token_id,
            "eos_token_id": self.eos_token_ids.first(),
            "torch_dtype": "float32",
        })
    }
}

fn arch_from_class(class: &str) -> String {
    class.trim_end_matches("ForCausalLM").to_ascii_lowercase()
}

/// Longest context a model file may declare (Llama 3.1 declares 131,072).
pub const MAX_CONTEXT: usize = 1 << 18;

fn check_architecture(path: &Path, arch: &str) -> Result<()> {
    if SUPPORTED_ARCHITECTURES.contains(&arch) {
        Ok(())
    } else {
        Err(ModelError::UnsupportedArchitecture { path: path.to_path_buf(), arch: arch.to_string() })
    }
}

fn parse_rope_scaling(value: &serde_json::Value) -> std::result::Result<RopeScaling, String> {
    let kind = value.get("rope_type").or_else(|| value.get("type")).and_then(|v| v.as_str()).unwrap_or("");
    if kind != "llama3" {
        return Err(format!("rope_scaling type {kind:?} is not supported (only llama3)"));
    }
    let num = |key: &str| value.get(key).and_then(|v| v.as_f64()).ok_or(format!("rope_scaling.{key} is missing"));
    Ok(RopeScaling {
        rope_type: kind.to_string(),
        factor: num("factor")? as f32,
        low_freq_factor: num("low_freq_factor")? as f32,
        high_freq_factor: num("high_freq_factor")? as f32,
        original_max_position_embeddings: num("original_max_position_embeddings")? as usize,
    })
}

/// Inverse RoPE frequencies, with Llama 3.1 scaling when configured.
pub fn rope_inv_freq(config: &LlamaConfig) -> Vec<f32> {
    let base = tailor_tensor::cpu::RopeTable::default_inv_freq(config.head_dim, config.rope_theta as f32);
    let Some(s) = &config.rope_scaling else {
        return base;
    };
    let old = s.original_max_position_embeddings as f32;
    let (low_wavelen, high_wavelen) = (old / s.low_freq_factor, old / s.high_freq_factor);
    base.into_iter()
        .map(|f| {
            let wavelen = 2.0 * std::f32::consts::PI / f;
            if wavelen < high_wavelen {
                f
            } else if wavelen > low_wavelen {
                f / s.factor
            } else {
                let smooth = (old / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
                (1.0 - smooth) * f / s.factor + smooth * f
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hf(context: u64, theta: f64) -> String {
        serde_json::json!({"model_type": "llama", "hidden_size": 64, "intermediate_size": 128,
            "num_hidden_layers": 1, "num_attention_heads": 4, "vocab_size": 32, "rms_norm_eps": 1e-5,
            "max_position_embeddings": context, "rope_theta": theta})
        .to_string()
    }

    #[test]
    fn context_lengths_and_rope_bases_from_files_are_checked_before_use() {
        let path = Path::new("config.json");
        assert!(LlamaConfig::from_hf_json(path, &hf(8192, 10_000.0)).is_ok());
        for (context, theta) in [(0, 10_000.0), (u64::MAX >> 8, 10_000.0), (8192, 0.0), (8192, -1.0)] {
            let err = LlamaConfig::from_hf_json(path, &hf(context, theta)).unwrap_err().to_string();
            assert!(err.contains("context length") || err.contains("rope_theta"), "{context} {theta}: {err}");
        }
    }
}
