//! tailor-model: everything between a model file and a stream of tokens.
//!
//! Loading (GGUF and Hugging Face safetensors folders, memory-mapped),
//! tokenizers, the Llama-family decoder with its KV cache, sampling, chat
//! templates and the generation loop. Built on tailor-tensor's kernels.

pub mod bert;
pub mod cache;
pub mod chat;
pub mod config;
pub mod convert;
pub mod decoder;
#[cfg(feature = "cuda")]
pub mod device;
pub mod error;
pub mod generate;
pub mod gguf;
pub mod grammar;
pub mod kv_cache;
mod layer;
pub mod linear;
pub mod llama;
pub mod lora;
pub mod merge;
pub mod model;
pub mod names;
pub mod sampler;
pub mod synth;
pub mod tape;
pub mod tokenizer;
pub mod weights;

pub use bert::{Encoder, EncoderPrecision, PRECISION_ENV};
pub use chat::{ChatTemplate, Message};
pub use config::LlamaConfig;
pub use decoder::{CpuDecoder, Decoder, DecoderCache};
pub use error::{ModelError, Result};
pub use generate::{generate, generate_on, FinishReason, GenerateParams, Generation, Sequence, Step, TokenEvent};
pub use grammar::JsonGrammar;
pub use kv_cache::KvCache;
pub use llama::{ConvertScope, DecodeBuffers, LayeredPrefill, Llama, Logits};
pub use lora::{ActiveAdapter, Adapter, AdapterLimits};
pub use model::{ChatExample, LoadOptions, Model};
pub use sampler::{Sampler, SamplingParams};
pub use tape::LayerTape;
