//! A tiny random decoder built in memory, for gradient checks that need no
//! downloaded weights.

#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use tailor_model::llama::BuildOptions;
use tailor_model::names::Proj;
use tailor_model::weights::WeightSource;
use tailor_model::{Llama, LlamaConfig};
use tailor_tensor::{DType, Tensor};

/// A deterministic generator (an LCG; not the crate's own, on purpose).
pub struct Lcg(pub u64);

impl Lcg {
    /// Uniform in [-0.5, 0.5).
    pub fn uniform(&mut self) -> f32 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        ((self.0 >> 40) as f32 + 0.5) / (1u64 << 24) as f32 - 0.5
    }

    /// `n` values uniform in ±scale/2.
    pub fn vec(&mut self, n: usize, scale: f32) -> Vec<f32> {
        (0..n).map(|_| self.uniform() * scale).collect()
    }
}

/// 2 layers, 4 query heads over 2 KV heads of 8, vocab 50.
pub fn tiny_config() -> LlamaConfig {
    LlamaConfig {
        model_type: "llama".into(),
        hidden_size: 32,
        intermediate_size: 48,
        num_hidden_layers: 2,
        num_attention_heads: 4,
        num_key_value_heads: 2,
        head_dim: 8,
        vocab_size: 50,
        rms_norm_eps: 1e-5,
        rope_theta: 10_000.0,
        rope_scaling: None,
        max_position_embeddings: 32,
        tie_word_embeddings: false,
        attention_bias: false,
        bos_token_id: None,
        eos_token_ids: vec![1],
    }
}

struct MapWeights(HashMap<String, Tensor>);

impl WeightSource for MapWeights {
    fn get(&self, name: &str) -> tailor_model::Result<Tensor> {
        self.0.get(name).cloned().ok_or_else(|| tailor_model::ModelError::MissingTensor {
            path: Path::new("(memory)").to_path_buf(),
            name: name.to_string(),
        })
    }
    fn contains(&self, name: &str) -> bool {
        self.0.contains_key(name)
    }
    fn path(&self) -> &Path {
        Path::new("(memory)")
    }
}

/// A decoder with seeded random f32 weights.
pub fn tiny_model(seed: u64) -> Llama {
    tiny_model_built(tiny_config(), seed, |values| values, None)
}

/// [`tiny_model`] with another shape.
#[allow(dead_code)]
pub fn tiny_model_shaped(config: LlamaConfig, seed: u64) -> Llama {
    tiny_model_built(config, seed, |values| values, None)
}

/// [`tiny_model`]'s weights rounded to bf16 values, stored as `dtype`
/// (f32 when `None`): the same numbers either way, so two such models
/// differ only in how their products are computed.
pub fn tiny_model_of_bf16_values(seed: u64, dtype: Option<DType>) -> Llama {
    let round = |values: Vec<f32>| {
        let count = values.len();
        let stored = Tensor::from_f32(values, &[count]).and_then(|t| t.to_dtype(DType::BF16));
        stored.and_then(|t| t.to_f32().map(|v| v.into_owned())).expect("bf16 rounding")
    };
    tiny_model_built(tiny_config(), seed, round, dtype)
}

fn tiny_model_built(
    config: LlamaConfig,
    seed: u64,
    values_of: impl Fn(Vec<f32>) -> Vec<f32>,
    dtype: Option<DType>,
) -> Llama {
    let mut rng = Lcg(seed);
    let mut weights = HashMap::new();
    let h = config.hidden_size;
    let mut put = |name: String, shape: Vec<usize>, values: Vec<f32>| {
        weights.insert(name, Tensor::from_f32(values_of(values), &shape).expect("shape"));
    };
    put("model.embed_tokens.weight".into(), vec![config.vocab_size, h], rng.vec(config.vocab_size * h, 1.0));
    put("lm_head.weight".into(), vec![config.vocab_size, h], rng.vec(config.vocab_size * h, 0.5));
    put("model.norm.weight".into(), vec![h], (0..h).map(|_| 1.0 + rng.uniform() * 0.2).collect());
    for layer in 0..config.num_hidden_layers {
        for norm in ["input_layernorm", "post_attention_layernorm"] {
            let values = (0..h).map(|_| 1.0 + rng.uniform() * 0.2).collect();
            put(format!("model.layers.{layer}.{norm}.weight"), vec![h], values);
        }
        for proj in Proj::ALL {
            let (out, inp) = proj.shape(&config);
            put(format!("{}.weight", proj.module(layer)), vec![out, inp], rng.vec(out * inp, 0.6));
        }
    }
    let source = MapWeights(weights);
    Llama::load(config, &source, BuildOptions { dtype, scope: Default::default(), progress: &|_, _| {} })
        .expect("tiny model loads")
}
