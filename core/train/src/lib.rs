//! tailor-train: teaching the served model a style, on the box that serves it.
//!
//! The forward is the serving decoder itself ([`tailor_model::Llama::run_layer`]
//! with a tape); the backward is written by hand, one function per op in
//! tailor-tensor, composed here layer by layer in reverse ([`backward`]).
//! On top: trainable LoRA weights ([`lora`]), AdamW with warmup and decay
//! ([`optim`]), training data in OpenAI's fine-tuning JSONL ([`data`]),
//! atomic checkpoints that survive `kill -9` ([`checkpoint`]) and the loop
//! that ties them together ([`trainer`]), which writes PEFT adapters.

pub mod backward;
pub mod checkpoint;
pub mod data;
pub mod error;
pub mod lora;
pub mod moments8;
pub mod optim;
pub mod plot;
pub mod rng;
pub mod trainer;

pub use error::{Result, TrainError};
pub use lora::{LoraParams, LoraSettings};
pub use trainer::{Datasets, StepReport, Summary, TrainConfig, Trainer};
