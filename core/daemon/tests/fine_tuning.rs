//! Fine-tuning jobs through a real tailord (OpenAI's routes): a job trains
//! on the generate stage's loaded base from a file under `data_dirs`, shows
//! its loss per step as events and its checkpoints, and once it succeeds
//! its adapter answers at once under `fine_tuned_model`; a job survives a
//! SIGKILLed daemon and resumes from its checkpoint on restart; jobs can be
//! cancelled; bad requests are OpenAI-shaped 400s and 404s. On a stage
//! serving a Hugging Face folder, a QLoRA job trains on an NF4 copy and its
//! adapter serves on the folder, and a full fine-tune writes a model folder.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

fn style_lines(n: usize) -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../examples/style/train.jsonl");
    std::fs::read_to_string(path).unwrap().lines().take(n).map(|l| format!("{l}\n")).collect()
}

/// A config whose smollm2 stage trains: jobs under `dir/jobs`, data from `dir/data`.
fn write_config(dir: &Path) -> PathBuf {
    write_config_with(dir, "")
}

/// [`write_config`] with more `[server]` settings.
fn write_config_with(dir: &Path, server: &str) -> PathBuf {
    let (jobs, data) = (dir.join("jobs"), dir.join("data"));
    std::fs::create_dir_all(&data).unwrap();
    std::fs::write(data.join("train.jsonl"), style_lines(8)).unwrap();
    std::fs::write(data.join("eval.jsonl"), style_lines(2)).unwrap();
    std::fs::write(data.join("broken.jsonl"), format!("{}{{oops\n", style_lines(1))).unwrap();
    let generate =
        format!("jobs_dir = {:?}, data_dirs = [{:?}]", jobs.display().to_string(), data.display().to_string());
    let plugins = format!("{:?}", plugin_dir().display().to_string());
    let path = dir.join("tailord.toml");
    std::fs::write(&path, config_full(&format!("{OPEN_TCP}\n{server}"), &plugins, &generate, "")).unwrap();
    path
}

fn create(d: &Daemon, dir: &Path, epochs: usize) -> Value {
    let body = serde_json::json!({
        "model": "smollm2",
        "training_file": dir.join("data/train.jsonl"),
        "validation_file": dir.join("data/eval.jsonl"),
        "suffix": "support",
        "method": {"type": "supervised", "supervised": {"hyperparameters": {"n_epochs": epochs, "batch_size": 2}}},
        "tailor": {"r": 4, "targets": ["q_proj", "v_proj"]},
    });
    let (status, text) = curl(d, "/v1/fine_tuning/jobs", None, Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    json(&text)
}

fn job(d: &Daemon, id: &str) -> Value {
    let (status, text) = curl(d, &format!("/v1/fine_tuning/jobs/{id}"), None, None);
    assert_eq!(status, 200, "{text}");
    json(&text)
}

fn wait_for(d: &Daemon, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let started = Instant::now();
    loop {
        let current = job(d, id);
        if done(&current) {
            return current;
        }
        assert!(started.elapsed() < Duration::from_secs(300), "job stuck: {current}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn steps_of(d: &Daemon, id: &str) -> Vec<u64> {
    let (status, text) = curl(d, &format!("/v1/fine_tuning/jobs/{id}/events"), None, None);
    assert_eq!(status, 200, "{text}");
    let events = json(&text)["data"].as_array().cloned().unwrap();
    events.iter().filter(|e| e["data"].get("loss").is_some()).map(|e| e["data"]["step"].as_u64().unwrap()).collect()
}

#[test]
fn a_job_trains_shows_progress_and_serves_its_adapter() {
    let dir = scratch("fine-tuning");
    let config = write_config(&dir);
    let d = launch(&config, &[]);
    let created = create(&d, &dir, 1);
    assert_eq!(created["object"], "fine_tuning.job");
    assert_eq!(created["model"], "smollm2");
    let id = created["id"].as_str().unwrap().to_string();
    let done = wait_for(&d, &id, |j| j["status"] != "queued" && j["status"] != "running");
    assert_eq!(done["status"], "succeeded", "{done}");
    let model = done["fine_tuned_model"].as_str().unwrap().to_string();
    assert!(model.starts_with("smollm2:support-"), "{model}");
    assert_eq!(steps_of(&d, &id), vec![1, 2, 3, 4]);
    let (_, text) = curl(&d, &format!("/v1/fine_tuning/jobs/{id}/checkpoints"), None, None);
    assert!(!json(&text)["data"].as_array().unwrap().is_empty(), "{text}");
    let (_, text) = curl(&d, "/v1/fine_tuning/jobs", None, None);
    assert!(json(&text)["data"].as_array().unwrap().iter().any(|j| j["id"] == id.as_str()));

    let chat = format!(
        r#"{{"model":"{model}","max_tokens":8,"messages":[{{"role":"user","content":"How do I reset my password?"}}]}}"#
    );
    let (status, text) = curl(&d, "/v1/chat/completions", None, Some(&chat));
    assert_eq!(status, 200, "the trained adapter serves at once: {text}");
    let (_, models) = curl(&d, "/v1/models", None, None);
    let adapter = model.split_once(':').unwrap().1;
    assert!(models.contains(adapter), "{models}");

    let cancelled = create(&d, &dir, 50);
    let cancelled_id = cancelled["id"].as_str().unwrap();
    let (status, text) = curl(&d, &format!("/v1/fine_tuning/jobs/{cancelled_id}/cancel"), None, Some("{}"));
    assert_eq!(status, 200, "{text}");
    let stopped = wait_for(&d, cancelled_id, |j| j["status"] != "queued" && j["status"] != "running");
    assert_eq!(stopped["status"], "cancelled", "{stopped}");
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// OpenAI's Python client uploads a file (`/v1/files`, multipart), starts
/// a job on it, deletes the upload (the job has its copy), follows the job
/// and chats with its model (tests/daemon/openai_fine_tune.py).
#[test]
fn a_job_trains_on_a_file_uploaded_through_the_openai_client() {
    let dir = scratch("fine-tuning-upload");
    let files = dir.join("files");
    let config = write_config_with(&dir, &format!("files_dir = {:?}", files.display().to_string()));
    let d = launch(&config, &[]);
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/daemon/openai_fine_tune.py");
    let (train, broken) = (dir.join("data/train.jsonl"), dir.join("data/broken.jsonl"));
    let out = std::process::Command::new(openai_python())
        .arg(script)
        .args([d.base.as_str(), "smollm2"])
        .args([&train, &broken])
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(out.status.success(), "openai client failed:\n{stdout}\n{stderr}");
    let mode = std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&files).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o700, "uploads are the daemon user's only");
    // A web page may not upload (a multipart form is a "simple" cross-site request).
    let form = ["-H", "Origin: https://evil.example", "-F", "purpose=fine-tune", "-F"];
    let file_arg = format!("file=@{}", train.display());
    let (status, text) = curl_args(&d, "/v1/files", &[&form[..], &[file_arg.as_str()]].concat(), None);
    assert_eq!(status, 415, "{text}");
    drop(d);
    // Without files_dir the routes say uploads are off.
    let d = launch(&write_config(&dir), &[]);
    let (status, text) = curl(&d, "/v1/files", None, None);
    assert_eq!(status, 404, "{text}");
    assert!(text.contains("files_dir"), "{text}");
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn a_job_survives_a_killed_daemon_and_resumes() {
    let dir = scratch("fine-tuning-restart");
    let config = write_config(&dir);
    let d = launch(&config, &[]);
    let id = create(&d, &dir, 3)["id"].as_str().unwrap().to_string();
    let started = Instant::now();
    // Jobs checkpoint every 5 steps: past step 6 the restart resumes from step 5.
    while steps_of(&d, &id).len() < 7 {
        assert!(started.elapsed() < Duration::from_secs(120), "no progress: {}", job(&d, &id));
        std::thread::sleep(Duration::from_millis(50));
    }
    drop(d); // SIGKILL mid-run
    assert!(dir.join("jobs").join(&id).join("checkpoints/step-00000005").is_dir());
    let d = launch(&config, &[]);
    let done = wait_for(&d, &id, |j| j["status"] != "queued" && j["status"] != "running");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(steps_of(&d, &id), (1..=12).collect::<Vec<u64>>(), "each step once across the restart");
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn bad_fine_tuning_requests_are_clear_errors() {
    let dir = scratch("fine-tuning-bad");
    let config = write_config(&dir);
    let d = launch(&config, &[]);
    let data = dir.join("data");
    let cases = [
        (serde_json::json!({"model": "smollm2", "training_file": "/etc/passwd"}), 400, "data_dirs"),
        (serde_json::json!({"model": "smollm2", "training_file": data.join("broken.jsonl")}), 400, "broken.jsonl:2"),
        (
            serde_json::json!({"model": "smollm2", "training_file": data.join("train.jsonl"), "integrations": []}),
            400,
            "integrations",
        ),
        (
            serde_json::json!({"model": "smollm2", "training_file": data.join("train.jsonl"), "method": {"type": "dpo"}}),
            400,
            "supervised",
        ),
        (
            serde_json::json!({"model": "smollm2", "training_file": data.join("train.jsonl"), "tailor": {"targets": ["lm_head"]}}),
            400,
            "lm_head",
        ),
        (
            serde_json::json!({"model": "smollm2", "training_file": data.join("train.jsonl"), "tailor": {"method": "dora"}}),
            400,
            "dora",
        ),
        (serde_json::json!({"model": "nope", "training_file": data.join("train.jsonl")}), 404, "nope"),
    ];
    for (body, expected, needle) in cases {
        let (status, text) = curl(&d, "/v1/fine_tuning/jobs", None, Some(&body.to_string()));
        assert_eq!(status, expected, "{body}: {text}");
        let error = &json(&text)["error"];
        assert!(error["message"].as_str().unwrap().contains(needle), "{body}: {text}");
    }
    let (status, text) = curl(&d, "/v1/fine_tuning/jobs/ftjob-unknown", None, None);
    assert_eq!(status, 404, "{text}");
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Creates a one-step job of `method` on `train.jsonl`; its id.
fn create_one_step(d: &Daemon, dir: &Path, method: &str) -> String {
    let body = serde_json::json!({
        "model": "smollm2",
        "training_file": dir.join("data/train.jsonl"),
        "suffix": method,
        "hyperparameters": {"n_epochs": 1, "batch_size": 8},
        "tailor": {"method": method, "targets": ["q_proj", "v_proj"]},
    });
    let (status, text) = curl(d, "/v1/fine_tuning/jobs", None, Some(&body.to_string()));
    assert_eq!(status, 200, "{text}");
    json(&text)["id"].as_str().unwrap().to_string()
}

#[test]
fn qlora_and_full_jobs_on_a_hugging_face_folder() {
    let dir = scratch("fine-tuning-methods");
    let gguf = cache().join("SmolLM2-135M-Instruct.Q4_1.gguf").display().to_string();
    let folder = cache().join("SmolLM2-135M-Instruct-hf").display().to_string();
    let config = write_config(&dir);
    std::fs::write(&config, std::fs::read_to_string(&config).unwrap().replace(&gguf, &folder)).unwrap();
    let d = launch(&config, &[]);

    let qlora = create_one_step(&d, &dir, "qlora");
    let done = wait_for(&d, &qlora, |j| j["status"] != "queued" && j["status"] != "running");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert_eq!(done["tailor"]["method"], "qlora");
    let model = done["fine_tuned_model"].as_str().unwrap();
    let chat = format!(r#"{{"model":"{model}","max_tokens":4,"messages":[{{"role":"user","content":"Hi"}}]}}"#);
    let (status, text) = curl(&d, "/v1/chat/completions", None, Some(&chat));
    assert_eq!(status, 200, "the adapter trained on NF4 serves on the folder's weights: {text}");

    let full = create_one_step(&d, &dir, "full");
    let done = wait_for(&d, &full, |j| j["status"] != "queued" && j["status"] != "running");
    assert_eq!(done["status"], "succeeded", "{done}");
    assert!(done["fine_tuned_model"].is_null(), "a new model, not an adapter: {done}");
    let out = PathBuf::from(done["result_files"][0].as_str().unwrap());
    let config: Value = json(&std::fs::read_to_string(out.join("config.json")).unwrap());
    assert_eq!(config["hidden_size"], 576);
    let weights = std::fs::metadata(out.join("model.safetensors")).unwrap().len();
    assert!(weights > 134_000_000 * 4, "every weight in f32: {weights} bytes");
    let original = std::fs::metadata(cache().join("SmolLM2-135M-Instruct-hf/model.safetensors")).unwrap().len();
    assert!(weights.abs_diff(original) < 1 << 20, "{weights} vs {original}");
    drop(d);
    std::fs::remove_dir_all(&dir).unwrap();
}
