//! The BERT-family sentence encoder (all-MiniLM-L6-v2 and its kin), as
//! sentence-transformers runs it: tokenize with `[CLS] … [SEP]`, truncate to
//! `max_seq_length`, encode, mean-pool over the real tokens, L2-normalise.
//!
//! Sequences are never padded: a batch is the concatenation of its
//! sequences, so linear layers see one tall matrix (one gemm) and attention
//! runs per sequence.
//!
//! Where the CPU has AVX-512 BF16 the linear layers multiply in bf16 with
//! f32 sums ([`EncoderPrecision::Bf16`], twice the f32 rate; cosine to the
//! f32 reference stays above 0.9999); attention, norms and pooling stay f32.

use crate::error::{io_error, ModelError, Result};
use crate::linear::Linear;
use crate::tokenizer::Tokenizer;
use crate::weights::{SafetensorsWeights, WeightSource};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use tailor_tensor::cpu::{
    add_in_place, bf16_supported, full_attention_packed, gelu_in_place, layer_norm, residual_layer_norm,
    AttentionShape, Bf16Out, Bf16Rows, LinearScratch,
};
use tailor_tensor::Tensor;

/// Hyper-parameters from config.json.
#[derive(Debug, Clone, Deserialize)]
pub struct BertConfig {
    /// Width of the hidden states.
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads.
    pub num_attention_heads: usize,
    /// Width of the feed-forward layer.
    pub intermediate_size: usize,
    /// Position embeddings available.
    pub max_position_embeddings: usize,
    /// Vocabulary size.
    pub vocab_size: usize,
    /// LayerNorm epsilon.
    #[serde(default = "default_eps")]
    pub layer_norm_eps: f64,
    /// Activation (only `gelu` is implemented).
    #[serde(default = "default_act")]
    pub hidden_act: String,
}

fn default_eps() -> f64 {
    1e-12
}

fn default_act() -> String {
    "gelu".into()
}

struct LayerNorm {
    weight: Vec<f32>,
    bias: Vec<f32>,
}

struct EncoderLayer {
    query: Linear,
    key: Linear,
    value: Linear,
    attn_out: Linear,
    attn_norm: LayerNorm,
    intermediate: Linear,
    output: Linear,
    out_norm: LayerNorm,
}

/// The arithmetic of the encoder's linear layers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncoderPrecision {
    /// f32 throughout, as the reference computes.
    F32,
    /// bf16 operands with f32 sums in the linear layers (needs AVX-512 BF16).
    Bf16,
}

/// The environment variable that picks the precision [`Encoder::load`] uses.
pub const PRECISION_ENV: &str = "TAILOR_ENCODER_PRECISION";

impl EncoderPrecision {
    /// The precision named by `TAILOR_ENCODER_PRECISION`: `f32`, `bf16`, or
    /// `auto` (the default when unset: [`EncoderPrecision::fastest`]).
    pub fn from_env() -> Result<EncoderPrecision> {
        match std::env::var(PRECISION_ENV) {
            Ok(value) => value.parse(),
            Err(std::env::VarError::NotPresent) => Ok(EncoderPrecision::fastest()),
            Err(std::env::VarError::NotUnicode(_)) => {
                Err(ModelError::InvalidParameter(format!("{PRECISION_ENV} is not UTF-8")))
            }
        }
    }

    /// The fastest precision this CPU runs: bf16 where it has AVX-512 BF16.
    pub fn fastest() -> EncoderPrecision {
        if bf16_supported() {
            EncoderPrecision::Bf16
        } else {
            EncoderPrecision::F32
        }
    }
}

impl std::fmt::Display for EncoderPrecision {
    /// `f32` or `bf16`, the names its `FromStr` reads.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EncoderPrecision::F32 => "f32",
            EncoderPrecision::Bf16 => "bf16",
        })
    }
}

impl std::str::FromStr for EncoderPrecision {
    type Err = ModelError;

    /// `f32`, `bf16`, or `auto` ([`EncoderPrecision::fastest`]).
    fn from_str(name: &str) -> Result<EncoderPrecision> {
        match name.trim().to_ascii_lowercase().as_str() {
            "f32" => Ok(EncoderPrecision::F32),
            "bf16" => Ok(EncoderPrecision::Bf16),
            "auto" | "" => Ok(EncoderPrecision::fastest()),
            other => Err(ModelError::InvalidParameter(format!(
                "encoder precision {other:?}: expected f32, bf16 or auto (from {PRECISION_ENV})"
            ))),
        }
    }
}

/// A loaded sentence encoder.
pub struct Encoder {
    precision: EncoderPrecision,
    config: BertConfig,
    tokenizer: Tokenizer,
    max_seq_length: usize,
    word: Tensor,
    position: Vec<f32>,
    token_type: Vec<f32>,
    embed_norm: LayerNorm,
    layers: Vec<EncoderLayer>,
    source: PathBuf,
}

impl Encoder {
    /// Loads a sentence-transformers folder (config.json, model.safetensors,
    /// tokenizer.json, optional sentence_bert_config.json), in the precision
    /// `TAILOR_ENCODER_PRECISION` names (by default the fastest this CPU runs).
    pub fn load(folder: &Path) -> Result<Encoder> {
        Encoder::load_with(folder, EncoderPrecision::from_env()?)
    }

    /// [`Encoder::load`] in a chosen precision; bf16 without AVX-512 BF16
    /// is an error (the scalar bf16 path is a test reference, not a speed-up).
    pub fn load_with(folder: &Path, precision: EncoderPrecision) -> Result<Encoder> {
        if precision == EncoderPrecision::Bf16 && !bf16_supported() {
            return Err(ModelError::InvalidParameter("bf16 encoding needs a CPU with AVX-512 BF16".into()));
        }
        let config_path = folder.join("config.json");
        if !config_path.exists() {
            return Err(ModelError::MissingFile { path: config_path, what: "the encoder config" });
        }
        let text = std::fs::read_to_string(&config_path).map_err(io_error(&config_path))?;
        let bad = |detail: String| ModelError::Config { path: config_path.clone(), detail };
        let config: BertConfig = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let model_type: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        let arch = model_type.get("model_type").and_then(|v| v.as_str()).unwrap_or("");
        if arch != "bert" {
            return Err(ModelError::UnsupportedArchitecture { path: config_path, arch: arch.to_string() });
        }
        if config.hidden_act != "gelu"
            || config.num_attention_heads == 0
            || !config.hidden_size.is_multiple_of(config.num_attention_heads)
        {
            return Err(bad(format!(
                "unsupported: hidden_act {:?}, {} heads for width {}",
                config.hidden_act, config.num_attention_heads, config.hidden_size
            )));
        }
        let max_seq_length = read_max_seq_length(folder)?.unwrap_or(512).min(config.max_position_embeddings);
        let tokenizer = Tokenizer::from_file(&folder.join("tokenizer.json"))?.for_encoder(max_seq_length)?;
        let weights = SafetensorsWeights::open(folder)?;
        let prefix = if weights.contains("bert.embeddings.word_embeddings.weight") { "bert." } else { "" };
        let loader = BertLoader { source: &weights, prefix, config: &config, precision };
        let h = config.hidden_size;
        let layers = (0..config.num_hidden_layers).map(|i| loader.layer(i)).collect::<Result<_>>()?;
        Ok(Encoder {
            precision,
            word: loader.tensor("embeddings.word_embeddings.weight", &[config.vocab_size, h])?,
            position: loader.vector("embeddings.position_embeddings.weight", &[config.max_position_embeddings, h])?,
            token_type: loader.vector_prefix("embeddings.token_type_embeddings.weight", h)?,
            embed_norm: loader.norm("embeddings.LayerNorm")?,
            layers,
            tokenizer,
            max_seq_length,
            config,
            source: folder.to_path_buf(),
        })
    }

    /// The arithmetic of its linear layers.
    pub fn precision(&self) -> EncoderPrecision {
        self.precision
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.config.hidden_size
    }

    /// Longest input in tokens, special tokens included.
    pub fn max_seq_length(&self) -> usize {
        self.max_seq_length
    }

    /// Where it was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The tokenizer (truncating to `max_seq_length`, no padding).
    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Token ids of `text` as the encoder reads it (special tokens added,
    /// truncated to `max_seq_length`).
    pub fn tokenize(&self, text: &str) -> Result<Vec<u32>> {
        self.tokenizer.encode_with_special(text)
    }

    /// Unit-length embeddings of `texts`, one per text.
    pub fn embed(&self, texts: &[&str]) -> Result<Vec<Vec<f32>>> {
        let ids: Vec<Vec<u32>> = texts.iter().map(|t| self.tokenizer.encode_with_special(t)).collect::<Result<_>>()?;
        self.embed_ids(&ids)
    }

    /// Unit-length embeddings of already tokenized sequences (each non-empty
    /// and at most `max_seq_length` long).
    pub fn embed_ids(&self, sequences: &[Vec<u32>]) -> Result<Vec<Vec<f32>>> {
        for s in sequences {
            if s.is_empty() || s.len() > self.max_seq_length {
                return Err(ModelError::InvalidParameter(format!(
                    "sequence of {} tokens (1..={} allowed)",
                    s.len(),
                    self.max_seq_length
                )));
            }
            if let Some(&id) = s.iter().find(|&&id| id as usize >= self.config.vocab_size) {
                return Err(ModelError::BadToken { id, vocab: self.config.vocab_size });
            }
        }
        // Scratch grows with the tokens of a batch (~17 KB each), so long
        // inputs run as several batches of bounded size; sequences do not
        // see each other, so the result is the same.
        let mut embeddings = Vec::with_capacity(sequences.len());
        for batch in token_bounded_batches(sequences, MAX_BATCH_TOKENS) {
            let hidden = self.encode(batch)?;
            embeddings.extend(mean_pool_normalized(&hidden, batch, self.config.hidden_size));
        }
        Ok(embeddings)
    }

    /// Hidden states of every token of every sequence, concatenated.
    fn encode(&self, sequences: &[Vec<u32>]) -> Result<Vec<f32>> {
        let h = self.config.hidden_size;
        let total: usize = sequences.iter().map(Vec::len).sum();
        let mut x = vec![0f32; total * h];
        let mut row = 0;
        for seq in sequences {
            for (pos, &id) in seq.iter().enumerate() {
                let dst = &mut x[row * h..(row + 1) * h];
                tailor_tensor::quant::dequantize_row(self.word.dtype(), self.word.row_bytes(id as usize), dst)?;
                add_in_place(dst, &self.position[pos * h..(pos + 1) * h]);
                add_in_place(dst, &self.token_type[..h]);
                row += 1;
            }
        }
        let mut normed = vec![0f32; x.len()];
        layer_norm(&x, &self.embed_norm.weight, &self.embed_norm.bias, self.config.layer_norm_eps as f32, &mut normed);
        let mut s = BertScratch::new(sequences, h, self.config.intermediate_size, self.precision);
        for layer in &self.layers {
            self.layer_forward(layer, &mut normed, &mut s)?;
        }
        Ok(normed)
    }

    fn layer_forward(&self, l: &EncoderLayer, x: &mut [f32], s: &mut BertScratch) -> Result<()> {
        let (h, total) = (self.config.hidden_size, s.total);
        let eps = self.config.layer_norm_eps as f32;
        self.project_qkv(l, x, s)?;
        let heads = self.config.num_attention_heads;
        let shape = AttentionShape { n_head: heads, n_kv_head: heads, head_dim: h / heads };
        full_attention_packed(&s.q, &s.k, &s.v, shape, &s.lengths, &mut s.attn);
        match self.precision {
            EncoderPrecision::F32 => l.attn_out.forward(&s.attn, total, &mut s.out, &mut s.linear)?,
            EncoderPrecision::Bf16 => {
                s.rows.fill(&s.attn, h);
                l.attn_out.forward_bf16(&s.rows, false, Bf16Out::F32(&mut s.out))?;
            }
        }
        residual_layer_norm(&mut s.out, x, &l.attn_norm.weight, &l.attn_norm.bias, eps);
        self.feed_forward(l, x, s)?;
        residual_layer_norm(&mut s.out, x, &l.out_norm.weight, &l.out_norm.bias, eps);
        Ok(())
    }

    /// Queries, keys and values of `x` into the scratch.
    fn project_qkv(&self, l: &EncoderLayer, x: &[f32], s: &mut BertScratch) -> Result<()> {
        match self.precision {
            EncoderPrecision::F32 => Linear::forward_many(
                x,
                s.total,
                &mut [(&l.query, &mut s.q), (&l.key, &mut s.k), (&l.value, &mut s.v)],
                &mut s.linear,
            ),
            EncoderPrecision::Bf16 => {
                s.rows.fill(x, self.config.hidden_size);
                l.query.forward_bf16(&s.rows, false, Bf16Out::F32(&mut s.q))?;
                l.key.forward_bf16(&s.rows, false, Bf16Out::F32(&mut s.k))?;
                l.value.forward_bf16(&s.rows, false, Bf16Out::F32(&mut s.v))
            }
        }
    }

    /// `s.out = output(gelu(intermediate(x)))`; in bf16 the GELU'd
    /// activations go straight from one product to the next as bf16.
    fn feed_forward(&self, l: &EncoderLayer, x: &[f32], s: &mut BertScratch) -> Result<()> {
        match self.precision {
            EncoderPrecision::F32 => {
                l.intermediate.forward(x, s.total, &mut s.inter, &mut s.linear)?;
                gelu_in_place(&mut s.inter);
                l.output.forward(&s.inter, s.total, &mut s.out, &mut s.linear)
            }
            EncoderPrecision::Bf16 => {
                s.rows.fill(x, self.config.hidden_size);
                l.intermediate.forward_bf16(&s.rows, true, Bf16Out::Bf16(&mut s.inter_rows))?;
                l.output.forward_bf16(&s.inter_rows, false, Bf16Out::F32(&mut s.out))
            }
        }
    }
}

fn mean_pool_normalized(hidden: &[f32], sequences: &[Vec<u32>], h: usize) -> Vec<Vec<f32>> {
    let mut start = 0;
    sequences
        .iter()
        .map(|seq| {
            let mut mean = vec![0f32; h];
            for row in hidden[start * h..(start + seq.len()) * h].chunks_exact(h) {
                add_in_place(&mut mean, row);
            }
            start += seq.len();
            let inv_len = 1.0 / seq.len() as f32;
            mean.iter_mut().for_each(|v| *v *= inv_len);
            let norm = mean.iter().map(|v| v * v).sum::<f32>().sqrt().max(1e-12);
            mean.iter_mut().for_each(|v| *v /= norm);
            mean
        })
        .collect()
}

struct BertScratch {
    total: usize,
    /// The sequences' lengths (they lie back to back).
    lengths: Vec<usize>,
    q: Vec<f32>,
    k: Vec<f32>,
    v: Vec<f32>,
    attn: Vec<f32>,
    out: Vec<f32>,
    inter: Vec<f32>,
    linear: LinearScratch,
    /// bf16 input of the next product (bf16 precision only).
    rows: Bf16Rows,
    /// The GELU'd intermediate activations in bf16 (bf16 precision only).
    inter_rows: Bf16Rows,
}

impl BertScratch {
    fn new(sequences: &[Vec<u32>], h: usize, inter: usize, precision: EncoderPrecision) -> BertScratch {
        let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
        let total = lengths.iter().sum();
        let z = |n: usize| vec![0f32; n];
        let inter = if precision == EncoderPrecision::F32 { inter } else { 0 };
        BertScratch {
            total,
            lengths,
            q: z(total * h),
            k: z(total * h),
            v: z(total * h),
            attn: z(total * h),
            out: z(total * h),
            inter: z(total * inter),
            linear: LinearScratch::default(),
            rows: Bf16Rows::new(),
            inter_rows: Bf16Rows::new(),
        }
    }
}

#[derive(Deserialize)]
struct SentenceBertConfig {
    max_seq_length: Option<usize>,
}

fn read_max_seq_length(folder: &Path) -> Result<Option<usize>> {
    let path = folder.join("sentence_bert_config.json");
    if !path.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&path).map_err(io_error(&path))?;
    let parsed: SentenceBertConfig =
        serde_json::from_str(&text).map_err(|e| ModelError::Config { path: path.clone(), detail: e.to_string() })?;
    Ok(parsed.max_seq_length)
}

struct BertLoader<'a> {
    source: &'a dyn WeightSource,
    prefix: &'static str,
    config: &'a BertConfig,
    precision: EncoderPrecision,
}

impl BertLoader<'_> {
    fn tensor(&self, name: &str, shape: &[usize]) -> Result<Tensor> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self.source.get(&full)?;
        if tensor.shape() != shape {
            return Err(ModelError::WrongShape {
                path: self.source.path().to_path_buf(),
                name: full,
                expected: shape.to_vec(),
                actual: tensor.shape().to_vec(),
            });
        }
        Ok(tensor)
    }

    fn vector(&self, name: &str, shape: &[usize]) -> Result<Vec<f32>> {
        Ok(self.tensor(name, shape)?.to_f32()?.into_owned())
    }

    /// A table of which only the first row of width `h` is needed.
    fn vector_prefix(&self, name: &str, h: usize) -> Result<Vec<f32>> {
        let full = format!("{}{name}", self.prefix);
        let tensor = self.source.get(&full)?;
        if tensor.row_len() != h || tensor.row_count() == 0 {
            return Err(ModelError::WrongShape {
                path: self.source.path().to_path_buf(),
                name: full,
                expected: vec![2, h],
                actual: tensor.shape().to_vec(),
            });
        }
        Ok(tensor.to_f32()?.into_owned())
    }

    fn linear(&self, name: &str, out: usize, inp: usize) -> Result<Linear> {
        let weight = self.tensor(&format!("{name}.weight"), &[out, inp])?;
        let bias = self.vector(&format!("{name}.bias"), &[out])?;
        let layer = Linear::new(weight, Some(bias));
        match self.precision {
            EncoderPrecision::F32 => Ok(layer),
            EncoderPrecision::Bf16 => layer.with_bf16_weights(),
        }
    }

    fn norm(&self, name: &str) -> Result<LayerNorm> {
        let h = self.config.hidden_size;
        Ok(LayerNorm {
            weight: self.vector(&format!("{name}.weight"), &[h])?,
            bias: self.vector(&format!("{name}.bias"), &[h])?,
        })
    }

    fn layer(&self, i: usize) -> Result<EncoderLayer> {
        let (h, ff) = (self.config.hidden_size, self.config.intermediate_size);
        let p = format!("encoder.layer.{i}");
        Ok(EncoderLayer {
            query: self.linear(&format!("{p}.attention.self.query"), h, h)?,
            key: self.linear(&format!("{p}.attention.self.key"), h, h)?,
            value: self.linear(&format!("{p}.attention.self.value"), h, h)?,
            attn_out: self.linear(&format!("{p}.attention.output.dense"), h, h)?,
            attn_norm: self.norm(&format!("{p}.attention.output.LayerNorm"))?,
            intermediate: self.linear(&format!("{p}.intermediate.dense"), ff, h)?,
            output: self.linear(&format!("{p}.output.dense"), h, ff)?,
            out_norm: self.norm(&format!("{p}.output.LayerNorm"))?,
        })
    }
}

/// Most tokens one encoder pass takes; longer inputs run as several passes.
pub const MAX_BATCH_TOKENS: usize = 8192;

/// `sequences` split, in order, into runs of at most `max_tokens` tokens
/// (a single longer sequence is a run of its own).
fn token_bounded_batches(sequences: &[Vec<u32>], max_tokens: usize) -> Vec<&[Vec<u32>]> {
    let mut batches = Vec::new();
    let (mut start, mut tokens) = (0, 0);
    for (i, sequence) in sequences.iter().enumerate() {
        if i > start && tokens + sequence.len() > max_tokens {
            batches.push(&sequences[start..i]);
            (start, tokens) = (i, 0);
        }
        tokens += sequence.len();
    }
    if start < sequences.len() {
        batches.push(&sequences[start..]);
    }
    batches
}

#[cfg(test)]
mod tests {
    use super::token_bounded_batches;

    #[test]
    fn batches_keep_order_and_stay_under_the_bound() {
        let sequences: Vec<Vec<u32>> = [3, 4, 2, 9, 1, 1].iter().map(|&n| vec![0; n]).collect();
        let sizes: Vec<Vec<usize>> =
            token_bounded_batches(&sequences, 6).iter().map(|batch| batch.iter().map(Vec::len).collect()).collect();
        assert_eq!(sizes, [vec![3], vec![4, 2], vec![9], vec![1, 1]]);
        assert!(token_bounded_batches(&[], 6).is_empty());
    }
}
