//! LoRA adapters in PEFT's layout, and their per-row deltas.
//!
//! An adapter wraps the decoder's [`Linear`] projections, it does not fork
//! the model: a projection's output is the base layer's `W·x + b` plus, for
//! each row whose request chose an adapter, `s·B(A·x)` with `s = alpha/r`
//! (`alpha/√r` with rsLoRA) times the request's scale. DoRA rescales each
//! output row by `m / ‖W + s·B·A‖` (PEFT's formula, norms taken at load).
//! `A` and `B` stay in the precision the file stores (f32, f16, bf16) and
//! run through tailor-tensor's per-row LoRA kernel (`lora_deltas`: all
//! groups of rows sharing an adapter in one shrink and one expand), whose
//! rows do not depend on which other rows share the call: a sequence in a
//! batch of mixed adapters gets exactly what it gets alone, and a prompt
//! prefilled in pieces what it gets in one.
//!
//! Loading is strict where PEFT is lenient: every tensor of
//! `adapter_model.safetensors` must name a projection of this base with
//! the right shape, every module `adapter_config.json` targets must have
//! weights, and whatever tailor does not implement (bias training,
//! `modules_to_save`, embedding or lm_head LoRA, `fan_in_fan_out`) is
//! refused by name rather than ignored.

use crate::error::{ModelError, Result};
use crate::llama::Llama;
use crate::names::{layer_prefix, Proj};

mod config;
mod dropout;

pub use config::{read_config, LoraConfig, Targets};
pub use dropout::{dropout_seed, LoraDropout};
use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tailor_tensor::cpu::{lora_deltas, LoraGroup, LoraMatrix, LoraPair};

/// The adapter's config file.
pub const CONFIG_FILE: &str = "adapter_config.json";
/// The adapter's weights file.
pub const WEIGHTS_FILE: &str = "adapter_model.safetensors";
/// PEFT's prefix on every saved key.
const KEY_PREFIX: &str = "base_model.model.";

/// Bounds an adapter must fit (the serve stage sets them from its config).
#[derive(Debug, Clone, Copy)]
pub struct AdapterLimits {
    /// Largest rank accepted on any module.
    pub max_rank: usize,
    /// Largest `adapter_model.safetensors` read, in bytes.
    pub max_file_bytes: u64,
}

impl Default for AdapterLimits {
    fn default() -> Self {
        AdapterLimits { max_rank: 256, max_file_bytes: 2 << 30 }
    }
}

/// One adapted projection: `A` (`[r, in]`), `B` (`[out, r]`), its scaling,
/// and DoRA's per-row factor when the adapter has one.
pub struct LoraLayer {
    pair: LoraPair,
    scaling: f32,
    /// DoRA: `m / ‖W + s·B·A‖` per output row.
    dora_scale: Option<Vec<f32>>,
}

impl LoraLayer {
    /// The rank.
    pub fn rank(&self) -> usize {
        self.pair.rank()
    }

    /// `alpha/r` (or `alpha/√r`).
    pub fn scaling(&self) -> f32 {
        self.scaling
    }

    /// `A` as f32, `[r, in]`.
    pub fn a_f32(&self) -> Vec<f32> {
        self.pair.a_f32()
    }

    /// `B` as f32, `[out, r]` (PEFT's layout).
    pub fn b_f32(&self) -> Vec<f32> {
        self.pair.b_f32()
    }

    /// True for a DoRA module (a magnitude per output row).
    pub fn is_dora(&self) -> bool {
        self.dora_scale.is_some()
    }

    /// Adds this delta into the base weight `w` (`[out, in]`, f32), as
    /// merging does: `W + s·B·A`, rows rescaled by DoRA's factor.
    pub fn merge_into(&self, w: &mut [f32]) -> Result<()> {
        let (a, b) = (self.pair.a_f32(), self.pair.b_f32());
        let (rank, inp) = (self.rank(), self.pair.in_dim());
        for (o, row) in w.chunks_exact_mut(inp).enumerate() {
            for (j, a_row) in a.chunks_exact(inp).enumerate() {
                let coefficient = self.scaling * b[o * rank + j];
                row.iter_mut().zip(a_row).for_each(|(w, a)| *w += coefficient * a);
            }
            if let Some(scale) = &self.dora_scale {
                row.iter_mut().for_each(|w| *w *= scale[o]);
            }
        }
        Ok(())
    }

    fn parameters(&self) -> usize {
        self.pair.parameters() + self.dora_scale.as_ref().map_or(0, Vec::len)
    }

    fn bytes(&self) -> usize {
        self.pair.bytes() + self.dora_scale.as_ref().map_or(0, |d| d.len() * std::mem::size_of::<f32>())
    }
}

/// A loaded adapter: for each layer, the projections it adapts.
pub struct Adapter {
    /// Unique among the adapters this process loaded (cache keys use it,
    /// so an adapter loaded anew never reuses an old one's entries).
    id: u64,
    config: LoraConfig,
    source: PathBuf,
    layers: Vec<[Option<LoraLayer>; 7]>,
}

impl std::fmt::Debug for Adapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Adapter").field("source", &self.source).field("r", &self.config.r).finish()
    }
}

impl Adapter {
    /// Loads a PEFT LoRA adapter folder for `base`, checking every key and
    /// shape against it.
    pub fn load(folder: &Path, base: &Llama, limits: AdapterLimits) -> Result<Adapter> {
        let config = read_config(folder)?;
        let tensors = read_weights(folder, limits.max_file_bytes)?;
        let weights_path = folder.join(WEIGHTS_FILE);
        let mut builder = Builder { base, config: &config, path: &weights_path, limits };
        let layers = builder.build(tensors)?;
        Ok(Adapter { id: next_adapter_id(), config, source: folder.to_path_buf(), layers })
    }

    /// An adapter from f32 matrices in memory (a training run's current
    /// weights): per adapted module, its layer, projection, `A` (`[r, in]`)
    /// and `B` (`[out, r]`, PEFT's layout). The rank of each comes from
    /// `config` (`rank_pattern` included) and must match the matrices;
    /// DoRA is not built this way.
    pub fn from_f32(
        config: LoraConfig,
        base: &Llama,
        modules: &[TrainedModule<'_>],
        source: PathBuf,
    ) -> Result<Adapter> {
        let bad = |detail: String| ModelError::Adapter { path: source.clone(), detail };
        if config.use_dora {
            return Err(bad("a DoRA adapter cannot be built from A and B alone".into()));
        }
        let layer_count = base.config().num_hidden_layers;
        let mut layers: Vec<[Option<LoraLayer>; 7]> = (0..layer_count).map(|_| Default::default()).collect();
        for module in modules {
            let (out, inp) = module.proj.shape(base.config());
            let (rank, alpha) = config.rank_and_alpha(module.layer, module.proj);
            let slot = layers
                .get_mut(module.layer)
                .ok_or_else(|| bad(format!("layer {} of a model with {layer_count}", module.layer)))?;
            let pair =
                LoraPair::new(rank, inp, out, LoraMatrix::F32(module.a.to_vec()), LoraMatrix::F32(module.b.to_vec()))
                    .map_err(|e| bad(format!("{}: {e}", module.proj.module(module.layer))))?;
            let scaling = config.scaling(rank, alpha);
            slot[module.proj.index()] = Some(LoraLayer { pair, scaling, dora_scale: None });
        }
        Ok(Adapter { id: next_adapter_id(), config, source, layers })
    }

    /// The checked config.
    pub fn config(&self) -> &LoraConfig {
        &self.config
    }

    /// Where it was loaded from.
    pub fn source(&self) -> &Path {
        &self.source
    }

    /// The adapted projection of `layer`, if any.
    pub fn layer(&self, layer: usize, proj: Proj) -> Option<&LoraLayer> {
        self.layers.get(layer).and_then(|l| l[proj.index()].as_ref())
    }

    /// Adapted modules by Hugging Face name, with their ranks.
    pub fn modules(&self) -> Vec<(String, usize)> {
        let mut out = Vec::new();
        for (layer, projs) in self.layers.iter().enumerate() {
            for proj in Proj::ALL {
                if let Some(lora) = &projs[proj.index()] {
                    out.push((proj.module(layer), lora.rank()));
                }
            }
        }
        out
    }

    /// Projection names adapted in at least one layer (`q_proj`, …).
    pub fn target_names(&self) -> Vec<&'static str> {
        Proj::ALL
            .into_iter()
            .filter(|p| self.layers.iter().any(|l| l[p.index()].is_some()))
            .map(Proj::module_name)
            .collect()
    }

    /// Largest rank over its modules.
    pub fn max_rank(&self) -> usize {
        self.layers.iter().flatten().flatten().map(LoraLayer::rank).max().unwrap_or(0)
    }

    /// Trainable parameters (A, B and DoRA magnitudes).
    pub fn parameter_count(&self) -> usize {
        self.layers.iter().flatten().flatten().map(LoraLayer::parameters).sum()
    }

    /// Bytes it holds in memory.
    pub fn memory_bytes(&self) -> usize {
        self.layers.iter().flatten().flatten().map(LoraLayer::bytes).sum()
    }

    /// True when it is a DoRA adapter.
    pub fn is_dora(&self) -> bool {
        self.config.use_dora
    }
}

/// A fresh id for a loaded or built adapter.
fn next_adapter_id() -> u64 {
    static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);
    NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One module's matrices for [`Adapter::from_f32`].
#[derive(Debug, Clone, Copy)]
pub struct TrainedModule<'a> {
    /// Its layer.
    pub layer: usize,
    /// Its projection.
    pub proj: Proj,
    /// `A`, `[r, in]`.
    pub a: &'a [f32],
    /// `B`, `[out, r]`.
    pub b: &'a [f32],
}

/// An adapter as a request uses it: which one, and how strongly (PEFT's
/// `scale_layer`: the delta is multiplied by `scale`).
#[derive(Clone)]
pub struct ActiveAdapter {
    /// The adapter.
    pub adapter: Arc<Adapter>,
    /// Multiplier on its delta (1: as trained).
    pub scale: f32,
}

impl ActiveAdapter {
    /// The adapter at `scale`; DoRA adapters only at 1 (their norms are
    /// taken at load for the trained scaling).
    pub fn new(adapter: Arc<Adapter>, scale: f32) -> Result<ActiveAdapter> {
        if !scale.is_finite() {
            return Err(ModelError::InvalidParameter(format!("adapter scale {scale} is not a finite number")));
        }
        if adapter.is_dora() && scale != 1.0 {
            return Err(ModelError::InvalidParameter(format!(
                "adapter scale {scale} on a DoRA adapter: DoRA's weight norms are fixed at load, only 1 is served"
            )));
        }
        Ok(ActiveAdapter { adapter, scale })
    }

    /// True when both name the same loaded adapter at the same scale.
    pub fn same_as(&self, other: &ActiveAdapter) -> bool {
        self.cache_key() == other.cache_key()
    }

    /// An identity for caches keyed by (adapter, scale): the adapter's
    /// load id and the scale's bits.
    pub fn cache_key(&self) -> AdapterKey {
        AdapterKey { adapter: self.adapter.id, scale_bits: self.scale.to_bits() }
    }
}

impl std::fmt::Debug for ActiveAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} × {}", self.adapter.source.display(), self.scale)
    }
}

/// What caches of model outputs key on for the adapter part: which loaded
/// adapter, at which scale.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AdapterKey {
    /// The adapter's load id.
    pub adapter: u64,
    /// The scale's bits.
    pub scale_bits: u32,
}

/// Which adapter each row of a forward pass runs with.
#[derive(Clone, Default)]
pub(crate) enum RowAdapters {
    /// The base model for every row.
    #[default]
    Base,
    /// One adapter for every row (a prefill).
    One(ActiveAdapter),
    /// Row `i` with `adapters[i]` (a decode batch).
    Each(Vec<Option<ActiveAdapter>>),
    /// One adapter for every row, its inputs dropped out (training).
    Dropped(ActiveAdapter, LoraDropout),
}

impl RowAdapters {
    /// A decode batch's rows; all-base collapses to [`RowAdapters::Base`].
    pub(crate) fn each(adapters: &[Option<ActiveAdapter>]) -> RowAdapters {
        match adapters.iter().all(Option::is_none) {
            true => RowAdapters::Base,
            false => RowAdapters::Each(adapters.to_vec()),
        }
    }

    /// Groups of rows sharing an adapter (base rows left out).
    fn groups(&self, rows: usize) -> Vec<(&ActiveAdapter, Vec<usize>)> {
        match self {
            RowAdapters::Base => Vec::new(),
            RowAdapters::One(adapter) | RowAdapters::Dropped(adapter, _) => vec![(adapter, (0..rows).collect())],
            RowAdapters::Each(each) => {
                let mut groups: Vec<(&ActiveAdapter, Vec<usize>)> = Vec::new();
                for (row, adapter) in each.iter().enumerate() {
                    let Some(adapter) = adapter else { continue };
                    match groups.iter_mut().find(|(a, _)| a.same_as(adapter)) {
                        Some((_, members)) => members.push(row),
                        None => groups.push((adapter, vec![row])),
                    }
                }
                groups
            }
        }
    }

    pub(crate) fn is_base(&self) -> bool {
        matches!(self, RowAdapters::Base)
    }
}

/// Buffers the deltas reuse from call to call.
#[derive(Default)]
pub(crate) struct LoraScratch {
    deltas: Vec<Vec<f32>>,
    low: Vec<f32>,
    /// A projection's dropped-out input.
    dropped: Vec<f32>,
}

/// One projection's output for [`add_deltas`]: which projection, the base
/// layer's bias (which DoRA leaves out of its rescaling), and `y`, holding
/// the base layer's output for every row.
pub(crate) struct Adapted<'y> {
    pub proj: Proj,
    pub bias: Option<&'y [f32]>,
    pub y: &'y mut [f32],
}

/// Adds every adapted row's delta to the outputs of several projections
/// of `layer` that share the input `x` (`rows` rows): one kernel call for
/// all of them, or one per projection when each drops out its own mask.
pub(crate) fn add_deltas(
    adapters: &RowAdapters,
    layer: usize,
    x: &[f32],
    rows: usize,
    outputs: &mut [Adapted<'_>],
    scratch: &mut LoraScratch,
) -> Result<()> {
    let RowAdapters::Dropped(_, dropout) = adapters else {
        return add_shared_deltas(adapters, layer, x, rows, outputs, scratch);
    };
    let mut dropped = std::mem::take(&mut scratch.dropped);
    dropped.resize(x.len(), 0.0);
    for output in outputs.iter_mut() {
        dropout.apply(layer, output.proj, x, &mut dropped);
        add_shared_deltas(adapters, layer, &dropped, rows, std::slice::from_mut(output), scratch)?;
    }
    scratch.dropped = dropped;
    Ok(())
}

/// [`add_deltas`] for projections that all see `x` itself.
fn add_shared_deltas(
    adapters: &RowAdapters,
    layer: usize,
    x: &[f32],
    rows: usize,
    outputs: &mut [Adapted<'_>],
    scratch: &mut LoraScratch,
) -> Result<()> {
    if rows == 0 {
        return Ok(());
    }
    let row_groups = adapters.groups(rows);
    // (output index, the request's adapter, its layer, the rows using it)
    let mut adapted: Vec<(usize, &ActiveAdapter, &LoraLayer, &[usize])> = Vec::new();
    for (p, output) in outputs.iter().enumerate() {
        for (active, members) in &row_groups {
            if let Some(lora) = active.adapter.layer(layer, output.proj) {
                adapted.push((p, active, lora, members));
            }
        }
    }
    if adapted.is_empty() {
        return Ok(());
    }
    scratch.deltas.resize_with(outputs.len(), Vec::new);
    for (delta, output) in scratch.deltas.iter_mut().zip(outputs.iter()) {
        delta.resize(output.y.len(), 0.0);
    }
    let groups: Vec<LoraGroup<'_>> =
        adapted.iter().map(|&(output, _, lora, rows)| LoraGroup { pair: &lora.pair, rows, output }).collect();
    let mut delta_views: Vec<&mut [f32]> = scratch.deltas.iter_mut().map(|d| &mut d[..]).collect();
    lora_deltas(x, rows, &groups, &mut delta_views, &mut scratch.low)?;
    for &(p, active, lora, members) in &adapted {
        let out_dim = outputs[p].y.len() / rows;
        let s = lora.scaling * active.scale;
        for &row in members {
            let delta = &scratch.deltas[p][row * out_dim..(row + 1) * out_dim];
            let out = &mut outputs[p].y[row * out_dim..(row + 1) * out_dim];
            match &lora.dora_scale {
                None => out.iter_mut().zip(delta).for_each(|(o, d)| *o += s * d),
                Some(norm) => apply_dora(out, delta, s, norm, outputs[p].bias),
            }
        }
    }
    Ok(())
}

/// PEFT's DoRA: `y = n·(W·x + s·B·A·x) + b`, with `n = m/‖W + s·B·A‖`
/// per output row; `out` holds `W·x + b` on entry.
fn apply_dora(out: &mut [f32], delta: &[f32], s: f32, norm: &[f32], bias: Option<&[f32]>) {
    for (o, value) in out.iter_mut().enumerate() {
        let b = bias.map_or(0.0, |b| b[o]);
        let base = *value - b;
        *value = b + ((norm[o] - 1.0) * base + norm[o] * delta[o] * s) + base;
    }
}

/// A tensor of the adapter file, in its stored precision, with its shape.
struct RawTensor {
    shape: Vec<usize>,
    values: LoraMatrix,
}

fn read_weights(folder: &Path, max_bytes: u64) -> Result<BTreeMap<String, RawTensor>> {
    let path = folder.join(WEIGHTS_FILE);
    if !path.is_file() {
        let bin = folder.join("adapter_model.bin");
        if bin.exists() {
            return Err(ModelError::Adapter {
                path: bin,
                detail: "pickled .bin adapters are not loaded (unpickling runs code); save the adapter with \
                         safe_serialization=True to get adapter_model.safetensors"
                    .into(),
            });
        }
        return Err(ModelError::MissingFile { path, what: "the adapter's weights" });
    }
    let file = std::fs::File::open(&path).map_err(crate::error::io_error(&path))?;
    let mut bytes = Vec::new();
    file.take(max_bytes.saturating_add(1)).read_to_end(&mut bytes).map_err(crate::error::io_error(&path))?;
    if bytes.len() as u64 > max_bytes {
        return Err(ModelError::Adapter { path, detail: format!("larger than the limit of {max_bytes} bytes") });
    }
    let parsed = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| match e {
        safetensors::SafeTensorError::MetadataIncompleteBuffer | safetensors::SafeTensorError::HeaderTooSmall => {
            ModelError::Truncated { path: path.clone(), detail: e.to_string() }
        }
        other => ModelError::Corrupt { path: path.clone(), detail: other.to_string() },
    })?;
    let mut tensors = BTreeMap::new();
    for (name, view) in parsed.tensors() {
        let values = to_matrix(view.dtype(), view.data())
            .ok_or_else(|| key_error(&path, &name, format!("dtype {:?} (expected F32, F16 or BF16)", view.dtype())))?;
        tensors.insert(name, RawTensor { shape: view.shape().to_vec(), values });
    }
    Ok(tensors)
}

fn to_matrix(dtype: safetensors::Dtype, data: &[u8]) -> Option<LoraMatrix> {
    let pairs = || data.chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    match dtype {
        safetensors::Dtype::F32 => {
            Some(LoraMatrix::F32(data.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()))
        }
        safetensors::Dtype::F16 => Some(LoraMatrix::F16(pairs().map(half::f16::from_bits).collect())),
        safetensors::Dtype::BF16 => Some(LoraMatrix::Bf16(pairs().map(half::bf16::from_bits).collect())),
        _ => None,
    }
}

fn key_error(path: &Path, key: &str, detail: impl Into<String>) -> ModelError {
    ModelError::AdapterKey { path: path.to_path_buf(), key: key.to_string(), detail: detail.into() }
}

/// What one key of the adapter file is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Part {
    A,
    B,
    Magnitude,
}

/// Turns the file's tensors into per-layer [`LoraLayer`]s.
struct Builder<'a> {
    base: &'a Llama,
    config: &'a LoraConfig,
    path: &'a Path,
    limits: AdapterLimits,
}

impl Builder<'_> {
    fn build(&mut self, tensors: BTreeMap<String, RawTensor>) -> Result<Vec<[Option<LoraLayer>; 7]>> {
        let mut parts: BTreeMap<(usize, Proj), BTreeMap<Part, (String, RawTensor)>> = BTreeMap::new();
        for (key, tensor) in tensors {
            let (layer, proj, part) = self.parse_key(&key)?;
            if tensor.values.to_f32().iter().any(|v| !v.is_finite()) {
                return Err(key_error(self.path, &key, "holds NaN or infinite values"));
            }
            parts.entry((layer, proj)).or_default().insert(part, (key, tensor));
        }
        let layers = self.base.config().num_hidden_layers;
        let mut out: Vec<[Option<LoraLayer>; 7]> = (0..layers).map(|_| Default::default()).collect();
        for (layer, adapted) in out.iter_mut().enumerate() {
            for proj in Proj::ALL {
                let targeted = self.config.targets_module(layer, proj);
                match (parts.remove(&(layer, proj)), targeted) {
                    (Some(found), true) => adapted[proj.index()] = Some(self.lora_layer(layer, proj, found)?),
                    (Some(found), false) => {
                        let key = found.into_values().next().map(|(k, _)| k).unwrap_or_default();
                        return Err(key_error(self.path, &key, "adapter_config.json does not target this module"));
                    }
                    (None, true) => {
                        return Err(ModelError::Adapter {
                            path: self.path.to_path_buf(),
                            detail: format!(
                                "adapter_config.json targets {} but the file has no weights for it",
                                proj.module(layer)
                            ),
                        })
                    }
                    (None, false) => {}
                }
            }
        }
        if out.iter().flatten().all(Option::is_none) {
            return Err(ModelError::Adapter {
                path: self.path.to_path_buf(),
                detail: "the adapter adapts no module of this base model".into(),
            });
        }
        Ok(out)
    }

    /// `base_model.model.model.layers.N.self_attn.q_proj.lora_A.weight` →
    /// (N, Q, A); anything else is an error naming the key.
    fn parse_key(&self, key: &str) -> Result<(usize, Proj, Part)> {
        let fail = |detail: &str| key_error(self.path, key, detail);
        if key.contains("lora_embedding") || key.contains("embed_tokens") || key.contains("lm_head") {
            return Err(fail("LoRA on the embeddings or the output layer is not served"));
        }
        let rest =
            key.strip_prefix(KEY_PREFIX).ok_or_else(|| fail("not a PEFT key (no `base_model.model.` prefix)"))?;
        let (module, part) = [
            (".lora_A.weight", Part::A),
            (".lora_B.weight", Part::B),
            (".lora_magnitude_vector.weight", Part::Magnitude),
            (".lora_magnitude_vector", Part::Magnitude),
        ]
        .into_iter()
        .find_map(|(suffix, part)| rest.strip_suffix(suffix).map(|m| (m, part)))
        .ok_or_else(|| fail("not a LoRA weight (lora_A, lora_B or lora_magnitude_vector)"))?;
        let layers = self.base.config().num_hidden_layers;
        for layer in 0..layers {
            let prefix = layer_prefix(layer);
            let Some(path) = module.strip_prefix(&prefix).and_then(|p| p.strip_prefix('.')) else { continue };
            return match Proj::ALL.into_iter().find(|p| p.hf_path() == path) {
                Some(proj) => Ok((layer, proj, part)),
                None => Err(fail("matches no linear module of the base model")),
            };
        }
        Err(fail(&format!("matches no module of the base model (it has {layers} layers)")))
    }

    fn lora_layer(
        &self,
        layer: usize,
        proj: Proj,
        mut found: BTreeMap<Part, (String, RawTensor)>,
    ) -> Result<LoraLayer> {
        let module = proj.module(layer);
        let mut take = |part: Part, name: &str| {
            found.remove(&part).ok_or_else(|| ModelError::Adapter {
                path: self.path.to_path_buf(),
                detail: format!("{module} has no {name} weight"),
            })
        };
        let (a_key, a) = take(Part::A, "lora_A")?;
        let (b_key, b) = take(Part::B, "lora_B")?;
        let magnitude = match self.config.use_dora {
            true => Some(take(Part::Magnitude, "lora_magnitude_vector")?),
            false => None,
        };
        if let Some((key, _)) = found.into_values().next() {
            return Err(key_error(self.path, &key, "a DoRA magnitude in an adapter whose config has use_dora false"));
        }
        let (out, inp) = proj.shape(self.base.config());
        let rank = a.shape.first().copied().unwrap_or(0);
        self.check_shape(&a_key, &a, &[rank, inp])?;
        self.check_shape(&b_key, &b, &[out, rank])?;
        let (want_rank, alpha) = self.config.rank_and_alpha(layer, proj);
        if rank == 0 || rank != want_rank {
            return Err(key_error(
                self.path,
                &a_key,
                format!("rank {rank}, but adapter_config.json gives {want_rank}"),
            ));
        }
        if rank > self.limits.max_rank {
            return Err(key_error(
                self.path,
                &a_key,
                format!("rank {rank} is over this server's max_rank {}", self.limits.max_rank),
            ));
        }
        let scaling = self.config.scaling(rank, alpha);
        let pair = LoraPair::new(rank, inp, out, a.values, b.values)?;
        let dora_scale = match magnitude {
            None => None,
            Some((key, m)) => {
                self.check_shape(&key, &m, &[out])?;
                Some(dora_scale(self.base, layer, proj, &pair, scaling, &m.values.to_f32())?)
            }
        };
        Ok(LoraLayer { pair, scaling, dora_scale })
    }

    fn check_shape(&self, key: &str, tensor: &RawTensor, expected: &[usize]) -> Result<()> {
        if tensor.shape != expected {
            return Err(ModelError::WrongShape {
                path: self.path.to_path_buf(),
                name: key.to_string(),
                expected: expected.to_vec(),
                actual: tensor.shape.clone(),
            });
        }
        Ok(())
    }
}

/// DoRA's `m / ‖W + s·B·A‖` per output row of the base projection.
fn dora_scale(base: &Llama, layer: usize, proj: Proj, pair: &LoraPair, s: f32, m: &[f32]) -> Result<Vec<f32>> {
    let weight = base.projection(layer, proj).weight();
    let (a, b) = (pair.a_f32(), pair.b_f32());
    let (rank, inp) = (pair.rank(), weight.row_len());
    let mut row = vec![0f32; inp];
    let mut scale = Vec::with_capacity(m.len());
    for (o, &magnitude) in m.iter().enumerate() {
        tailor_tensor::quant::dequantize_row(weight.dtype(), weight.row_bytes(o), &mut row)?;
        for (j, a_row) in a.chunks_exact(inp).enumerate().take(rank) {
            let coefficient = s * b[o * rank + j];
            row.iter_mut().zip(a_row).for_each(|(w, a)| *w += coefficient * a);
        }
        let norm = row.iter().map(|&w| (w as f64) * (w as f64)).sum::<f64>().sqrt() as f32;
        scale.push(magnitude / norm);
    }
    Ok(scale)
}
