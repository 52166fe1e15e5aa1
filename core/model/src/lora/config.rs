//! `adapter_config.json`: what a PEFT LoRA config says, checked, and how
//! it maps onto this decoder's modules (targets, per-module ranks and
//! alphas, the scaling), by PEFT's own matching rules.

use super::CONFIG_FILE;
use crate::error::{ModelError, Result};
use crate::names::Proj;
use std::path::Path;

/// Which modules an adapter's config targets (`target_modules`).
#[derive(Debug, Clone, PartialEq)]
pub enum Targets {
    /// A list of module names: a module matches when its name equals one
    /// or ends with `.` + one.
    Names(Vec<String>),
    /// A regular expression matched against the whole module name.
    Regex(String),
    /// Every linear but the output layer (`"all-linear"`).
    AllLinear,
}

/// `adapter_config.json`, checked: what tailor needs from it.
#[derive(Debug, Clone)]
pub struct LoraConfig {
    /// Default rank.
    pub r: usize,
    /// Default alpha.
    pub alpha: f64,
    /// Scaling `alpha/√r` instead of `alpha/r`.
    pub use_rslora: bool,
    /// Weight-decomposed LoRA (a magnitude vector per module).
    pub use_dora: bool,
    /// The targeted modules.
    pub targets: Targets,
    /// Per-module ranks: (pattern, rank).
    pub rank_pattern: Vec<(String, usize)>,
    /// Per-module alphas: (pattern, alpha).
    pub alpha_pattern: Vec<(String, f64)>,
    /// Only these layers, when set.
    pub layers_to_transform: Option<Vec<usize>>,
    /// The base the adapter was trained on, as its config names it.
    pub base_model: Option<String>,
    /// `lora_dropout`: training only (serving never drops out).
    pub dropout: f64,
}

/// Reads and checks `adapter_config.json`.
pub fn read_config(folder: &Path) -> Result<LoraConfig> {
    let path = folder.join(CONFIG_FILE);
    if !path.is_file() {
        return Err(ModelError::MissingFile { path, what: "the adapter's config (a PEFT LoRA adapter folder)" });
    }
    let text = std::fs::read_to_string(&path).map_err(crate::error::io_error(&path))?;
    let json: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| ModelError::Adapter { path: path.clone(), detail: e.to_string() })?;
    ConfigReader { path: &path, json: &json }.read()
}

struct ConfigReader<'a> {
    path: &'a Path,
    json: &'a serde_json::Value,
}

impl ConfigReader<'_> {
    fn fail(&self, detail: impl Into<String>) -> ModelError {
        ModelError::Adapter { path: self.path.to_path_buf(), detail: detail.into() }
    }

    fn field(&self, name: &str) -> Option<&serde_json::Value> {
        self.json.get(name).filter(|v| !v.is_null())
    }

    fn read(&self) -> Result<LoraConfig> {
        let peft_type = self.field("peft_type").and_then(|v| v.as_str()).unwrap_or("");
        if peft_type != "LORA" {
            return Err(self.fail(format!("peft_type {peft_type:?}: only LORA adapters are served")));
        }
        self.refuse_unsupported()?;
        let r = self
            .field("r")
            .and_then(|v| v.as_u64())
            .filter(|&r| r > 0)
            .ok_or_else(|| self.fail("`r` must be a positive integer"))?;
        let alpha = match self.field("lora_alpha") {
            None => 8.0,
            Some(v) => v.as_f64().ok_or_else(|| self.fail("`lora_alpha` must be a number"))?,
        };
        let flag = |name: &str| self.field(name).and_then(|v| v.as_bool()).unwrap_or(false);
        Ok(LoraConfig {
            r: r as usize,
            alpha,
            use_rslora: flag("use_rslora"),
            use_dora: flag("use_dora"),
            targets: self.targets()?,
            rank_pattern: self.pattern("rank_pattern", |v| v.as_u64().filter(|&r| r > 0).map(|r| r as usize))?,
            alpha_pattern: self.pattern("alpha_pattern", |v| v.as_f64())?,
            layers_to_transform: self.layers()?,
            base_model: self.field("base_model_name_or_path").and_then(|v| v.as_str()).map(str::to_string),
            dropout: self.dropout()?,
        })
    }

    /// `lora_dropout`, in [0, 1).
    fn dropout(&self) -> Result<f64> {
        match self.field("lora_dropout") {
            None => Ok(0.0),
            Some(v) => v
                .as_f64()
                .filter(|p| (0.0..1.0).contains(p))
                .ok_or_else(|| self.fail(format!("`lora_dropout` {v} must be a number in [0, 1)"))),
        }
    }

    /// Features PEFT has and tailor does not serve: refused by name.
    fn refuse_unsupported(&self) -> Result<()> {
        match self.field("bias").and_then(|v| v.as_str()).unwrap_or("none") {
            "none" => {}
            other => {
                return Err(self.fail(format!("bias {other:?}: only adapters trained with bias \"none\" are served")))
            }
        }
        if self.field("fan_in_fan_out").and_then(|v| v.as_bool()) == Some(true) {
            return Err(self.fail("fan_in_fan_out = true (GPT-2 style Conv1D weights) is not supported"));
        }
        if let Some(modules) = self.field("modules_to_save").and_then(|v| v.as_array()).filter(|m| !m.is_empty()) {
            return Err(self.fail(format!(
                "modules_to_save {modules:?}: full copies of base modules (lm_head, embed_tokens) are not served; \
                 merge the adapter (`tailor adapter merge`) or retrain without them"
            )));
        }
        if self.field("lora_bias").and_then(|v| v.as_bool()) == Some(true) {
            return Err(self.fail("lora_bias = true is not supported"));
        }
        if let Some(pattern) = self.field("layers_pattern") {
            let names: Vec<&str> = match pattern {
                serde_json::Value::String(s) => vec![s.as_str()],
                serde_json::Value::Array(a) => a.iter().filter_map(|v| v.as_str()).collect(),
                _ => Vec::new(),
            };
            if names.iter().any(|n| *n != "layers") {
                return Err(self.fail(format!("layers_pattern {pattern}: this decoder's layers are `layers`")));
            }
        }
        for unsupported in ["exclude_modules", "trainable_token_indices", "target_parameters"] {
            if let Some(value) = self.field(unsupported).filter(|v| v.as_array().is_none_or(|a| !a.is_empty())) {
                return Err(self.fail(format!("{unsupported} {value} is not supported")));
            }
        }
        Ok(())
    }

    fn targets(&self) -> Result<Targets> {
        let targets = match self.field("target_modules") {
            // PEFT's default for Llama-family models.
            None => Targets::Names(vec!["q_proj".into(), "v_proj".into()]),
            Some(serde_json::Value::String(s)) if s == "all-linear" => Targets::AllLinear,
            Some(serde_json::Value::String(s)) => {
                regex::Regex::new(&format!("^(?:{s})$")).map_err(|e| self.fail(format!("target_modules: {e}")))?;
                Targets::Regex(s.clone())
            }
            Some(serde_json::Value::Array(items)) => Targets::Names(
                items
                    .iter()
                    .map(|v| {
                        v.as_str().map(str::to_string).ok_or_else(|| self.fail("target_modules must hold strings"))
                    })
                    .collect::<Result<_>>()?,
            ),
            Some(other) => return Err(self.fail(format!("target_modules {other}: expected a list or a string"))),
        };
        if let Targets::Names(names) = &targets {
            for name in names {
                let last = name.rsplit('.').next().unwrap_or(name);
                if last == "lm_head" || last == "embed_tokens" {
                    return Err(self.fail(format!(
                        "target_modules names {name:?}: LoRA on the output layer or the embeddings is not served"
                    )));
                }
            }
        }
        Ok(targets)
    }

    fn pattern<T>(&self, name: &str, value: impl Fn(&serde_json::Value) -> Option<T>) -> Result<Vec<(String, T)>> {
        let Some(map) = self.field(name) else { return Ok(Vec::new()) };
        let map = map.as_object().ok_or_else(|| self.fail(format!("{name} must be an object")))?;
        map.iter()
            .map(|(key, v)| {
                regex::Regex::new(key).map_err(|e| self.fail(format!("{name} key {key:?}: {e}")))?;
                let v = value(v).ok_or_else(|| self.fail(format!("{name}[{key:?}] = {v}: not a valid value")))?;
                Ok((key.clone(), v))
            })
            .collect()
    }

    fn layers(&self) -> Result<Option<Vec<usize>>> {
        let bad = || self.fail("layers_to_transform must be a layer index or a list of them");
        match self.field("layers_to_transform") {
            None => Ok(None),
            Some(serde_json::Value::Array(items)) => {
                items.iter().map(|v| v.as_u64().map(|l| l as usize).ok_or_else(bad)).collect::<Result<_>>().map(Some)
            }
            Some(v) => v.as_u64().map(|l| Some(vec![l as usize])).ok_or_else(bad),
        }
    }
}

impl LoraConfig {
    /// Whether the config targets `proj` of `layer`.
    pub fn targets_module(&self, layer: usize, proj: Proj) -> bool {
        let name = proj.module(layer);
        match &self.targets {
            Targets::AllLinear => true,
            Targets::Regex(pattern) => full_match(pattern, &name),
            Targets::Names(names) => {
                // PEFT: a module named in full is taken as is; a suffix
                // match honours layers_to_transform.
                let exact = names.contains(&name);
                let suffix = names.iter().any(|t| name.ends_with(&format!(".{t}")));
                exact || (suffix && self.layers_to_transform.as_ref().is_none_or(|layers| layers.contains(&layer)))
            }
        }
    }

    /// Rank and alpha of one module (`rank_pattern`/`alpha_pattern` first).
    pub fn rank_and_alpha(&self, layer: usize, proj: Proj) -> (usize, f64) {
        let name = proj.module(layer);
        let rank = pattern_value(&self.rank_pattern, &name).unwrap_or(self.r);
        let alpha = pattern_value(&self.alpha_pattern, &name).unwrap_or(self.alpha);
        (rank, alpha)
    }

    /// The delta's scaling for a module of this rank and alpha.
    pub fn scaling(&self, rank: usize, alpha: f64) -> f32 {
        let divisor = if self.use_rslora { (rank as f64).sqrt() } else { rank as f64 };
        (alpha / divisor) as f32
    }
}

fn full_match(pattern: &str, name: &str) -> bool {
    regex::Regex::new(&format!("^(?:{pattern})$")).is_ok_and(|re| re.is_match(name))
}

/// PEFT's pattern lookup: the first key `k` such that the module name is
/// `k`, or ends with `.` followed by a match of `k`.
fn pattern_value<T: Copy>(patterns: &[(String, T)], name: &str) -> Option<T> {
    patterns.iter().find(|(key, _)| full_match(&format!("(?:.*\\.)?(?:{key})"), name)).map(|(_, v)| *v)
}
