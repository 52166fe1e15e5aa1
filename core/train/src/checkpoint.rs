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
use crate::optim::AdamState;
use crate::rng::Rng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::io::Write;
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
    let mut tensors = Vec::new();
    for (i, (m, v)) in adam.m.iter().zip(&adam.v).enumerate() {
        tensors.push((format!("m.{i}"), vec![m.len()], m));
        tensors.push((format!("v.{i}"), vec![v.len()], v));
    }
    write_atomic(&folder.join(OPTIMIZER_FILE), &safetensors_bytes(&tensors)?)?;
    let mut hashes = BTreeMap::new();
    for entry in std::fs::read_dir(folder).map_err(io_error(folder))? {
        let path = entry.map_err(io_error(folder))?.path();
        let bytes = std::fs::read(&path).map_err(io_error(&path))?;
        hashes.insert(file_name(&path), format!("{:016x}", fnv1a(&bytes)));
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
        let bytes = std::fs::read(folder.join(name)).map_err(|e| bad(format!("{name}: {e}")))?;
        if format!("{:016x}", fnv1a(&bytes)) != *hash {
            return Err(bad(format!("{name} does not match its hash")));
        }
    }
    let bytes = std::fs::read(folder.join(OPTIMIZER_FILE)).map_err(|e| bad(format!("{OPTIMIZER_FILE}: {e}")))?;
    let tensors = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| bad(format!("{OPTIMIZER_FILE}: {e}")))?;
    let count = tensors.len() / 2;
    let read = |name: String| -> Result<Vec<f32>> {
        let view = tensors.tensor(&name).map_err(|e| bad(format!("{OPTIMIZER_FILE}: {name}: {e}")))?;
        Ok(view.data().chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect())
    };
    let m = (0..count).map(|i| read(format!("m.{i}"))).collect::<Result<Vec<_>>>()?;
    let v = (0..count).map(|i| read(format!("v.{i}"))).collect::<Result<Vec<_>>>()?;
    Ok(Restored { state: file.state, adam: AdamState { step: file.adam_step, m, v }, folder: folder.to_path_buf() })
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

/// A safetensors file of f32 tensors (name, shape, values), PEFT's
/// `{"format": "pt"}` metadata included.
pub fn safetensors_bytes(tensors: &[(String, Vec<usize>, &Vec<f32>)]) -> Result<Vec<u8>> {
    let views = tensors
        .iter()
        .map(|(name, shape, values)| {
            let view = safetensors::tensor::TensorView::new(
                safetensors::Dtype::F32,
                shape.clone(),
                bytemuck::cast_slice(values.as_slice()),
            )
            .map_err(|e| TrainError::Setting(format!("{name}: {e}")))?;
            Ok((name.clone(), view))
        })
        .collect::<Result<Vec<_>>>()?;
    let metadata = Some(std::collections::HashMap::from([("format".to_string(), "pt".to_string())]));
    safetensors::serialize(views, metadata).map_err(|e| TrainError::Setting(e.to_string()))
}

/// FNV-1a, 64 bits: detects torn or damaged files (not an adversary).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |hash, &b| (hash ^ b as u64).wrapping_mul(0x0100_0000_01b3))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(step: usize) -> LoopState {
        LoopState { step, epoch: 0, cursor: step, rng: Rng::new(1), fingerprint: "run".into() }
    }

    fn adam(value: f32) -> AdamState {
        AdamState { step: 3, m: vec![vec![value; 4]], v: vec![vec![value * 2.0; 4]] }
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
}
