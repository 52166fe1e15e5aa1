//! `tailor convert`: a GGUF file to the equivalent Hugging Face folder
//! (f32 safetensors, config.json, tokenizer.json, tokenizer_config.json),
//! so transformers can load exactly the weights tailor runs.

use crate::config::LlamaConfig;
use crate::error::{io_error, ModelError, Result};
use crate::gguf::{GgufFile, MetaValue};
use crate::names::{layer_parts, layer_prefix, Proj};
use crate::tokenizer::gguf_tokenizer_json;
use crate::weights::{GgufWeights, WeightSource};
use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::path::Path;

/// A tensor to write as f32, converted only when the writer reaches it:
/// the file is streamed, and one converted tensor at a time is in memory.
struct LazyF32<'a> {
    name: &'a str,
    shape: Vec<usize>,
    job: &'a WriteJob<'a>,
}

/// What every [`LazyF32`] of one file shares: where values come from, the
/// change made to them, progress, and the first failure (the writer's
/// `data` cannot return one).
struct WriteJob<'a> {
    weights: &'a dyn WeightSource,
    transform: &'a Transform<'a>,
    progress: &'a dyn Fn(usize, usize),
    written: Cell<usize>,
    total: usize,
    failure: RefCell<Option<ModelError>>,
}

impl WriteJob<'_> {
    /// `name`'s values, transformed, as little-endian bytes.
    fn bytes(&self, name: &str, expected: usize) -> Result<Vec<u8>> {
        let values = (self.transform)(name, self.weights.get(name)?.to_f32()?.into_owned())?;
        if values.len() * 4 != expected {
            return Err(ModelError::InvalidParameter(format!(
                "{name}: {} values written for {expected} bytes",
                values.len()
            )));
        }
        self.written.set(self.written.get() + 1);
        (self.progress)(self.written.get(), self.total);
        Ok(values.iter().flat_map(|v| v.to_le_bytes()).collect())
    }
}

impl safetensors::View for LazyF32<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        safetensors::Dtype::F32
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        if self.job.failure.borrow().is_none() {
            match self.job.bytes(self.name, self.data_len()) {
                Ok(bytes) => return Cow::Owned(bytes),
                Err(e) => *self.job.failure.borrow_mut() = Some(e),
            }
        }
        // After a failure the file is removed: these bytes only keep its length.
        Cow::Owned(vec![0; self.data_len()])
    }
    fn data_len(&self) -> usize {
        self.shape.iter().product::<usize>() * 4
    }
}

/// Hugging Face names of every tensor of the decoder described by `config`.
pub fn hf_tensor_names(config: &LlamaConfig, has_lm_head: bool) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    if has_lm_head {
        names.push("lm_head.weight".to_string());
    }
    for layer in 0..config.num_hidden_layers {
        let p = layer_prefix(layer);
        for (part, _) in layer_parts() {
            names.push(format!("{p}.{part}.weight"));
        }
        if config.attention_bias {
            for proj in Proj::ALL.into_iter().filter(|p| p.may_have_bias()) {
                names.push(format!("{}.bias", proj.module(layer)));
            }
        }
    }
    names
}

/// Writes the Hugging Face folder for `gguf` into `out_dir`.
pub fn gguf_to_hf(gguf: &Path, out_dir: &Path, progress: &dyn Fn(usize, usize)) -> Result<()> {
    let file = GgufFile::open(gguf)?;
    let config = LlamaConfig::from_gguf(&file)?;
    let weights = GgufWeights::new(&file, &config);
    std::fs::create_dir_all(out_dir).map_err(io_error(out_dir))?;
    let names = hf_tensor_names(&config, weights.contains("lm_head.weight"));
    write_f32_weights(&weights, &names, out_dir, &|_, values| Ok(values), progress)?;
    write_gguf_metadata(&file, &config, out_dir)
}

/// A change made to each tensor as it is written (name, values → values).
pub(crate) type Transform<'a> = dyn Fn(&str, Vec<f32>) -> Result<Vec<f32>> + 'a;

/// Writes `names` from `weights` as f32 into `out_dir/model.safetensors`,
/// each through `transform`.
pub(crate) fn write_f32_weights(
    weights: &dyn WeightSource,
    names: &[String],
    out_dir: &Path,
    transform: &Transform<'_>,
    progress: &dyn Fn(usize, usize),
) -> Result<()> {
    let job = WriteJob {
        weights,
        transform,
        progress,
        written: Cell::new(0),
        total: names.len(),
        failure: RefCell::new(None),
    };
    let mut views = Vec::with_capacity(names.len());
    for name in names {
        views.push((name.clone(), LazyF32 { name, shape: weights.get(name)?.shape().to_vec(), job: &job }));
    }
    let weights_path = out_dir.join("model.safetensors");
    let partial = out_dir.join(".model.safetensors.partial");
    let written = safetensors::serialize_to_file(views, None, &partial)
        .map_err(|e| ModelError::Corrupt { path: weights_path.clone(), detail: format!("writing failed: {e}") });
    if let Err(e) = written.and_then(|()| job.failure.into_inner().map_or(Ok(()), Err)) {
        let _ = std::fs::remove_file(&partial);
        return Err(e);
    }
    std::fs::rename(&partial, &weights_path).map_err(io_error(&weights_path))
}

/// Writes the GGUF's config and tokenizer as Hugging Face files into `out_dir`.
pub(crate) fn write_gguf_metadata(file: &GgufFile, config: &LlamaConfig, out_dir: &Path) -> Result<()> {
    write_json(&out_dir.join("config.json"), &config.to_hf_json())?;
    write_json(&out_dir.join("tokenizer.json"), &gguf_tokenizer_json(file)?)?;
    write_json(&out_dir.join("tokenizer_config.json"), &tokenizer_config(file, config))
}

fn tokenizer_config(file: &GgufFile, config: &LlamaConfig) -> serde_json::Value {
    let tokens = file.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array);
    let token = |id: Option<u32>| id.and_then(|i| tokens.and_then(|t| t.get(i as usize))).and_then(MetaValue::as_str);
    serde_json::json!({
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token(config.bos_token_id),
        "eos_token": token(config.eos_token_ids.first().copied()),
        "chat_template": file.get("tokenizer.chat_template").and_then(MetaValue::as_str),
        "model_max_length": config.max_position_embeddings,
        "clean_up_tokenization_spaces": false,
        "add_bos_token": false,
    })
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| ModelError::Corrupt { path: path.to_path_buf(), detail: e.to_string() })?;
    std::fs::write(path, text).map_err(io_error(path))
}
