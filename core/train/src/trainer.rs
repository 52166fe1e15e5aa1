//! The training loop: epochs over shuffled examples, gradient accumulation,
//! clipping, AdamW on the LoRA weights, evaluation, checkpoints, a JSONL
//! metrics log, and the final PEFT adapter.
//!
//! Everything a step depends on (weights, moments, the epoch's order, the
//! cursor in it) is in the checkpoint, and the kernels give the same bits
//! for the same thread count, so a run resumed after `kill -9` ends with
//! exactly the adapter an uninterrupted run writes.

use crate::backward::{
    accumulate_full_gradients, accumulate_gradients, forward_loss, Checkpointing, Example, FullGrads,
};
use crate::checkpoint::{self, LoopState, OutTensor, Stored};
use crate::data::Dataset;
use crate::error::{io_error, Result, TrainError};
use crate::lora::{save_peft, LoraParams, LoraSettings};
use crate::optim::{clip_gradients, AdamState, AdamW, Decay, Param, Schedule};
use crate::rng::Rng;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;
use tailor_model::lora::{dropout_seed, LoraDropout};
use tailor_model::names::Proj;
use tailor_model::{Adapter, AdapterLimits, Llama};

/// The metrics log, one JSON object per line, beside the adapter.
pub const METRICS_FILE: &str = "metrics.jsonl";

/// A run's settings.
#[derive(Debug, Clone)]
pub struct TrainConfig {
    /// The adapter to train.
    pub lora: LoraSettings,
    /// Passes over the training set.
    pub epochs: usize,
    /// Examples per micro-batch.
    pub batch_size: usize,
    /// Micro-batches per optimizer step.
    pub grad_accum: usize,
    /// Peak learning rate.
    pub learning_rate: f32,
    /// Share of the steps spent warming up.
    pub warmup_ratio: f32,
    /// Shape of the learning rate after warmup.
    pub decay: Decay,
    /// AdamW's settings.
    pub adamw: AdamW,
    /// Global gradient-norm bound (0: no clipping).
    pub max_grad_norm: f32,
    /// Seed of the initialisation and the data order.
    pub seed: u64,
    /// A checkpoint every this many steps (and at the end).
    pub checkpoint_every: usize,
    /// Checkpoints kept.
    pub keep_checkpoints: usize,
    /// Evaluation every this many steps (0: at the end of each epoch).
    pub eval_every: usize,
    /// What the forward keeps for the backward.
    pub checkpointing: Checkpointing,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            lora: LoraSettings {
                r: 8,
                alpha: 16.0,
                targets: tailor_model::lora::Targets::AllLinear,
                use_rslora: false,
                dropout: 0.0,
            },
            epochs: 3,
            batch_size: 4,
            grad_accum: 1,
            learning_rate: 1e-3,
            warmup_ratio: 0.05,
            decay: Decay::Cosine,
            adamw: AdamW::default(),
            max_grad_norm: 1.0,
            seed: 42,
            checkpoint_every: 50,
            keep_checkpoints: 2,
            eval_every: 0,
            checkpointing: Checkpointing::Off,
        }
    }
}

impl TrainConfig {
    fn check(&self) -> Result<()> {
        let positive = [
            ("epochs", self.epochs),
            ("batch_size", self.batch_size),
            ("grad_accum", self.grad_accum),
            ("r", self.lora.r),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, v)| *v == 0) {
            return Err(TrainError::Setting(format!("{name} must be at least 1")));
        }
        if !(self.learning_rate.is_finite() && self.learning_rate > 0.0) {
            return Err(TrainError::Setting(format!("learning rate {} must be positive", self.learning_rate)));
        }
        if !(0.0..1.0).contains(&self.warmup_ratio) {
            return Err(TrainError::Setting(format!("warmup ratio {} must be in [0, 1)", self.warmup_ratio)));
        }
        if !(0.0..1.0).contains(&self.lora.dropout) {
            return Err(TrainError::Setting(format!("LoRA dropout {} must be in [0, 1)", self.lora.dropout)));
        }
        Ok(())
    }

    /// A digest of everything that shapes the run's numbers.
    fn fingerprint(&self, base: &str, train: &Dataset) -> String {
        let data: Vec<u8> = train
            .examples
            .iter()
            .flat_map(|e| e.tokens.iter().map(|t| *t as u8).chain(e.targets.iter().map(|&t| t as u8)))
            .collect();
        let settings = format!("{self:?}|{base}|{}", train.examples.len());
        format!("{:016x}{:016x}", checkpoint::fnv1a(settings.as_bytes()), checkpoint::fnv1a(&data))
    }
}

/// One optimizer step, as reported to the caller and the metrics log.
#[derive(Debug, Clone, Serialize)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: usize,
    /// Steps in the run.
    pub total_steps: usize,
    /// Epoch (0-based).
    pub epoch: usize,
    /// Mean cross-entropy over the step's predicted tokens.
    pub loss: f64,
    /// Learning rate used.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Tokens run through (forward and backward) this step.
    pub tokens: usize,
    /// Tokens per second over this step.
    pub tokens_per_second: f64,
    /// Mean cross-entropy on the validation set, when evaluated.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub eval_loss: Option<f64>,
}

/// How a run ended.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Steps in the run.
    pub steps: usize,
    /// Step it resumed from (0: a fresh start).
    pub resumed_from: usize,
    /// The last step's loss.
    pub final_loss: f64,
    /// The last validation loss, if there is a validation set.
    pub final_eval_loss: Option<f64>,
    /// The adapter folder.
    pub adapter: PathBuf,
}

/// What a run trains: LoRA weights beside a frozen base, or every weight
/// of the base itself.
enum Weights<'m> {
    /// LoRA on a base shared with others (serving).
    Lora { base: &'m Llama, lora: LoraParams },
    /// Every weight of a base this run owns, with their gradients.
    Full { base: &'m mut Llama, grads: Box<FullGrads> },
}

/// The file of a full fine-tune's weights in its checkpoints.
const FULL_WEIGHTS_FILE: &str = "weights.safetensors";

/// A run's examples.
#[derive(Debug, Clone)]
pub struct Datasets {
    /// What the model learns from.
    pub train: Dataset,
    /// What the validation loss is measured on.
    pub eval: Option<Dataset>,
}

/// A run: the model, data, trainable weights and loop state.
pub struct Trainer<'m> {
    weights: Weights<'m>,
    base_name: String,
    config: TrainConfig,
    train: Dataset,
    eval: Option<Dataset>,
    adam: AdamState,
    state: LoopState,
    out: PathBuf,
    resumed_from: usize,
}

impl<'m> Trainer<'m> {
    /// A LoRA run on `model` writing to `out`; with `resume`, it continues
    /// from the newest intact checkpoint there (damaged ones reported
    /// through `warn`).
    pub fn new(
        model: &'m Llama,
        base_name: &str,
        config: TrainConfig,
        data: Datasets,
        out: &Path,
        resume: bool,
        warn: &mut dyn FnMut(String),
    ) -> Result<Trainer<'m>> {
        let lora = LoraParams::new(model, config.lora.config(), config.seed)?;
        Trainer::start(Weights::Lora { base: model, lora }, base_name, config, data, out, resume, warn)
    }

    /// A full fine-tuning run: every weight of `model` (converted to f32)
    /// is trained in place, with AdamW moments for each (for small models:
    /// four f32 copies of the weights in memory). The CLI writes the result
    /// with `tailor_model::merge::save_model`.
    pub fn new_full(
        model: &'m mut Llama,
        base_name: &str,
        config: TrainConfig,
        data: Datasets,
        out: &Path,
        resume: bool,
        warn: &mut dyn FnMut(String),
    ) -> Result<Trainer<'m>> {
        model.parameters_mut()?; // converts every weight to f32 now, and refuses what cannot be trained
        model.sync_tied();
        let grads = Box::new(FullGrads::new(model));
        Trainer::start(Weights::Full { base: model, grads }, base_name, config, data, out, resume, warn)
    }

    fn start(
        weights: Weights<'m>,
        base_name: &str,
        config: TrainConfig,
        data: Datasets,
        out: &Path,
        resume: bool,
        warn: &mut dyn FnMut(String),
    ) -> Result<Trainer<'m>> {
        let Datasets { train, eval } = data;
        config.check()?;
        if train.examples.is_empty() {
            return Err(TrainError::Setting("the training set is empty".into()));
        }
        let method = if matches!(weights, Weights::Full { .. }) { "full" } else { "lora" };
        let fingerprint = config.fingerprint(&format!("{base_name}|{method}"), &train);
        std::fs::create_dir_all(out).map_err(io_error(out))?;
        let fresh = LoopState { step: 0, epoch: 0, cursor: 0, rng: Rng::new(config.seed), fingerprint };
        let mut trainer = Trainer {
            weights,
            base_name: base_name.to_string(),
            config,
            train,
            eval,
            adam: AdamState::default(),
            state: fresh,
            out: out.to_path_buf(),
            resumed_from: 0,
        };
        if resume {
            trainer.resume(warn)?;
        } else if out.join(checkpoint::CHECKPOINTS).exists() {
            return Err(TrainError::Setting(format!(
                "{} already holds a run's checkpoints: pass --resume to continue it, or choose another --out",
                out.display()
            )));
        }
        if trainer.state.step == 0 {
            // A fresh start (or a resume before the first checkpoint): the
            // log starts over too.
            let metrics = out.join(METRICS_FILE);
            if metrics.exists() {
                std::fs::remove_file(&metrics).map_err(io_error(&metrics))?;
            }
        }
        Ok(trainer)
    }

    /// The model being trained (as it is now).
    pub fn model(&self) -> &Llama {
        match &self.weights {
            Weights::Lora { base, .. } => base,
            Weights::Full { base, .. } => base,
        }
    }

    fn resume(&mut self, warn: &mut dyn FnMut(String)) -> Result<()> {
        let Some(restored) = checkpoint::latest(&self.out, &self.state.fingerprint, warn)? else {
            return Ok(());
        };
        // This run wrote the checkpoint: only its own settings bound it.
        let limits = AdapterLimits { max_rank: usize::MAX, max_file_bytes: u64::MAX };
        match &mut self.weights {
            Weights::Lora { base, lora } => {
                let adapter = Adapter::load(&restored.folder, base, limits)?;
                let loaded = LoraParams::from_adapter(base, &adapter)?;
                // Scaling and the rest come from this run's config, not the file.
                *lora = LoraParams::from_modules(base, self.config.lora.config(), loaded.modules().to_vec())?;
            }
            Weights::Full { base, .. } => restore_weights(base, &restored.folder.join(FULL_WEIGHTS_FILE))?,
        }
        self.adam = restored.adam;
        self.state = restored.state;
        self.resumed_from = self.state.step;
        truncate_metrics(&self.out.join(METRICS_FILE), self.state.step)?;
        Ok(())
    }

    /// Optimizer steps per epoch.
    pub fn steps_per_epoch(&self) -> usize {
        self.train.examples.len().div_ceil(self.examples_per_step())
    }

    /// Optimizer steps in the run.
    pub fn total_steps(&self) -> usize {
        self.steps_per_epoch() * self.config.epochs
    }

    /// The step the run starts at (after a resume).
    pub fn start_step(&self) -> usize {
        self.state.step
    }

    /// Trainable values.
    pub fn parameter_count(&self) -> usize {
        match &self.weights {
            Weights::Lora { lora, .. } => lora.parameter_count(),
            Weights::Full { base, .. } => {
                let cfg = base.config();
                let per_layer: usize = Proj::ALL.iter().map(|p| p.shape(cfg).0 * p.shape(cfg).1).sum();
                let head = if base.is_tied() { 0 } else { cfg.vocab_size * cfg.hidden_size };
                cfg.num_hidden_layers * (per_layer + 2 * cfg.hidden_size)
                    + cfg.vocab_size * cfg.hidden_size
                    + cfg.hidden_size
                    + head
            }
        }
    }

    fn examples_per_step(&self) -> usize {
        self.config.batch_size * self.config.grad_accum
    }

    fn schedule(&self) -> Schedule {
        let total = self.total_steps();
        let warmup = (total as f32 * self.config.warmup_ratio).round() as usize;
        Schedule { peak: self.config.learning_rate, warmup, total, decay: self.config.decay }
    }

    /// The epoch's order of examples: a shuffle seeded by (seed, epoch).
    fn order(&self, epoch: usize) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.train.examples.len()).collect();
        Rng::new(self.config.seed ^ (epoch as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15)).shuffle(&mut order);
        order
    }

    /// Trains to the end, reporting each step. `between_steps` runs before
    /// each step: true stops the run ([`TrainError::Cancelled`]); it may
    /// also block, to let other work have the CPU.
    pub fn run(&mut self, on_step: &mut dyn FnMut(&StepReport), between_steps: &dyn Fn() -> bool) -> Result<Summary> {
        let total = self.total_steps();
        let mut metrics = open_metrics(&self.out.join(METRICS_FILE))?;
        let mut last_loss = f64::NAN;
        let mut last_eval = None;
        if self.state.step == 0 && self.eval.is_some() {
            // The base's validation loss, where the curve starts.
            let loss = self.evaluate()?;
            let line = serde_json::json!({"step": 0, "eval_loss": loss});
            writeln!(metrics, "{line}").map_err(io_error(&self.out.join(METRICS_FILE)))?;
            last_eval = Some(loss);
        }
        while self.state.step < total {
            if between_steps() {
                return Err(TrainError::Cancelled { step: self.state.step });
            }
            let mut report = self.step()?;
            last_loss = report.loss;
            let epoch_done = self.state.cursor == 0;
            let eval_due = match self.config.eval_every {
                0 => epoch_done,
                every => self.state.step.is_multiple_of(every) || self.state.step == total,
            };
            if eval_due && self.eval.is_some() {
                report.eval_loss = Some(self.evaluate()?);
                last_eval = report.eval_loss;
            }
            write_metrics(&mut metrics, &self.out.join(METRICS_FILE), &report)?;
            on_step(&report);
            if self.state.step.is_multiple_of(self.config.checkpoint_every.max(1)) || self.state.step == total {
                self.save_checkpoint()?;
            }
        }
        if last_eval.is_none() && self.eval.is_some() {
            last_eval = Some(self.evaluate()?);
        }
        if let Weights::Lora { lora, .. } = &self.weights {
            save_peft(lora, &self.out, &self.base_name)?;
        }
        Ok(Summary {
            steps: total,
            resumed_from: self.resumed_from,
            final_loss: last_loss,
            final_eval_loss: last_eval,
            adapter: self.out.clone(),
        })
    }

    /// One optimizer step over the next examples of the epoch.
    fn step(&mut self) -> Result<StepReport> {
        let started = Instant::now();
        let order = self.order(self.state.epoch);
        let end = (self.state.cursor + self.examples_per_step()).min(order.len());
        let batch: Vec<&Example> = order[self.state.cursor..end].iter().map(|&i| &self.train.examples[i]).collect();
        let targets: usize = batch.iter().map(|e| e.target_count()).sum();
        let scale = 1.0 / targets.max(1) as f32;
        let lr = self.schedule().lr(self.state.step);
        let (micro, checkpointing) = (self.config.batch_size, self.config.checkpointing);
        let (loss_sum, grad_norm) = match &mut self.weights {
            Weights::Lora { base, lora } => {
                lora.zero_grads();
                let adapter = lora.active(base)?;
                let (p, seed, step) = (lora.config().dropout, self.config.seed, self.state.step);
                let mut loss_sum = 0f64;
                for (i, part) in batch.chunks(micro).enumerate() {
                    let dropout = LoraDropout::new(p, dropout_seed(seed, step, i))?;
                    loss_sum += accumulate_gradients(base, lora, &adapter, dropout, part, scale, checkpointing)?;
                }
                let mut grads: Vec<&mut [f32]> =
                    lora.modules_mut().iter_mut().flat_map(|m| [&mut m.grad_a[..], &mut m.grad_b[..]]).collect();
                (loss_sum, clip_gradients(&mut grads, self.config.max_grad_norm))
            }
            Weights::Full { base, grads } => {
                grads.zero();
                let mut loss_sum = 0f64;
                for part in batch.chunks(micro) {
                    loss_sum += accumulate_full_gradients(base, grads, part, scale, checkpointing)?;
                }
                let mut all: Vec<&mut [f32]> = grads.named_mut().into_iter().map(|(_, g)| g).collect();
                (loss_sum, clip_gradients(&mut all, self.config.max_grad_norm))
            }
        };
        let loss = loss_sum / targets.max(1) as f64;
        if !loss.is_finite() || !grad_norm.is_finite() {
            return Err(TrainError::Diverged { step: self.state.step + 1, loss });
        }
        match &mut self.weights {
            Weights::Lora { lora, .. } => {
                let mut params: Vec<Param<'_>> = lora
                    .modules_mut()
                    .iter_mut()
                    .flat_map(|m| {
                        [Param { value: &mut m.a, grad: &m.grad_a }, Param { value: &mut m.b, grad: &m.grad_b }]
                    })
                    .collect();
                self.config.adamw.step(&mut self.adam, &mut params, lr);
            }
            Weights::Full { base, grads } => {
                let mut by_name: std::collections::BTreeMap<String, &mut [f32]> =
                    grads.named_mut().into_iter().collect();
                let mut params = Vec::new();
                for (name, value) in base.parameters_mut()? {
                    let grad =
                        by_name.remove(&name).ok_or_else(|| TrainError::Setting(format!("no gradient for {name}")))?;
                    params.push(Param { value, grad });
                }
                self.config.adamw.step(&mut self.adam, &mut params, lr);
                drop(params);
                base.sync_tied();
            }
        }
        self.state.step += 1;
        self.state.cursor = end;
        if end == order.len() {
            self.state.epoch += 1;
            self.state.cursor = 0;
        }
        let tokens: usize = batch.iter().map(|e| e.tokens.len()).sum();
        let seconds = started.elapsed().as_secs_f64();
        Ok(StepReport {
            step: self.state.step,
            total_steps: self.total_steps(),
            epoch: self.state.epoch.min(self.config.epochs - 1),
            loss,
            lr,
            grad_norm,
            tokens,
            tokens_per_second: tokens as f64 / seconds.max(1e-9),
            eval_loss: None,
        })
    }

    /// Mean cross-entropy over the validation set's predicted tokens.
    pub fn evaluate(&self) -> Result<f64> {
        let Some(eval) = &self.eval else { return Ok(f64::NAN) };
        let adapter = match &self.weights {
            Weights::Lora { base, lora } => Some(lora.active(base)?),
            Weights::Full { .. } => None,
        };
        let mut sum = 0f64;
        let examples: Vec<&Example> = eval.examples.iter().collect();
        for batch in examples.chunks(self.config.batch_size) {
            sum += forward_loss(self.model(), adapter.as_ref(), batch)?;
        }
        Ok(sum / eval.target_tokens().max(1) as f64)
    }

    fn save_checkpoint(&mut self) -> Result<()> {
        let (state, adam, keep, name) = (&self.state, &self.adam, self.config.keep_checkpoints, &self.base_name);
        match &mut self.weights {
            Weights::Lora { lora, .. } => {
                checkpoint::save(&self.out, state, adam, keep, |folder| save_peft(lora, folder, name))?;
            }
            Weights::Full { base, .. } => {
                checkpoint::save(&self.out, state, adam, keep, |folder| save_weights(base, folder))?;
            }
        }
        Ok(())
    }

    /// The LoRA weights, when this is a LoRA run.
    pub fn lora(&self) -> Option<&LoraParams> {
        match &self.weights {
            Weights::Lora { lora, .. } => Some(lora),
            Weights::Full { .. } => None,
        }
    }
}

/// A full fine-tune's weights, flat f32 by name, into a checkpoint folder.
fn save_weights(model: &mut Llama, folder: &Path) -> Result<()> {
    let tensors = model.parameters_mut()?.into_iter().map(|(name, values)| (name, OutTensor::flat(values))).collect();
    checkpoint::write_safetensors(&folder.join(FULL_WEIGHTS_FILE), tensors)
}

/// Puts a checkpoint's weights back into `model`.
fn restore_weights(model: &mut Llama, path: &Path) -> Result<()> {
    let mut stored = checkpoint::read_tensors(path)?;
    let bad = |detail: String| TrainError::Checkpoint { path: path.to_path_buf(), detail };
    for (name, values) in model.parameters_mut()? {
        let Some(Stored::F32(saved)) = stored.remove(&name) else {
            return Err(bad(format!("no f32 tensor {name}")));
        };
        if saved.len() != values.len() {
            return Err(bad(format!("{name}: {} values for {}", saved.len(), values.len())));
        }
        values.copy_from_slice(&saved);
    }
    model.sync_tied();
    Ok(())
}

fn open_metrics(path: &Path) -> Result<std::fs::File> {
    std::fs::OpenOptions::new().create(true).append(true).open(path).map_err(io_error(path))
}

fn write_metrics(file: &mut std::fs::File, path: &Path, report: &StepReport) -> Result<()> {
    let line = serde_json::to_string(report).map_err(|e| TrainError::Setting(e.to_string()))?;
    writeln!(file, "{line}").map_err(io_error(path))
}

/// Drops log lines past `step`: a resumed run writes them again.
fn truncate_metrics(path: &Path, step: usize) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else { return Ok(()) };
    let kept: String = text
        .lines()
        .filter(|line| {
            serde_json::from_str::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s as usize <= step)
        })
        .map(|line| format!("{line}\n"))
        .collect();
    checkpoint::write_atomic(path, kept.as_bytes())
}
