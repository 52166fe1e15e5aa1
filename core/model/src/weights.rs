//! Where decoder weights come from: a GGUF file or a Hugging Face folder of
//! safetensors (single file or sharded). Both are memory-mapped and answer
//! by Hugging Face tensor name, so the decoder is written once.

use crate::config::LlamaConfig;
use crate::error::{io_error, ModelError, Result};
use crate::gguf::GgufFile;
use crate::names::{layer_parts, GLOBAL_TENSORS};
use memmap2::Mmap;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tailor_tensor::{DType, Tensor};

/// A source of named weights.
pub trait WeightSource {
    /// The tensor with this Hugging Face name.
    fn get(&self, name: &str) -> Result<Tensor>;
    /// True when the tensor exists.
    fn contains(&self, name: &str) -> bool;
    /// The file or folder, for error messages.
    fn path(&self) -> &Path;
}

/// Weights of a GGUF file, renamed to Hugging Face names, with llama.cpp's
/// Q/K row permutation undone so RoPE uses the half-split layout.
pub struct GgufWeights<'a> {
    file: &'a GgufFile,
    config: &'a LlamaConfig,
}

impl<'a> GgufWeights<'a> {
    /// Wraps an open GGUF file.
    pub fn new(file: &'a GgufFile, config: &'a LlamaConfig) -> Self {
        GgufWeights { file, config }
    }
}

/// The GGUF name of a Hugging Face tensor name.
pub fn gguf_name(hf: &str) -> String {
    if let Some((_, g)) = GLOBAL_TENSORS.iter().find(|(h, _)| *h == hf) {
        return g.to_string();
    }
    let Some(rest) = hf.strip_prefix("model.layers.") else {
        return hf.to_string();
    };
    let (layer, tail) = rest.split_once('.').unwrap_or((rest, ""));
    for (h, g) in layer_parts() {
        if let Some(suffix) = tail.strip_prefix(h) {
            return format!("blk.{layer}.{g}{suffix}");
        }
    }
    hf.to_string()
}

impl WeightSource for GgufWeights<'_> {
    fn get(&self, name: &str) -> Result<Tensor> {
        let tensor = self.file.tensor(&gguf_name(name))?;
        if !rows_are_permuted(&self.config.model_type) {
            return Ok(tensor);
        }
        let heads = if name.ends_with("self_attn.q_proj.weight") || name.ends_with("self_attn.q_proj.bias") {
            self.config.num_attention_heads
        } else if name.ends_with("self_attn.k_proj.weight") || name.ends_with("self_attn.k_proj.bias") {
            self.config.num_key_value_heads
        } else {
            return Ok(tensor);
        };
        unpermute_rows(&tensor, heads, self.file.path(), name)
    }

    fn contains(&self, name: &str) -> bool {
        self.file.tensors.contains_key(&gguf_name(name))
    }

    fn path(&self) -> &Path {
        self.file.path()
    }
}

/// llama.cpp permutes Q/K rows for architectures it runs with interleaved
/// ("normal") RoPE; Qwen2 uses the half-split ("neox") layout and is stored
/// as in Hugging Face.
fn rows_are_permuted(arch: &str) -> bool {
    matches!(arch, "llama" | "mistral")
}

/// Undoes llama.cpp's conversion permutation of Q/K rows: within each head,
/// GGUF row `2i + j` is Hugging Face row `j · head_dim/2 + i`.
fn unpermute_rows(tensor: &Tensor, heads: usize, path: &Path, name: &str) -> Result<Tensor> {
    let rows = if tensor.shape().len() == 1 { tensor.elem_count() } else { tensor.row_count() };
    if heads == 0 || rows % (2 * heads) != 0 {
        return Err(ModelError::Corrupt {
            path: path.to_path_buf(),
            detail: format!("{name}: {rows} rows do not split into {heads} heads"),
        });
    }
    let (head_dim, half) = (rows / heads, rows / heads / 2);
    let row_bytes = tensor.bytes().len() / rows;
    let mut out = Vec::with_capacity(tensor.bytes().len());
    for row in 0..rows {
        let (head, r) = (row / head_dim, row % head_dim);
        let (j, i) = (r / half, r % half);
        let src = head * head_dim + 2 * i + j;
        out.extend_from_slice(&tensor.bytes()[src * row_bytes..(src + 1) * row_bytes]);
    }
    Ok(Tensor::from_bytes(out, tensor.dtype(), tensor.shape())?)
}

/// Weights of a Hugging Face folder: `model.safetensors` or the shards named
/// by `model.safetensors.index.json`.
pub struct SafetensorsWeights {
    folder: PathBuf,
    tensors: BTreeMap<String, MappedTensor>,
    /// Tensors present with a dtype tailor does not load, and that dtype.
    unsupported: BTreeMap<String, String>,
}

/// Where one tensor of a shard lies: (shard map, offset, length, dtype, shape).
type MappedTensor = (Arc<Mmap>, usize, usize, DType, Vec<usize>);

impl SafetensorsWeights {
    /// Maps every shard of the folder and indexes its tensors.
    pub fn open(folder: &Path) -> Result<SafetensorsWeights> {
        let single = folder.join("model.safetensors");
        let index = folder.join("model.safetensors.index.json");
        let shards = if single.exists() {
            vec![single]
        } else if index.exists() {
            shard_files(&index)?
        } else {
            return Err(ModelError::MissingFile {
                path: single,
                what: "model weights (or model.safetensors.index.json)",
            });
        };
        let mut weights =
            SafetensorsWeights { folder: folder.to_path_buf(), tensors: BTreeMap::new(), unsupported: BTreeMap::new() };
        for shard in shards {
            weights.add_shard(&shard)?;
        }
        Ok(weights)
    }

    fn add_shard(&mut self, path: &Path) -> Result<()> {
        let file = std::fs::File::open(path).map_err(io_error(path))?;
        // SAFETY: read-only private map of a model file tailor does not
        // modify; see GgufFile::open.
        let map = Arc::new(unsafe { Mmap::map(&file) }.map_err(io_error(path))?);
        let corrupt = |detail: String| ModelError::Corrupt { path: path.to_path_buf(), detail };
        let parsed = safetensors::SafeTensors::deserialize(&map).map_err(|e| match e {
            safetensors::SafeTensorError::MetadataIncompleteBuffer | safetensors::SafeTensorError::HeaderTooSmall => {
                ModelError::Truncated { path: path.to_path_buf(), detail: e.to_string() }
            }
            other => corrupt(other.to_string()),
        })?;
        let base = map.as_ptr() as usize;
        for (name, view) in parsed.tensors() {
            let dtype = match view.dtype() {
                safetensors::Dtype::F32 => DType::F32,
                safetensors::Dtype::F16 => DType::F16,
                safetensors::Dtype::BF16 => DType::BF16,
                // Integer buffers (e.g. BERT's position_ids) are not weights;
                // asking for one by name reports its dtype.
                other => {
                    self.unsupported.insert(name, format!("{other:?}"));
                    continue;
                }
            };
            let offset = view.data().as_ptr() as usize - base;
            let entry = (map.clone(), offset, view.data().len(), dtype, view.shape().to_vec());
            self.tensors.insert(name, entry);
        }
        Ok(())
    }
}

fn shard_files(index: &Path) -> Result<Vec<PathBuf>> {
    let text = std::fs::read_to_string(index).map_err(io_error(index))?;
    let json: serde_json::Value = serde_json::from_str(&text)
        .map_err(|e| ModelError::Corrupt { path: index.to_path_buf(), detail: e.to_string() })?;
    let map = json
        .get("weight_map")
        .and_then(|m| m.as_object())
        .ok_or_else(|| ModelError::Corrupt { path: index.to_path_buf(), detail: "no weight_map object".into() })?;
    let folder = index.parent().unwrap_or(Path::new("."));
    let mut files: Vec<PathBuf> = map.values().filter_map(|v| v.as_str()).map(|f| folder.join(f)).collect();
    files.sort();
    files.dedup();
    Ok(files)
}

impl WeightSource for SafetensorsWeights {
    fn get(&self, name: &str) -> Result<Tensor> {
        if let Some(dtype) = self.unsupported.get(name) {
            return Err(ModelError::Corrupt {
                path: self.folder.clone(),
                detail: format!("tensor {name:?} has dtype {dtype} (supported: F32, F16, BF16)"),
            });
        }
        let (map, offset, len, dtype, shape) = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { path: self.folder.clone(), name: name.to_string() })?;
        let buffer: Arc<dyn AsRef<[u8]> + Send + Sync> = map.clone();
        Ok(Tensor::mapped(buffer, *offset, *len, *dtype, shape)?)
    }

    fn contains(&self, name: &str) -> bool {
        self.tensors.contains_key(name)
    }

    fn path(&self) -> &Path {
        &self.folder
    }
}
