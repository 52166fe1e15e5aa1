//! Checkpoints that survive `kill -9` and a full disk.
//!
//! A checkpoint is a folder `checkpoints/step-NNNNNNNN/` holding the adapter
//! (PEFT layout), the optimizer's moments (`optimizer.safetensors`) and
//! `state.json` (step, data cursor, RNG, the run's fingerprint, and a hash
//! of each file). It is written under a temporary name, every file and the
//! folder fsynced, then renamed into place, so a checkpoint folder is
//! either complete or absent; a write that fails (disk full) leaves the
//! previous checkpoints untouched. On resume the newest checkpoint whose
//! files match their hashes wins; a damaged one is skipped with a warning.

use crate::error::{io_error, Result, TrainError};
use crate::moments8::{Blockwise8, BLOCK};
use crate::optim::{AdamState, Moments};
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// Where a run's checkpoints live, under its output folder.
pub const CHECKPOINTS: &str = "checkpoints";
/// The optimizer's moments.
const OPTIMIZER_FILE: &str = "optimizer.safetensors";
/// The loop's position.
const STATE_FILE: &str = "state.json";

/// Where the training loop stands: enough to continue exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LoopState {
    /// Optimizer steps done.
    pub step: usize,
    /// Epoch in progress (0-based).
    pub epoch: usize,
    /// Examples of this epoch's order already used.
    pub cursor: usize,
    /// The generator, as it stands after `step` steps.
    pub rng: Rng,
    /// Identifies the run's settings, base and data: a checkpoint of
    /// another run is refused.
    pub fingerprint: String,
}

/// What a checkpoint restores.
pub struct Restored {
    /// The loop's position.
    pub state: LoopState,
    /// The optimizer's moments.
    pub adam: AdamState,
    /// The adapter folder (to load the weights from).
    pub folder: PathBuf,
}

/// `state.json`: the loop state and a hash of every other file.
#[derive(Serialize, Deserialize)]
struct StateFile {
    format: u32,
    state: LoopState,
    adam_step: u64,
    hashes: BTreeMap<String, String>,
}

/// Writes checkpoint `state.step` of the run in `out`: the adapter files
/// come from `write_adapter(folder)`. Keeps the newest `keep` checkpoints.
pub fn save(
    out: &Path,
    state: &LoopState,
    adam: &AdamState,
    keep: usize,
    write_adapter: impl FnOnce(&Path) -> Result<()>,
) -> Result<PathBuf> {
    let root = out.join(CHECKPOINTS);
    std::fs::create_dir_all(&root).map_err(io_error(&root))?;
    let name = format!("step-{:08}", state.step);
    let partial = root.join(format!(".partial-{name}"));
    if partial.exists() {
        std::fs::remove_dir_all(&partial).map_err(io_error(&partial))?;
    }
    std::fs::create_dir(&partial).map_err(io_error(&partial))?;
    let written = write_contents(&partial, state, adam, write_adapter);
    if let Err(e) = written {
        let _ = std::fs::remove_dir_all(&partial);
        return Err(e);
    }
    let folder = root.join(&name);
    if folder.exists() {
        std::fs::remove_dir_all(&folder).map_err(io_error(&folder))?;
    }
    std::fs::rename(&partial, &folder).map_err(io_error(&folder))?;
    sync_dir(&root)?;
    prune(&root, keep)?;
    Ok(folder)
}

fn write_contents(
    folder: &Path,
    state: &LoopState,
    adam: &AdamState,
    write_adapter: impl FnOnce(&Path) -> Result<()>,
) -> Result<()> {
    write_adapter(folder)?;
    write_safetensors(&folder.join(OPTIMIZER_FILE), moment_tensors(adam))?;
    let mut hashes = BTreeMap::new();
    for entry in std::fs::read_dir(folder).map_err(io_error(folder))? {
        let path = entry.map_err(io_error(folder))?.path();
        hashes.insert(file_name(&path), format!("{:016x}", hash_file(&path).map_err(io_error(&path))?));
    }
    let file = StateFile { format: 1, state: state.clone(), adam_step: adam.step, hashes };
    let text = serde_json::to_string_pretty(&file).map_err(|e| TrainError::Setting(e.to_string()))?;
    write_atomic(&folder.join(STATE_FILE), text.as_bytes())?;
    sync_dir(folder)
}

/// The newest intact checkpoint of the run in `out` whose fingerprint is
/// `fingerprint`; damaged ones are reported through `warn` and skipped.
pub fn latest(out: &Path, fingerprint: &str, warn: &mut dyn FnMut(String)) -> Result<Option<Restored>> {
    let root = out.join(CHECKPOINTS);
    for folder in checkpoint_folders(&root)?.into_iter().rev() {
        match restore(&folder, fingerprint) {
            Ok(restored) => return Ok(Some(restored)),
            Err(TrainError::Checkpoint { detail, .. }) if detail.starts_with("another run") => {
                return Err(TrainError::Checkpoint { path: folder, detail })
            }
            Err(e) => warn(format!("skipping damaged checkpoint {}: {e}", folder.display())),
        }
    }
    Ok(None)
}

fn restore(folder: &Path, fingerprint: &str) -> Result<Restored> {
    let bad = |detail: String| TrainError::Checkpoint { path: folder.to_path_buf(), detail };
    let state_path = folder.join(STATE_FILE);
    let text = std::fs::read_to_string(&state_path).map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
    let file: StateFile = serde_json::from_str(&text).map_err(|e| bad(format!("{STATE_FILE}: {e}")))?;
    if file.state.fingerprint != fingerprint {
        return Err(bad("another run's checkpoint (different model, data or settings): use a new --out".into()));
    }
    for (name, hash) in &file.hashes {
        let actual = hash_file(&folder.join(name)).map_err(|e| bad(format!("{name}: {e}")))?;
        if format!("{actual:016x}") != *hash {
            return Err(bad(format!("{name} does not match its hash")));
        }
    }
    let moments = read_moments(&folder.join(OPTIMIZER_FILE))?;
    Ok(Restored { state: file.state, adam: AdamState { step: file.adam_step, moments }, folder: folder.to_path_buf() })
}

/// The optimizer file's tensors: tensor `i`'s moments as `m.i` and `v.i`
/// (f32), or as `m.i.codes`, `m.i.absmax`, `v.i.codes`, `v.i.absmax`
/// (8-bit).
fn moment_tensors(adam: &AdamState) -> Vec<(String, OutTensor<'_>)> {
    let mut tensors = Vec::new();
    for (i, moments) in adam.moments.iter().enumerate() {
        match moments {
            Moments::F32 { m, v } => {
                tensors.push((format!("m.{i}"), OutTensor::flat(m)));
                tensors.push((format!("v.{i}"), OutTensor::flat(v)));
            }
            Moments::Int8 { m, v } => {
                for (name, moment) in [("m", m), ("v", v)] {
                    tensors.push((format!("{name}.{i}.codes"), OutTensor::bytes(&moment.codes)));
                    tensors.push((format!("{name}.{i}.absmax"), OutTensor::flat(&moment.absmax)));
                }
            }
        }
    }
    tensors
}

/// The moments [`moment_tensors`] wrote.
fn read_moments(path: &Path) -> Result<Vec<Moments>> {
    let bad = |detail: String| TrainError::Checkpoint { path: path.to_path_buf(), detail };
    let mut tensors = read_tensors(path)?;
    let count = tensors.keys().filter(|name| name.starts_with("m.") && !name.ends_with(".absmax")).count();
    let mut take = |name: String| tensors.remove(&name).ok_or_else(|| bad(format!("no tensor {name}")));
    let mut moments = Vec::with_capacity(count);
    for i in 0..count {
        let moment = match (take(format!("m.{i}")), take(format!("v.{i}"))) {
            (Ok(Stored::F32(m)), Ok(Stored::F32(v))) if m.len() == v.len() => Moments::F32 { m, v },
            (Err(_), Err(_)) => {
                let mut blockwise = |name: &str| -> Result<Blockwise8> {
                    match (take(format!("{name}.{i}.codes"))?, take(format!("{name}.{i}.absmax"))?) {
                        (Stored::U8(codes), Stored::F32(absmax)) if absmax.len() == codes.len().div_ceil(BLOCK) => {
                            Ok(Blockwise8 { codes, absmax })
                        }
                        _ => Err(bad(format!("{name}.{i}: codes and scales do not fit"))),
                    }
                };
                let (m, v) = (blockwise("m")?, blockwise("v")?);
                if m.codes.len() != v.codes.len() {
                    return Err(bad(format!("moments {i}: {} and {} values", m.codes.len(), v.codes.len())));
                }
                Moments::Int8 { m, v }
            }
            _ => return Err(bad(format!("moments {i}: not two f32 tensors of one length"))),
        };
        moments.push(moment);
    }
    Ok(moments)
}

/// Complete checkpoint folders, oldest first.
fn checkpoint_folders(root: &Path) -> Result<Vec<PathBuf>> {
    if !root.exists() {
        return Ok(Vec::new());
    }
    let mut folders: Vec<PathBuf> = std::fs::read_dir(root)
        .map_err(io_error(root))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && file_name(p).starts_with("step-"))
        .collect();
    folders.sort();
    Ok(folders)
}

/// Removes all but the newest `keep` checkpoints.
fn prune(root: &Path, keep: usize) -> Result<()> {
    let folders = checkpoint_folders(root)?;
    for old in &folders[..folders.len().saturating_sub(keep.max(1))] {
        std::fs::remove_dir_all(old).map_err(io_error(old))?;
    }
    Ok(())
}

fn file_name(path: &Path) -> String {
    path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Replaces `path` with `bytes`: written to a temporary file beside it,
/// fsynced, renamed over it, and the folder fsynced.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let folder = path.parent().unwrap_or(Path::new("."));
    let temporary = folder.join(format!(".{}.partial", file_name(path)));
    let written = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(TrainError::Io { path: path.to_path_buf(), source: e });
    }
    std::fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_dir(folder)
}

fn sync_dir(folder: &Path) -> Result<()> {
    std::fs::File::open(folder).and_then(|f| f.sync_all()).map_err(io_error(folder))
}

/// A tensor to write, borrowed: its bytes go from memory to the file with
/// no copy between, so writing a checkpoint of a full fine-tune costs no
/// second copy of the weights or moments.
pub struct OutTensor<'a> {
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub values: Values<'a>,
}

/// A tensor's values, borrowed.
#[derive(Clone, Copy)]
pub enum Values<'a> {
    /// f32 (written little-endian).
    F32(&'a [f32]),
    /// Bytes (8-bit optimizer codes).
    U8(&'a [u8]),
}

impl<'a> OutTensor<'a> {
    /// `values` as a tensor of shape `[len]`.
    pub fn flat(values: &'a [f32]) -> OutTensor<'a> {
        OutTensor { shape: vec![values.len()], values: Values::F32(values) }
    }

    /// `values` as a tensor of shape `shape`.
    pub fn f32(shape: Vec<usize>, values: &'a [f32]) -> OutTensor<'a> {
        OutTensor { shape, values: Values::F32(values) }
    }

    /// `bytes` as a u8 tensor of shape `[len]`.
    pub fn bytes(bytes: &'a [u8]) -> OutTensor<'a> {
        OutTensor { shape: vec![bytes.len()], values: Values::U8(bytes) }
    }

    fn len(&self) -> usize {
        match self.values {
            Values::F32(v) => v.len(),
            Values::U8(v) => v.len(),
        }
    }
}

impl safetensors::View for OutTensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        match self.values {
            Values::F32(_) => safetensors::Dtype::F32,
            Values::U8(_) => safetensors::Dtype::U8,
        }
    }

    fn shape(&self) -> &[usize] {
        &self.shape
    }

    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        match self.values {
            Values::U8(bytes) => std::borrow::Cow::Borrowed(bytes),
            Values::F32(values) if cfg!(target_endian = "little") => {
                std::borrow::Cow::Borrowed(bytemuck::cast_slice(values))
            }
            Values::F32(values) => std::borrow::Cow::Owned(values.iter().flat_map(|v| v.to_le_bytes()).collect()),
        }
    }

    fn data_len(&self) -> usize {
        match self.values {
            Values::F32(v) => v.len() * 4,
            Values::U8(v) => v.len(),
        }
    }
}

/// Replaces `path` with a safetensors file of `tensors` (PEFT's
/// `{"format": "pt"}` metadata included), streamed tensor by tensor to a
/// temporary file beside it, fsynced, renamed over it, the folder fsynced.
pub fn write_safetensors(path: &Path, tensors: Vec<(String, OutTensor<'_>)>) -> Result<()> {
    for (name, tensor) in &tensors {
        if tensor.shape.iter().product::<usize>() != tensor.len() {
            return Err(TrainError::Setting(format!("{name}: shape {:?} for {} values", tensor.shape, tensor.len())));
        }
    }
    let folder = path.parent().unwrap_or(Path::new("."));
    let temporary = folder.join(format!(".{}.partial", file_name(path)));
    let metadata = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
    let written = safetensors::serialize_to_file(tensors, metadata, &temporary)
        .map_err(|e| std::io::Error::other(e.to_string()))
        .and_then(|()| std::fs::File::open(&temporary)?.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&temporary);
        return Err(TrainError::Io { path: path.to_path_buf(), source: e });
    }
    std::fs::rename(&temporary, path).map_err(io_error(path))?;
    sync_dir(folder)
}

/// A tensor read back.
#[derive(Debug, Clone, PartialEq)]
pub enum Stored {
    /// f32 values.
    F32(Vec<f32>),
    /// Bytes.
    U8(Vec<u8>),
}

/// Every tensor of a safetensors file of f32 and u8 tensors (as
/// [`write_safetensors`] writes them) by name, read straight into its own
/// vector: no copy of the whole file is held.
pub fn read_tensors(path: &Path) -> Result<BTreeMap<String, Stored>> {
    let bad = |detail: String| TrainError::Checkpoint { path: path.to_path_buf(), detail };
    let mut file = std::fs::File::open(path).map_err(io_error(path))?;
    let file_len = file.metadata().map_err(io_error(path))?.len();
    let mut len_bytes = [0u8; 8];
    file.read_exact(&mut len_bytes).map_err(|e| bad(format!("header: {e}")))?;
    let header_len = u64::from_le_bytes(len_bytes);
    if header_len > (100 << 20) || 8 + header_len > file_len {
        return Err(bad(format!("a {header_len}-byte header in a {file_len}-byte file")));
    }
    let mut header = vec![0u8; header_len as usize];
    file.read_exact(&mut header).map_err(|e| bad(format!("header: {e}")))?;
    let header: BTreeMap<String, serde_json::Value> =
        serde_json::from_slice(&header).map_err(|e| bad(format!("header: {e}")))?;
    let mut entries = Vec::new();
    for (name, entry) in header.into_iter().filter(|(name, _)| name != "__metadata__") {
        let entry: TensorEntry = serde_json::from_value(entry).map_err(|e| bad(format!("{name}: {e}")))?;
        let [start, end] = entry.data_offsets;
        let count = entry.shape.iter().product::<u64>();
        let width = match entry.dtype.as_str() {
            "F32" => 4,
            "U8" => 1,
            _ => 0,
        };
        if width == 0 || end < start || end - start != count * width || 8 + header_len + end > file_len {
            return Err(bad(format!("{name}: {} {:?} at {start}..{end}", entry.dtype, entry.shape)));
        }
        entries.push((start, name, width == 4, count as usize));
    }
    entries.sort();
    let mut tensors = BTreeMap::new();
    for (start, name, is_f32, count) in entries {
        file.seek(std::io::SeekFrom::Start(8 + header_len + start)).map_err(io_error(path))?;
        let tensor = if is_f32 {
            let mut values = vec![0f32; count];
            file.read_exact(bytemuck::cast_slice_mut(&mut values)).map_err(|e| bad(format!("{name}: {e}")))?;
            if cfg!(target_endian = "big") {
                values.iter_mut().for_each(|v| *v = f32::from_bits(u32::from_le(v.to_bits())));
            }
            Stored::F32(values)
        } else {
            let mut bytes = vec![0u8; count];
            file.read_exact(&mut bytes).map_err(|e| bad(format!("{name}: {e}")))?;
            Stored::U8(bytes)
        };
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// One tensor in a safetensors header.
#[derive(Deserialize)]
struct TensorEntry {
    dtype: String,
    shape: Vec<u64>,
    data_offsets: [u64; 2],
}

/// [`fnv1a`] of a file's bytes, read a MiB at a time.
fn hash_file(path: &Path) -> std::io::Result<u64> {
    let mut file = std::fs::File::open(path)?;
    let mut buffer = vec![0u8; 1 << 20];
    let mut hash = FNV_OFFSET;
    loop {
        let read = file.read(&mut buffer)?;
        if read == 0 {
            return Ok(hash);
        }
        hash = fnv1a_from(hash, &buffer[..read]);
    }
}

/// FNV-1a, 64 bits: detects torn or damaged files (not an adversary).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_from(FNV_OFFSET, bytes)
}

/// FNV-1a's starting value.
const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a continued over `bytes` from `hash`.
fn fnv1a_from(hash: u64, bytes: &[u8]) -> u64 {
    bytes.iter().fold(hash, |hash, &b| (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> LoopState {
        LoopState { step, epoch: 0, cursor: step, rng: Rng::new(1), fingerprint: "run".into() }
    }

    fn adam(value: f32) -> AdamState {
        let eight_bit = Moments::Int8 {
            m: Blockwise8 { codes: vec![value as u8; 300], absmax: vec![value, -value] },
            v: Blockwise8 { codes: vec![7; 300], absmax: vec![value * 2.0; 2] },
        };
        AdamState { step: 3, moments: vec![Moments::F32 { m: vec![value; 4], v: vec![value * 2.0; 4] }, eight_bit] }
    }

    fn adapter_file(folder: &Path) -> Result<()> {
        write_atomic(&folder.join("adapter_model.safetensors"), b"weights")
    }

    fn scratch(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("tailor-checkpoint-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        dir
    }

    #[test]
    fn a_failed_write_leaves_the_previous_checkpoint_intact() {
        let out = scratch("failed");
        save(&out, &state(1), &adam(0.5), 2, adapter_file).unwrap();
        let disk_full = |_: &Path| -> Result<()> {
            Err(TrainError::Io { path: "adapter".into(), source: std::io::Error::other("No space left on device") })
        };
        assert!(save(&out, &state(2), &adam(0.7), 2, disk_full).is_err());
        let restored = latest(&out, "run", &mut |w| panic!("unexpected warning {w}")).unwrap().unwrap();
        assert_eq!(restored.state, state(1));
        assert_eq!(restored.adam, adam(0.5));
        let leftovers: Vec<_> = std::fs::read_dir(out.join(CHECKPOINTS)).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "the partial folder is removed");
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn a_damaged_newest_checkpoint_falls_back_to_the_previous_with_a_warning() {
        let out = scratch("damaged");
        save(&out, &state(1), &adam(0.5), 3, adapter_file).unwrap();
        let newest = save(&out, &state(2), &adam(0.7), 3, adapter_file).unwrap();
        std::fs::write(newest.join("adapter_model.safetensors"), b"weighXs").unwrap();
        let mut warnings = Vec::new();
        let restored = latest(&out, "run", &mut |w| warnings.push(w)).unwrap().unwrap();
        assert_eq!(restored.state.step, 1);
        assert_eq!(warnings.len(), 1);
        assert!(warnings[0].contains("does not match its hash"), "{}", warnings[0]);
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn another_runs_checkpoints_are_refused() {
        let out = scratch("other");
        save(&out, &state(1), &adam(0.5), 2, adapter_file).unwrap();
        let refused = latest(&out, "a different run", &mut |_| {});
        assert!(matches!(refused, Err(TrainError::Checkpoint { .. })));
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn only_the_newest_are_kept() {
        let out = scratch("prune");
        for step in 1..=4 {
            save(&out, &state(step), &adam(step as f32), 2, adapter_file).unwrap();
        }
        let names: Vec<String> =
            checkpoint_folders(&out.join(CHECKPOINTS)).unwrap().iter().map(|p| file_name(p)).collect();
        assert_eq!(names, ["step-00000003", "step-00000004"]);
        std::fs::remove_dir_all(&out).unwrap();
    }

    #[test]
    fn tensors_written_streaming_read_back_and_a_truncated_file_is_refused() {
        let out = scratch("tensors");
        std::fs::create_dir_all(&out).unwrap();
        let (a, b) = (vec![1.5f32, -2.0, 3.25, 0.0, 7.0, -0.5], vec![9.0f32; 3]);
        let path = out.join("t.safetensors");
        let tensors = vec![
            ("b".to_string(), OutTensor::flat(&b)),
            ("a".to_string(), OutTensor::f32(vec![2, 3], &a)),
            ("c".to_string(), OutTensor::bytes(&[1, 2, 3])),
        ];
        write_safetensors(&path, tensors).unwrap();
        let bytes = std::fs::read(&path).unwrap();
        let parsed = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(parsed.tensor("a").unwrap().shape(), [2, 3], "the safetensors crate reads it");
        let read = read_tensors(&path).unwrap();
        assert_eq!(read["a"], Stored::F32(a.clone()));
        assert_eq!((&read["b"], &read["c"]), (&Stored::F32(b), &Stored::U8(vec![1, 2, 3])));
        std::fs::write(&path, &bytes[..bytes.len() - 4]).unwrap();
        assert!(matches!(read_tensors(&path), Err(TrainError::Checkpoint { .. })));
        let wrong_shape = vec![("a".to_string(), OutTensor::f32(vec![4, 3], &a))];
        assert!(write_safetensors(&path, wrong_shape).is_err());
        std::fs::remove_dir_all(&out).unwrap();
    }
}
