//! Full fine-tuning through the trainer on a tiny random decoder: the loss
//! falls, and a run stopped after a checkpoint and resumed in a fresh
//! process state ends with exactly the weights of an uninterrupted run;
//! the same with 8-bit AdamW moments, whose run follows the f32 one.

mod common;

use common::{tiny_config, tiny_model, tiny_model_shaped};
use std::cell::Cell;
use std::path::{Path, PathBuf};
use tailor_model::Llama;
use tailor_train::backward::Example;
use tailor_train::data::Dataset;
use tailor_train::optim::{AdamW, StateBits};
use tailor_train::{Datasets, TrainConfig, TrainError, Trainer};

fn data() -> Datasets {
    let examples = (0..6u32)
        .map(|i| {
            let tokens: Vec<u32> = (0..10).map(|t| (i * 7 + t * 3) % 50).collect();
            Example { targets: (0..10).map(|t| t >= 3).collect(), tokens }
        })
        .collect();
    Datasets { train: Dataset { examples, truncated: 0 }, eval: None }
}

fn config() -> TrainConfig {
    TrainConfig { epochs: 2, batch_size: 2, learning_rate: 1e-2, checkpoint_every: 2, ..TrainConfig::default() }
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tailor-full-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    dir
}

fn weights(model: &mut Llama) -> Vec<Vec<f32>> {
    model.parameters_mut().unwrap().into_iter().map(|(_, v)| v.to_vec()).collect()
}

fn train(model: &mut Llama, out: &Path, resume: bool, stop_before_call: usize) -> Result<Vec<f64>, TrainError> {
    train_with(config(), model, out, resume, stop_before_call)
}

fn train_with(
    config: TrainConfig,
    model: &mut Llama,
    out: &Path,
    resume: bool,
    stop_before_call: usize,
) -> Result<Vec<f64>, TrainError> {
    let mut trainer = Trainer::new_full(model, "tiny", config, data(), out, resume, &mut |w| panic!("{w}"))?;
    let calls = Cell::new(0);
    let mut losses = Vec::new();
    trainer.run(&mut |r| losses.push(r.loss), &|| {
        calls.set(calls.get() + 1);
        calls.get() == stop_before_call
    })?;
    Ok(losses)
}

#[test]
fn full_fine_tuning_lowers_the_loss_and_resumes_exactly() {
    let whole = scratch("whole");
    let mut uninterrupted = tiny_model(21);
    let losses = train(&mut uninterrupted, &whole, false, 0).expect("trains");
    assert_eq!(losses.len(), 6);
    assert!(losses[5] < losses[0], "the loss falls: {losses:?}");

    let stopped = scratch("stopped");
    let mut first = tiny_model(21);
    let cancelled = train(&mut first, &stopped, false, 4);
    assert!(matches!(cancelled, Err(TrainError::Cancelled { step: 3 })), "{cancelled:?}");
    let mut resumed = tiny_model(21); // a fresh start: the weights come from the checkpoint of step 2
    let rest = train(&mut resumed, &stopped, true, 0).expect("resumes");
    assert_eq!(rest.len(), 4, "steps 3 to 6");
    assert_eq!(weights(&mut resumed), weights(&mut uninterrupted), "bit-identical to the uninterrupted run");
    std::fs::remove_dir_all(&whole).unwrap();
    std::fs::remove_dir_all(&stopped).unwrap();
}

/// A tiny model whose embedding and head (300 × 32) are large enough for
/// 8-bit moments; its projections and norms keep f32 moments.
fn model_with_8bit_sized_tensors() -> Llama {
    tiny_model_shaped(tailor_model::LlamaConfig { vocab_size: 300, ..tiny_config() }, 5)
}

#[test]
fn eight_bit_moments_resume_exactly_and_follow_the_f32_run() {
    let eight_bit = TrainConfig { adamw: AdamW { state: StateBits::Int8, ..AdamW::default() }, ..config() };
    let whole = scratch("whole8");
    let mut uninterrupted = model_with_8bit_sized_tensors();
    let losses = train_with(eight_bit.clone(), &mut uninterrupted, &whole, false, 0).expect("trains");
    assert!(losses[5] < losses[0], "the loss falls: {losses:?}");
    let optimizer = std::fs::read(whole.join("checkpoints/step-00000006/optimizer.safetensors")).unwrap();
    let file = safetensors::SafeTensors::deserialize(&optimizer).unwrap();
    let codes = file.names().into_iter().filter(|name| name.ends_with(".codes")).count();
    assert_eq!(codes, 4, "the embedding's and the head's two moments as 8-bit codes, the rest f32");

    let stopped = scratch("stopped8");
    let mut first = model_with_8bit_sized_tensors();
    let cancelled = train_with(eight_bit.clone(), &mut first, &stopped, false, 4);
    assert!(matches!(cancelled, Err(TrainError::Cancelled { step: 3 })), "{cancelled:?}");
    let mut resumed = model_with_8bit_sized_tensors();
    train_with(eight_bit, &mut resumed, &stopped, true, 0).expect("resumes");
    assert_eq!(weights(&mut resumed), weights(&mut uninterrupted), "bit-identical to the uninterrupted run");

    let f32_run = scratch("f32");
    let mut reference = model_with_8bit_sized_tensors();
    let reference_losses = train_with(config(), &mut reference, &f32_run, false, 0).expect("trains");
    for (step, (a, b)) in losses.iter().zip(&reference_losses).enumerate() {
        assert!((a - b).abs() <= 0.02 * b.abs(), "step {step}: 8-bit {a} vs f32 {b}");
    }
    for dir in [whole, stopped, f32_run] {
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
