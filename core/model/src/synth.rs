//! Synthetic Llama-shaped GGUF files: seeded random weights in any shape,
//! with a real model's tokenizer and chat template, so the speed of the
//! sizes people run (1B–8B) can be measured on a box that has only the
//! bundled 135M model and no model hub. The weights are noise; what they
//! cost to read, multiply and quantize is what a real model's cost.
//!
//! Weights are drawn from N(0, 0.02²) (norms are 1), each row from its own
//! seed, so a file is the same whatever the thread count, and quantized
//! row by row with tailor's quantizers. [`requantize`] turns any GGUF (an
//! f16 synthetic one, say) into another type, so tailor's quantizers can be
//! compared byte for byte with llama.cpp's on the same input.

use crate::error::{ModelError, Result};
use crate::gguf::{GgufFile, GgufWriter, MetaValue};
use crate::names::{Proj, LAYER_NORMS};
use rayon::prelude::*;
use std::path::Path;
use tailor_tensor::{quant::quantize_row, DType, Tensor};

/// The shape of a synthetic model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthShape {
    /// Model width.
    pub hidden: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Decoder layers.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Key/value heads (grouped-query attention).
    pub kv_heads: usize,
    /// Context length written into the file.
    pub context: usize,
}

impl SynthShape {
    /// The shapes benchmarks use: `smollm2` (135M), `1b` (Llama 3.2 1B's
    /// layout) and `3b` (Llama 3.2 3B's), `8b` (Llama 3.1 8B's).
    pub fn named(name: &str) -> Option<SynthShape> {
        let shape = |hidden, intermediate, layers, heads, kv_heads| SynthShape {
            hidden,
            intermediate,
            layers,
            heads,
            kv_heads,
            context: 8192,
        };
        Some(match name {
            "smollm2" => shape(576, 1536, 30, 9, 3),
            "1b" => shape(2048, 8192, 16, 32, 8),
            "3b" => shape(3072, 8192, 28, 24, 8),
            "8b" => shape(4096, 14336, 32, 32, 8),
            _ => return None,
        })
    }

    /// Parameters of a model of this shape with `vocab` tokens (embeddings tied).
    pub fn parameters(&self, vocab: usize) -> usize {
        let kv = self.hidden / self.heads * self.kv_heads;
        let attention = 2 * self.hidden * self.hidden + 2 * self.hidden * kv;
        let mlp = 3 * self.hidden * self.intermediate;
        vocab * self.hidden + self.layers * (attention + mlp + 2 * self.hidden) + self.hidden
    }
}

/// A GGUF of `shape` with seeded random weights in `dtype` (norms in f32),
/// and `template`'s tokenizer, chat template and special tokens. `progress`
/// gets (tensors done, tensors).
pub fn synthesize(
    template: &GgufFile,
    shape: SynthShape,
    dtype: DType,
    seed: u64,
    progress: &(dyn Fn(usize, usize) + Sync),
) -> Result<GgufWriter> {
    check_shape(template.path(), &shape)?;
    let vocab = template.get("tokenizer.ggml.tokens").and_then(MetaValue::as_array).map_or(0, <[MetaValue]>::len);
    if vocab == 0 {
        return Err(ModelError::Config {
            path: template.path().to_path_buf(),
            detail: "the template has no tokenizer.ggml.tokens".into(),
        });
    }
    let mut writer = GgufWriter::new();
    // The tokenizer and everything else about the template stays; its
    // shape, name, file type and alignment are this file's own.
    for (key, value) in &template.metadata {
        if key == "general.architecture" || !(key.starts_with("llama.") || key.starts_with("general.")) {
            writer.meta(key, value.clone());
        }
    }
    let head_dim = shape.hidden / shape.heads;
    let count = |v: usize| MetaValue::U64(v as u64);
    writer
        .meta("general.name", MetaValue::Str(format!("tailor synth {}x{} seed {seed}", shape.layers, shape.hidden)))
        .meta("llama.context_length", count(shape.context))
        .meta("llama.embedding_length", count(shape.hidden))
        .meta("llama.feed_forward_length", count(shape.intermediate))
        .meta("llama.block_count", count(shape.layers))
        .meta("llama.attention.head_count", count(shape.heads))
        .meta("llama.attention.head_count_kv", count(shape.kv_heads))
        .meta("llama.rope.dimension_count", count(head_dim))
        .meta("llama.rope.freq_base", MetaValue::F64(100_000.0))
        .meta("llama.attention.layer_norm_rms_epsilon", MetaValue::F64(1e-5))
        .meta("llama.vocab_size", count(vocab));
    let kv = head_dim * shape.kv_heads;
    let mut matrices: Vec<(String, usize, usize)> = vec![("token_embd.weight".into(), vocab, shape.hidden)];
    for layer in 0..shape.layers {
        for proj in Proj::ALL {
            let (out, inp) = match proj {
                Proj::Q | Proj::O => (shape.hidden, shape.hidden),
                Proj::K | Proj::V => (kv, shape.hidden),
                Proj::Gate | Proj::Up => (shape.intermediate, shape.hidden),
                Proj::Down => (shape.hidden, shape.intermediate),
            };
            matrices.push((format!("blk.{layer}.{}.weight", proj.gguf_path()), out, inp));
        }
    }
    let total = matrices.len() + 1;
    for (index, (name, rows, cols)) in matrices.iter().enumerate() {
        let tensor_seed = seed ^ (index as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        writer.tensor(name, random_matrix(*rows, *cols, dtype.for_rows_of(*cols), tensor_seed)?);
        progress(index + 1, total);
    }
    let ones = || Tensor::from_f32(vec![1.0; shape.hidden], &[shape.hidden]);
    for layer in 0..shape.layers {
        for (_, gguf) in LAYER_NORMS {
            writer.tensor(&format!("blk.{layer}.{gguf}.weight"), ones()?);
        }
    }
    writer.tensor("output_norm.weight", ones()?);
    progress(total, total);
    Ok(writer)
}

/// `file` with every matrix (2-D tensor) requantized to `dtype` by
/// tailor's quantizers (rows that are not whole blocks fall back as in
/// [`DType::for_rows_of`]); vectors (norms) and metadata as they are.
/// `progress` gets (tensors done, tensors).
pub fn requantize(file: &GgufFile, dtype: DType, progress: &(dyn Fn(usize, usize) + Sync)) -> Result<GgufWriter> {
    let mut writer = GgufWriter::new();
    for (key, value) in &file.metadata {
        if key != "general.alignment" && key != "general.file_type" {
            writer.meta(key, value.clone());
        }
    }
    let total = file.tensors.len();
    for (index, (name, info)) in file.tensors.iter().enumerate() {
        let tensor = file.tensor(name)?;
        let tensor = match info.shape.len() {
            2 => {
                let (rows, cols) = (info.shape[0], info.shape[1]);
                let values = tensor.to_f32()?;
                let target = dtype.for_rows_of(cols);
                quantized_matrix(rows, cols, target, |r, row| row.extend_from_slice(&values[r * cols..(r + 1) * cols]))?
            }
            _ => tensor,
        };
        writer.tensor(name, tensor);
        progress(index + 1, total);
    }
    Ok(writer)
}

fn check_shape(path: &Path, shape: &SynthShape) -> Result<()> {
    let fits = shape.hidden > 0
        && shape.layers > 0
        && shape.intermediate > 0
        && shape.heads > 0
        && shape.kv_heads > 0
        && shape.hidden.is_multiple_of(shape.heads)
        && shape.heads.is_multiple_of(shape.kv_heads)
        && (shape.hidden / shape.heads).is_multiple_of(2)
        && shape.hidden.is_multiple_of(32)
        && shape.intermediate.is_multiple_of(32);
    if fits {
        Ok(())
    } else {
        Err(ModelError::Config {
            path: path.to_path_buf(),
            detail: format!(
                "synthetic shape {shape:?}: sizes must be positive, hidden and intermediate multiples of 32, \
                 heads a multiple of kv_heads and dividing hidden into even head sizes"
            ),
        })
    }
}

/// A `rows × cols` matrix of N(0, 0.02²) values in `dtype`, row `r` drawn
/// from seed `(seed, r)`.
fn random_matrix(rows: usize, cols: usize, dtype: DType, seed: u64) -> Result<Tensor> {
    quantized_matrix(rows, cols, dtype, |r, row| {
        let mut rng = SplitMix(seed ^ (r as u64).wrapping_mul(0xD1B5_4A32_D192_ED03));
        row.extend((0..cols).map(|_| 0.02 * rng.normal()));
    })
}

/// A `rows × cols` matrix in `dtype` whose row `r` `fill_row` writes (as
/// f32, into an empty buffer); rows are filled and quantized in parallel.
fn quantized_matrix(
    rows: usize,
    cols: usize,
    dtype: DType,
    fill_row: impl Fn(usize, &mut Vec<f32>) + Sync,
) -> Result<Tensor> {
    let row_bytes = dtype.bytes_for(cols)?;
    let mut bytes = vec![0u8; rows * row_bytes];
    bytes.par_chunks_mut(row_bytes).enumerate().try_for_each_init(
        || (Vec::with_capacity(cols), Vec::with_capacity(row_bytes)),
        |(values, encoded), (r, out)| {
            values.clear();
            fill_row(r, values);
            encoded.clear();
            quantize_row(dtype, values, encoded)?;
            out.copy_from_slice(encoded);
            Ok::<(), tailor_tensor::TensorError>(())
        },
    )?;
    Ok(Tensor::from_bytes(bytes, dtype, &[rows, cols])?)
}

/// SplitMix64 with Box–Muller normals: small, fast and stable across versions.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in (0, 1].
    fn uniform(&mut self) -> f32 {
        ((self.next() >> 40) as f32 + 1.0) / (1u64 << 24) as f32
    }

    fn normal(&mut self) -> f32 {
        let (u, v) = (self.uniform(), self.uniform());
        (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
    }
}
