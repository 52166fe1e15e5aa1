//! `tailor adapter merge`: a base model with a LoRA adapter folded into its
//! weights, written as a Hugging Face folder (f32 safetensors, config and
//! tokenizer), for tools that cannot apply adapters at run time. Merged
//! into a quantized base the weights are dequantized first; the result is
//! then the quantized model's behaviour plus the adapter, in f32.

use crate::convert::{hf_tensor_names, write_f32_weights, write_gguf_metadata};
use crate::error::{io_error, ModelError, Result};
use crate::gguf::GgufFile;
use crate::lora::Adapter;
use crate::model::Model;
use crate::names::Proj;
use crate::weights::{GgufWeights, SafetensorsWeights, WeightSource};
use crate::LlamaConfig;
use std::path::Path;

/// What a merge wrote.
#[derive(Debug, Clone)]
pub struct MergeReport {
    /// Projections that received a delta.
    pub merged_modules: usize,
    /// True when the base's weights were stored quantized.
    pub base_was_quantized: bool,
}

/// Merges `adapter` (loaded for `model`) into the weights of `model`'s
/// source (a GGUF file or HF folder) and writes the folder `out_dir`.
pub fn merge_adapter(
    model: &Model,
    adapter: &Adapter,
    out_dir: &Path,
    progress: &dyn Fn(usize, usize),
) -> Result<MergeReport> {
    if adapter.modules().is_empty() {
        return Err(ModelError::Adapter { path: adapter.source().to_path_buf(), detail: "adapts nothing".into() });
    }
    std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let config = model.llama.config();
    let merge = |name: &str, mut values: Vec<f32>| -> Result<Vec<f32>> {
        if let Some((layer, proj)) = projection_of(name, config) {
            if let Some(lora) = adapter.layer(layer, proj) {
                lora.merge_into(&mut values)?;
            }
        }
        Ok(values)
    };
    let source = &model.source;
    let base_was_quantized;
    if source.is_dir() {
        let weights = SafetensorsWeights::open(source)?;
        base_was_quantized = false;
        let names = hf_tensor_names(config, weights.contains("lm_head.weight"));
        write_f32_weights(&weights, &names, out_dir, &merge, progress)?;
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            let from = source.join(file);
            if from.exists() {
                std::fs::copy(&from, out_dir.join(file)).map_err(io_error(&from))?;
            }
        }
    } else {
        let file = GgufFile::open(source)?;
        let weights = GgufWeights::new(&file, config);
        base_was_quantized = weights.get(&format!("{}.weight", Proj::Q.module(0)))?.dtype().is_quantized();
        let names = hf_tensor_names(config, weights.contains("lm_head.weight"));
        write_f32_weights(&weights, &names, out_dir, &merge, progress)?;
        write_gguf_metadata(&file, config, out_dir)?;
    }
    Ok(MergeReport { merged_modules: adapter.modules().len(), base_was_quantized })
}

/// Writes `model` as it is now (its weights after full fine-tuning, say)
/// as a Hugging Face folder: f32 safetensors, config.json and the
/// tokenizer files of its source.
pub fn save_model(model: &Model, out_dir: &Path, progress: &dyn Fn(usize, usize)) -> Result<()> {
    std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let names = model.llama.parameter_names();
    write_f32_weights(&model.llama, &names, out_dir, &|_, values| Ok(values), progress)?;
    let source = &model.source;
    if source.is_dir() {
        for file in ["config.json", "tokenizer.json", "tokenizer_config.json"] {
            let from = source.join(file);
            if from.exists() {
                std::fs::copy(&from, out_dir.join(file)).map_err(io_error(&from))?;
            }
        }
        Ok(())
    } else {
        let file = GgufFile::open(source)?;
        write_gguf_metadata(&file, model.llama.config(), out_dir)
    }
}

/// `model.layers.N.self_attn.q_proj.weight` → (N, Q).
fn projection_of(name: &str, config: &LlamaConfig) -> Option<(usize, Proj)> {
    let rest = name.strip_prefix("model.layers.")?.strip_suffix(".weight")?;
    let (layer, path) = rest.split_once('.')?;
    let layer: usize = layer.parse().ok().filter(|&l| l < config.num_hidden_layers)?;
    Proj::ALL.into_iter().find(|p| p.hf_path() == path).map(|p| (layer, p))
}
