//! Trainable LoRA weights: `A` and `B` of every targeted projection in f32,
//! their gradients, and the conversions to what serving and PEFT read.
//!
//! Initialisation follows PEFT's default: `A` from Kaiming-uniform with
//! `a = √5` (uniform in ±1/√in), `B` zero, so training starts at the base.

use crate::checkpoint::OutTensor;
use crate::error::{Result, TrainError};
use crate::rng::Rng;
use std::path::PathBuf;
use std::sync::Arc;
use tailor_model::lora::{LoraConfig, Targets, TrainedModule};
use tailor_model::names::Proj;
use tailor_model::{ActiveAdapter, Adapter, Llama};

/// The LoRA hyper-parameters of a run (PEFT's names).
#[derive(Debug, Clone)]
pub struct LoraSettings {
    /// Rank.
    pub r: usize,
    /// `lora_alpha`.
    pub alpha: f64,
    /// Projections by PEFT name (`q_proj`, …), or all linear layers.
    pub targets: Targets,
    /// `alpha/√r` instead of `alpha/r`.
    pub use_rslora: bool,
    /// `lora_dropout`: the probability each input of a LoRA path is
    /// dropped during training (0: none).
    pub dropout: f64,
}

impl LoraSettings {
    /// The adapter config PEFT would write for these settings.
    pub fn config(&self) -> LoraConfig {
        LoraConfig {
            r: self.r,
            alpha: self.alpha,
            use_rslora: self.use_rslora,
            use_dora: false,
            targets: self.targets.clone(),
            rank_pattern: Vec::new(),
            alpha_pattern: Vec::new(),
            layers_to_transform: None,
            base_model: None,
            dropout: self.dropout,
        }
    }
}

/// One adapted projection's weights and gradients.
#[derive(Debug, Clone)]
pub struct LoraModule {
    /// Its layer.
    pub layer: usize,
    /// Its projection.
    pub proj: Proj,
    /// The rank.
    pub rank: usize,
    /// `alpha/r` (or `alpha/√r`).
    pub scaling: f32,
    /// `A`, `[r, in]`.
    pub a: Vec<f32>,
    /// `B`, `[out, r]`.
    pub b: Vec<f32>,
    /// `∂loss/∂A`.
    pub grad_a: Vec<f32>,
    /// `∂loss/∂B`.
    pub grad_b: Vec<f32>,
}

/// All trainable LoRA weights of a run.
#[derive(Debug, Clone)]
pub struct LoraParams {
    config: LoraConfig,
    modules: Vec<LoraModule>,
    /// `index[layer][proj]`: the module's position in `modules`.
    index: Vec<[Option<usize>; 7]>,
}

impl LoraParams {
    /// Fresh weights (PEFT's initialisation) for every projection of
    /// `model` that `config` targets; none targeted is an error.
    pub fn new(model: &Llama, config: LoraConfig, seed: u64) -> Result<LoraParams> {
        let mut rng = Rng::new(seed);
        let mut modules = Vec::new();
        for layer in 0..model.config().num_hidden_layers {
            for proj in Proj::ALL {
                if !config.targets_module(layer, proj) {
                    continue;
                }
                let (rank, alpha) = config.rank_and_alpha(layer, proj);
                let (out, inp) = proj.shape(model.config());
                let bound = 1.0 / (inp as f32).sqrt();
                let a = (0..rank * inp).map(|_| rng.symmetric(bound)).collect();
                modules.push(LoraModule::new(layer, proj, rank, config.scaling(rank, alpha), a, vec![0.0; out * rank]));
            }
        }
        LoraParams::from_modules(model, config, modules)
    }

    /// Weights given as modules (a checkpoint's, a test's).
    pub fn from_modules(model: &Llama, config: LoraConfig, modules: Vec<LoraModule>) -> Result<LoraParams> {
        if modules.is_empty() {
            return Err(TrainError::Setting("the LoRA targets match no projection of this model".into()));
        }
        let layers = model.config().num_hidden_layers;
        let mut index = vec![[None; 7]; layers];
        for (i, m) in modules.iter().enumerate() {
            let (out, inp) = m.proj.shape(model.config());
            let slot = index.get_mut(m.layer).ok_or_else(|| {
                TrainError::Setting(format!("LoRA module in layer {} of a {layers}-layer model", m.layer))
            })?;
            if m.a.len() != m.rank * inp || m.b.len() != out * m.rank {
                return Err(TrainError::Setting(format!(
                    "{}: A of {} and B of {} values for rank {}, {inp} in, {out} out",
                    m.proj.module(m.layer),
                    m.a.len(),
                    m.b.len(),
                    m.rank
                )));
            }
            slot[m.proj.index()] = Some(i);
        }
        Ok(LoraParams { config, modules, index })
    }

    /// The weights of a loaded adapter, to train further (DoRA refused).
    pub fn from_adapter(model: &Llama, adapter: &Adapter) -> Result<LoraParams> {
        if adapter.is_dora() {
            return Err(TrainError::Setting("training DoRA adapters is not supported".into()));
        }
        let mut modules = Vec::new();
        for layer in 0..model.config().num_hidden_layers {
            for proj in Proj::ALL {
                if let Some(lora) = adapter.layer(layer, proj) {
                    let (a, b) = (lora.a_f32(), lora.b_f32());
                    modules.push(LoraModule::new(layer, proj, lora.rank(), lora.scaling(), a, b));
                }
            }
        }
        LoraParams::from_modules(model, adapter.config().clone(), modules)
    }

    /// The adapter config.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// The modules, layer by layer.
    pub fn modules(&self) -> &[LoraModule] {
        &self.modules
    }

    /// The modules, mutable (the optimizer's view).
    pub fn modules_mut(&mut self) -> &mut [LoraModule] {
        &mut self.modules
    }

    /// The module adapting `proj` of `layer`, if any.
    pub fn module_mut(&mut self, layer: usize, proj: Proj) -> Option<&mut LoraModule> {
        let i = self.index.get(layer)?[proj.index()]?;
        Some(&mut self.modules[i])
    }

    /// Trainable values.
    pub fn parameter_count(&self) -> usize {
        self.modules.iter().map(|m| m.a.len() + m.b.len()).sum()
    }

    /// Sets every gradient to zero.
    pub fn zero_grads(&mut self) {
        for m in &mut self.modules {
            m.grad_a.fill(0.0);
            m.grad_b.fill(0.0);
        }
    }

    /// The current weights as a servable adapter at scale 1: what the
    /// training forward runs through the serving decoder.
    pub fn active(&self, model: &Llama) -> Result<ActiveAdapter> {
        let modules: Vec<TrainedModule<'_>> =
            self.modules.iter().map(|m| TrainedModule { layer: m.layer, proj: m.proj, a: &m.a, b: &m.b }).collect();
        let adapter = Adapter::from_f32(self.config.clone(), model, &modules, PathBuf::from("(training)"))?;
        Ok(ActiveAdapter::new(Arc::new(adapter), 1.0)?)
    }
}

impl LoraModule {
    /// A module with zero gradients.
    pub fn new(layer: usize, proj: Proj, rank: usize, scaling: f32, a: Vec<f32>, b: Vec<f32>) -> LoraModule {
        let (grad_a, grad_b) = (vec![0.0; a.len()], vec![0.0; b.len()]);
        LoraModule { layer, proj, rank, scaling, a, b, grad_a, grad_b }
    }

    /// PEFT's key prefix for this module
    /// (`base_model.model.model.layers.{l}.self_attn.q_proj`).
    pub fn peft_key(&self) -> String {
        format!("base_model.model.{}", self.proj.module(self.layer))
    }
}

/// Writes `params` as a PEFT adapter folder: `adapter_config.json` and
/// `adapter_model.safetensors` with PEFT's keys
/// (`base_model.model.….lora_A.weight`, `[r, in]`; `lora_B.weight`,
/// `[out, r]`) in f32, each file replaced atomically.
pub fn save_peft(params: &LoraParams, folder: &std::path::Path, base_model: &str) -> Result<()> {
    std::fs::create_dir_all(folder).map_err(crate::error::io_error(folder))?;
    let config = peft_config_json(params.config(), base_model);
    let text = serde_json::to_string_pretty(&config).map_err(|e| TrainError::Setting(e.to_string()))? + "\n";
    crate::checkpoint::write_atomic(&folder.join(tailor_model::lora::CONFIG_FILE), text.as_bytes())?;
    let mut tensors = Vec::new();
    for m in params.modules() {
        let (out, inp) = (m.b.len() / m.rank, m.a.len() / m.rank);
        tensors.push((format!("{}.lora_A.weight", m.peft_key()), OutTensor::f32(vec![m.rank, inp], &m.a)));
        tensors.push((format!("{}.lora_B.weight", m.peft_key()), OutTensor::f32(vec![out, m.rank], &m.b)));
    }
    crate::checkpoint::write_safetensors(&folder.join(tailor_model::lora::WEIGHTS_FILE), tensors)
}

/// `adapter_config.json` as PEFT writes it for a plain LoRA.
fn peft_config_json(config: &LoraConfig, base_model: &str) -> serde_json::Value {
    let targets = match &config.targets {
        Targets::AllLinear => serde_json::json!("all-linear"),
        Targets::Regex(pattern) => serde_json::json!(pattern),
        Targets::Names(names) => serde_json::json!(names),
    };
    serde_json::json!({
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model,
        "r": config.r,
        "lora_alpha": config.alpha,
        "target_modules": targets,
        "lora_dropout": config.dropout,
        "bias": "none",
        "use_rslora": config.use_rslora,
        "use_dora": false,
        "fan_in_fan_out": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "layers_to_transform": config.layers_to_transform,
        "layers_pattern": null,
        "rank_pattern": {},
        "alpha_pattern": {},
        "modules_to_save": null,
        "revision": null,
    })
}
