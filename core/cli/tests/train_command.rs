//! `tailor train` through the real binary on the bundled SmolLM2 (Q4_1
//! GGUF, so LoRA on a quantized base): a short run writes a PEFT adapter
//! that `generate --adapter` serves, a metrics log and a loss curve; a run
//! killed with SIGKILL and resumed ends with exactly the adapter of an
//! uninterrupted run; bad input is a clear error that keeps what was good.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn style_data() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/style/train.jsonl")
}

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("train-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The first `n` lines of the style set, as a file in `dir`.
fn small_data(dir: &Path, n: usize) -> PathBuf {
    let text = std::fs::read_to_string(style_data()).unwrap();
    let path = dir.join("data.jsonl");
    std::fs::write(&path, text.lines().take(n).map(|l| format!("{l}\n")).collect::<String>()).unwrap();
    path
}

fn tailor() -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tailor"));
    command.env("RUST_BACKTRACE", "0").args(["--threads", "2"]);
    command
}

/// A short LoRA run's arguments: rank 4 on q and v, 2 examples a step.
fn train_args(data: &Path, out: &Path, epochs: &str) -> Vec<String> {
    let mut args = base_args(data, out, epochs);
    args.extend(["--targets", "q_proj,v_proj"].map(String::from));
    args
}

/// [`train_args`] without the targets.
fn base_args(data: &Path, out: &Path, epochs: &str) -> Vec<String> {
    let args = ["train", "--data", data.to_str().unwrap(), "--out", out.to_str().unwrap(), "--epochs", epochs];
    let settings = ["--r", "4", "--batch-size", "2", "--checkpoint-every", "1"];
    args.iter().chain(&settings).map(|s| s.to_string()).collect()
}

fn run(command: &mut Command) -> Output {
    command.output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn a_short_run_writes_a_servable_adapter_metrics_and_a_curve() {
    let dir = scratch("short");
    let data = small_data(&dir, 8);
    let eval = small_data(&scratch("short-eval"), 2);
    let out = dir.join("adapter");
    let mut args = train_args(&data, &out, "1");
    args.extend(["--eval".to_string(), eval.to_str().unwrap().to_string()]);
    // Four steps at the default 1e-3 move the adapter too little to be
    // sure to change 16 greedy tokens; at 3e-3 the first already differs.
    args.extend(["--lr", "3e-3"].map(String::from));
    let result = run(tailor().args(&args));
    assert!(result.status.success(), "{}", stderr(&result));
    for file in ["adapter_config.json", "adapter_model.safetensors", "metrics.jsonl", "loss.png"] {
        assert!(out.join(file).is_file(), "{file} missing: {}", stderr(&result));
    }
    let png = std::fs::read(out.join("loss.png")).unwrap();
    assert_eq!(&png[..8], b"\x89PNG\r\n\x1a\n");
    let metrics = std::fs::read_to_string(out.join("metrics.jsonl")).unwrap();
    let lines: Vec<serde_json::Value> = metrics.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(lines.len(), 5, "eval at step 0, then 4 steps: {metrics}");
    assert!(lines[0]["eval_loss"].as_f64().is_some() && lines[4]["eval_loss"].as_f64().is_some());
    assert!(lines[1..].iter().all(|l| l["loss"].as_f64().is_some_and(f64::is_finite)));

    let greedy = ["generate", "--chat", "--prompt", "How do I reset my password?", "--max-tokens", "16"];
    let base = run(tailor().args(greedy));
    let tuned = run(tailor().args(greedy).args(["--adapter", out.to_str().unwrap()]));
    assert!(tuned.status.success(), "{}", stderr(&tuned));
    assert_ne!(base.stdout, tuned.stdout, "the trained adapter changes the answer");
    std::fs::remove_dir_all(&dir).unwrap();
}

/// With LoRA dropout on, so the masks must repeat across the restart too.
const DROPOUT: [&str; 2] = ["--dropout", "0.1"];

#[test]
fn a_run_killed_and_resumed_ends_with_the_uninterrupted_adapter() {
    let dir = scratch("resume");
    let data = small_data(&dir, 12);
    let whole = dir.join("whole");
    let result = run(tailor().args(train_args(&data, &whole, "1")).args(DROPOUT));
    assert!(result.status.success(), "{}", stderr(&result));

    let killed = dir.join("killed");
    let mut child = tailor().args(train_args(&data, &killed, "1")).args(DROPOUT).spawn().unwrap();
    let started = Instant::now();
    while steps_logged(&killed) < 3 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress");
        assert!(child.try_wait().unwrap().is_none(), "finished before it could be killed");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let logged = steps_logged(&killed);
    assert!(logged < 6, "killed mid-run, at step {logged} of 6");

    let resumed = run(tailor().args(train_args(&data, &killed, "1")).args(DROPOUT).arg("--resume"));
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    assert!(stderr(&resumed).contains("resuming at step"), "{}", stderr(&resumed));
    for file in ["adapter_model.safetensors", "adapter_config.json"] {
        let (a, b) = (std::fs::read(whole.join(file)).unwrap(), std::fs::read(killed.join(file)).unwrap());
        assert!(a == b, "{file} differs from the uninterrupted run's");
    }
    let steps: Vec<u64> = std::fs::read_to_string(killed.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, (1..=6).collect::<Vec<u64>>(), "each step logged once");
    let config: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(killed.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(config["lora_dropout"], 0.1);

    let again = run(tailor().args(train_args(&data, &killed, "1")));
    assert!(!again.status.success() && stderr(&again).contains("--resume"), "{}", stderr(&again));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn steps_logged(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map(|t| t.lines().count()).unwrap_or(0)
}

#[test]
fn bad_input_is_a_clear_error() {
    let dir = scratch("bad");
    let good = std::fs::read_to_string(style_data()).unwrap().lines().next().unwrap().to_string();
    let cases: [(&str, String, &[&str], &str); 6] = [
        ("malformed", format!("{good}\n{good}\n{{\"messages\": [oops\n"), &[], "data.jsonl:3"),
        ("empty", "\n\n".into(), &[], "no examples"),
        ("no-reply", "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}]}\n".into(), &[], "data.jsonl:1"),
        (
            "image",
            "{\"messages\": [{\"role\": \"user\", \"content\": [{\"type\": \"image_url\"}]}]}\n".into(),
            &[],
            "image_url",
        ),
        ("target", format!("{good}\n"), &["--targets", "q_proj,lm_head"], "unknown target module \"lm_head\""),
        ("overlong", format!("{good}\n"), &["--max-tokens", "10", "--refuse-overlong"], "over the limit of 10"),
    ];
    for (name, text, extra, expected) in cases {
        let data = dir.join(name).join("data.jsonl");
        std::fs::create_dir_all(data.parent().unwrap()).unwrap();
        std::fs::write(&data, text).unwrap();
        let args = match extra.contains(&"--targets") {
            true => base_args(&data, &dir.join(name).join("out"), "1"),
            false => train_args(&data, &dir.join(name).join("out"), "1"),
        };
        let out = run(tailor().args(args).args(extra));
        assert!(!out.status.success(), "{name}: accepted");
        assert!(stderr(&out).contains(expected), "{name}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"), "{name}: {}", stderr(&out));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_diverging_run_stops_with_a_clear_message_and_keeps_its_last_good_checkpoint() {
    let dir = scratch("diverge");
    let data = small_data(&dir, 8);
    let out = dir.join("out");
    // AdamW moves each weight by about lr in its first step: 1e30 overflows f32.
    let result = run(tailor().args(train_args(&data, &out, "1")).args(["--lr", "1e30", "--max-grad-norm", "0"]));
    assert!(!result.status.success(), "a learning rate of 1e30 trained to the end");
    let message = stderr(&result);
    assert!(message.contains("diverged") && message.contains("learning rate"), "{message}");
    let checkpoints: Vec<_> = std::fs::read_dir(out.join("checkpoints")).unwrap().collect();
    assert!(!checkpoints.is_empty(), "the last good checkpoint is kept");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn full_fine_tuning_writes_a_folder_tailor_serves() {
    let dir = scratch("full");
    let data = small_data(&dir, 2);
    let out = dir.join("model");
    let hf = tailor_model::cache::cache_dir().join(tailor_model::cache::SMOLLM2_HF);
    let args = ["train", "--method", "full", "--model", hf.to_str().unwrap(), "--data", data.to_str().unwrap()];
    let settings = ["--out", out.to_str().unwrap(), "--epochs", "1", "--batch-size", "2", "--lr", "1e-5"];
    let result = run(tailor().args(args).args(settings));
    assert!(result.status.success(), "{}", stderr(&result));
    assert!(stderr(&result).contains("every weight: 134.52 M trainable parameters"), "{}", stderr(&result));
    for file in ["model.safetensors", "config.json", "tokenizer.json", "metrics.jsonl", "loss.png"] {
        assert!(out.join(file).is_file(), "{file} missing");
    }
    let greedy = ["generate", "--chat", "--prompt", "How do I reset my password?", "--max-tokens", "8"];
    let served = run(tailor().args(greedy).args(["--model", out.to_str().unwrap()]));
    assert!(served.status.success() && !served.stdout.is_empty(), "{}", stderr(&served));
    std::fs::remove_dir_all(&dir).unwrap();
}
