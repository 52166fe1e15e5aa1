//! `tailor` with LoRA adapters, through the real binary: `generate --adapter`
//! (and `--adapter-scale`) changes the text, `adapter inspect` reports what
//! PEFT wrote and that it fits the base, `adapter merge` writes a folder whose
//! greedy text equals the adapter applied at run time (and warns that the
//! GGUF base was quantized), and a bad adapter is a clear error.

use std::path::PathBuf;
use std::process::{Command, Output};

fn adapter(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/adapters").join(name)
}

fn tailor(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tailor")).args(args).env("RUST_BACKTRACE", "0").output().unwrap()
}

fn text(out: &Output) -> String {
    assert!(out.status.success(), "tailor failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn generate_inspect_and_merge_with_an_adapter() {
    let dir = adapter("r16-all-linear");
    let dir = dir.to_str().unwrap();
    let greedy = ["generate", "--prompt", "The capital of France is", "--max-tokens", "12"];
    let base = text(&tailor(&greedy));
    let tuned = text(&tailor(&[&greedy[..], &["--adapter", dir]].concat()));
    let half = text(&tailor(&[&greedy[..], &["--adapter", dir, "--adapter-scale", "0.5"]].concat()));
    println!("base: {base:?}\nadapter: {tuned:?}\nadapter at 0.5: {half:?}");
    assert_ne!(base, tuned, "the adapter changes the greedy text");

    let report = text(&tailor(&["adapter", "inspect", dir]));
    println!("{report}");
    for expected in ["r / alpha    16 / 32", "all-linear", "fits", "210 modules", "q_proj, k_proj, v_proj"] {
        assert!(report.contains(expected), "inspect lacks {expected:?}: {report}");
    }

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("merged-{}", std::process::id()));
    let gguf = tailor_model::cache::cache_dir().join(tailor_model::cache::SMOLLM2_GGUF);
    let merged = tailor(&["adapter", "merge", gguf.to_str().unwrap(), dir, out_dir.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&merged.stderr);
    assert!(merged.status.success() && stderr.contains("warning") && stderr.contains("quantized"), "{stderr}");
    let from_merged = text(&tailor(&[&greedy[..], &["--model", out_dir.to_str().unwrap()]].concat()));
    let hf = tailor_model::cache::cache_dir().join(tailor_model::cache::SMOLLM2_HF);
    let runtime = text(&tailor(&[&greedy[..], &["--model", hf.to_str().unwrap(), "--adapter", dir]].concat()));
    assert_eq!(from_merged, runtime, "merged weights give what the adapter gives at run time");
    std::fs::remove_dir_all(&out_dir).unwrap();
}

#[test]
fn bad_adapter_arguments_are_clear_errors() {
    let out = tailor(&["generate", "--prompt", "Hi", "--adapter", "/nonexistent/adapter"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("adapter_config.json") && stderr.contains("missing"), "{stderr}");
    let out = tailor(&["generate", "--prompt", "Hi", "--adapter-scale", "0.5"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--adapter"));
    let dora = adapter("dora");
    let out = tailor(&["generate", "--prompt", "Hi", "--adapter", dora.to_str().unwrap(), "--adapter-scale", "2"]);
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("DoRA"));
}
