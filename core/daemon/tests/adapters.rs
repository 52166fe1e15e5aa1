//! LoRA adapters through a real tailord: named per request (`model` or
//! `tailor.adapter`), batched across adapters with each output equal to its
//! solo run, loaded and unloaded at run time (also under load, and through
//! vLLM's routes), bounded in memory with LRU eviction and reload, listed on
//! /v1/models, refused with OpenAI-shaped errors, and combined with RAG.
//! The adapters are the PEFT-made ones under tests/reference/adapters.

mod common;

use common::*;
use serde_json::Value;
use std::path::PathBuf;

fn adapters_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/reference/adapters").canonicalize().unwrap()
}

/// The smollm2 stage's adapter settings: the reference folder allowed,
/// `qv` loaded (pinned) at start, at most `max_loaded` in memory.
fn adapter_config(max_loaded: usize) -> String {
    let dir = adapters_dir();
    format!(
        "adapter_dirs = [{:?}], adapters = {{ qv = {:?} }}, max_adapters = {max_loaded}",
        dir.display().to_string(),
        dir.join("r8-qv").display().to_string()
    )
}

fn chat(model: &str, tailor: &str, prompt: &str, max_tokens: usize, stream: bool) -> String {
    let tailor = if tailor.is_empty() { String::new() } else { format!(r#","tailor":{tailor}"#) };
    format!(
        r#"{{"model":"{model}","max_tokens":{max_tokens},"stream":{stream}{tailor},"messages":[{{"role":"user","content":"{prompt}"}}]}}"#
    )
}

fn answer(d: &Daemon, request: &str) -> String {
    let (status, body) = curl(d, "/v1/chat/completions", None, Some(request));
    assert_eq!(status, 200, "{request}: {body}");
    json(&body)["choices"][0]["message"]["content"].as_str().unwrap().to_string()
}

fn streamed(d: &Daemon, request: &str) -> String {
    let (status, text) = curl(d, "/v1/chat/completions", None, Some(request));
    assert_eq!(status, 200, "{text}");
    text.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            let event = json(e);
            assert!(event.get("error").is_none(), "stream error: {e}");
            event["choices"][0]["delta"]["content"].as_str().unwrap_or("").to_string()
        })
        .collect()
}

fn load(d: &Daemon, name: &str, folder: &str) -> (u16, String) {
    let path = adapters_dir().join(folder);
    curl(d, "/v1/adapters", None, Some(&format!(r#"{{"name":"{name}","path":{:?}}}"#, path.display().to_string())))
}

fn assert_openai_error(status: u16, body: &str, want: u16) {
    assert_eq!(status, want, "{body}");
    let error = &json(body)["error"];
    assert!(error["message"].is_string() && error["type"].is_string(), "{body}");
}

#[test]
fn adapters_per_request_batched_hot_loaded_and_bounded() {
    let d = start_full("adapters", OPEN_TCP, &adapter_config(4), "");
    for (name, folder) in [
        ("all", "r16-all-linear"),
        ("rs", "rslora"),
        ("pattern", "rank-pattern"),
        ("dora", "dora"),
        ("qv-b", "r8-qv"),
        ("all-b", "r16-all-linear"),
        ("dora-b", "dora"),
    ] {
        let (status, body) = load(&d, name, folder);
        assert_eq!(status, 200, "{name}: {body}");
    }
    let listed = json(&curl(&d, "/v1/adapters", None, None).1);
    let names: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|a| a["name"].as_str().unwrap()).collect();
    assert_eq!(names.len(), 8, "{listed}");
    let qv = listed["data"].as_array().unwrap().iter().find(|a| a["name"] == "qv").unwrap();
    assert_eq!((qv["pinned"].as_bool(), qv["rank"].as_u64()), (Some(true), Some(8)), "{listed}");
    let loaded = listed["data"].as_array().unwrap().iter().filter(|a| a["loaded"] == true).count();
    assert!(loaded <= 4, "max_adapters = 4 holds: {listed}");
    let models = json(&curl(&d, "/v1/models", None, None).1);
    let all = models["data"].as_array().unwrap().iter().find(|m| m["id"] == "all").expect("adapters on /v1/models");
    assert_eq!(all["parent"], "smollm2", "{models}");

    // 32 requests: 8 adapters, the base, and one adapter at two scales,
    // named every way the API allows.
    let prompts = ["Describe the sea.", "Name three fruits.", "What is a verb?", "Say hello."];
    let targets: Vec<(String, String)> = [
        ("smollm2", ""),
        ("qv", ""),
        ("smollm2:all", ""),
        ("smollm2", r#"{"adapter":"rs"}"#),
        ("pattern", ""),
        ("dora", ""),
        ("qv-b", ""),
        ("all", r#"{"adapter_scale":0.5}"#),
        ("all-b", ""),
        ("dora-b", ""),
    ]
    .iter()
    .map(|(m, t)| (m.to_string(), t.to_string()))
    .collect();
    let requests: Vec<(String, String)> = (0..32)
        .map(|i| {
            let (model, tailor) = &targets[i % targets.len()];
            let prompt = prompts[i % prompts.len()];
            (chat(model, tailor, prompt, 10, false), chat(model, tailor, prompt, 10, true))
        })
        .collect();
    let alone: Vec<String> = requests.iter().map(|(solo, _)| answer(&d, solo)).collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = requests.iter().map(|(_, s)| scope.spawn(|| streamed(&d, s))).collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    for (i, (a, t)) in alone.iter().zip(&together).enumerate() {
        assert_eq!(a, t, "request {i} ({}) differs batched from alone", requests[i].0);
    }
    // The adapters change the output, and the scale matters.
    let base = answer(&d, &chat("smollm2", "", prompts[0], 10, false));
    let differing =
        ["qv", "all", "dora"].iter().filter(|m| answer(&d, &chat(m, "", prompts[0], 10, false)) != base).count();
    assert!(differing >= 2, "adapters change what the base says");
    let full = answer(&d, &chat("all", "", prompts[1], 10, false));
    let half = answer(&d, &chat("all", r#"{"adapter_scale":0.5}"#, prompts[1], 10, false));
    println!("base: {base:?}\nall at 1: {full:?}\nall at 0.5: {half:?}");
    let batch = |name: &str| metric(&d, None, &format!("{name}{{stage=\"smollm2\"}}")).unwrap_or(-1.0);
    println!(
        "adapters: loaded {}, bytes {}, hits {}, misses {}, evictions {}",
        batch("tailor_adapters_loaded"),
        batch("tailor_adapter_bytes"),
        batch("tailor_adapter_hits_total"),
        batch("tailor_adapter_misses_total"),
        batch("tailor_adapter_evictions_total")
    );
    assert!(batch("tailor_adapter_evictions_total") > 0.0 && batch("tailor_adapter_misses_total") > 0.0);
    assert!(batch("tailor_adapters_loaded") <= 4.0);

    // Errors, OpenAI-shaped; the daemon keeps serving.
    let (status, body) = curl(&d, "/v1/chat/completions", None, Some(&chat("nope", "", "Hi", 4, false)));
    assert_openai_error(status, &body, 404);
    let (status, body) = load(&d, "all", "r8-qv");
    assert_openai_error(status, &body, 409);
    let (status, body) = curl(&d, "/v1/adapters", None, Some(r#"{"name":"etc","path":"/etc"}"#));
    assert_openai_error(status, &body, 400);
    assert!(body.contains("adapter_dirs"), "{body}");
    let (status, body) =
        curl(&d, "/v1/chat/completions", None, Some(&chat("dora", r#"{"adapter_scale":0.5}"#, "Hi", 4, false)));
    assert_openai_error(status, &body, 400);

    // Hot load and unload 20 times while 8 streams run: no stream errs or changes.
    let long: Vec<String> =
        (0..8).map(|i| chat(["qv", "smollm2", "all"][i % 3], "", prompts[i % 4], 40, true)).collect();
    let solo: Vec<String> = long.iter().map(|r| streamed(&d, r)).collect();
    let during: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = long.iter().map(|r| scope.spawn(|| streamed(&d, r))).collect();
        for round in 0..20 {
            let (status, body) = load(&d, "tmp", if round % 2 == 0 { "rslora" } else { "rank-pattern" });
            assert_eq!(status, 200, "{body}");
            let (status, body) = curl_method(&d, "DELETE", "/v1/adapters/tmp", "{}");
            assert_eq!(status, 200, "{body}");
        }
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(during, solo, "streams are unchanged by loads and unloads beside them");
    let (status, body) = curl(&d, "/v1/chat/completions", None, Some(&chat("tmp", "", "Hi", 4, false)));
    assert_openai_error(status, &body, 404);

    // An adapter unloaded while a request uses it: the request finishes
    // with it, unchanged; the next one naming it is a 404.
    let (status, body) = load(&d, "doomed", "r16-all-linear");
    assert_eq!(status, 200, "{body}");
    let request = chat("doomed", "", prompts[0], 48, true);
    let solo = streamed(&d, &request);
    let during = std::thread::scope(|scope| {
        let stream = scope.spawn(|| streamed(&d, &request));
        std::thread::sleep(std::time::Duration::from_millis(300));
        let (status, body) = curl_method(&d, "DELETE", "/v1/adapters/doomed", "{}");
        assert_eq!(status, 200, "{body}");
        stream.join().unwrap()
    });
    assert_eq!(during, solo, "a request keeps its adapter when the name is unloaded mid-stream");
    let (status, body) = curl(&d, "/v1/chat/completions", None, Some(&chat("doomed", "", "Hi", 4, false)));
    assert_openai_error(status, &body, 404);

    // vLLM's routes.
    let path = adapters_dir().join("rslora").display().to_string();
    let (status, body) =
        curl(&d, "/v1/load_lora_adapter", None, Some(&format!(r#"{{"lora_name":"v","lora_path":{path:?}}}"#)));
    assert_eq!(status, 200, "{body}");
    assert_eq!(answer(&d, &chat("v", "", prompts[2], 10, false)), answer(&d, &chat("rs", "", prompts[2], 10, false)));
    let (status, body) = curl(&d, "/v1/unload_lora_adapter", None, Some(r#"{"lora_name":"v"}"#));
    assert_eq!(status, 200, "{body}");
    let (status, body) = curl(&d, "/v1/unload_lora_adapter", None, Some(r#"{"lora_name":"v"}"#));
    assert_openai_error(status, &body, 404);
}

#[test]
fn a_broken_adapter_is_refused_and_the_daemon_keeps_serving() {
    let dir = scratch("broken-adapters");
    let broken = dir.join("truncated");
    std::fs::create_dir_all(&broken).unwrap();
    let source = adapters_dir().join("r8-qv");
    std::fs::copy(source.join("adapter_config.json"), broken.join("adapter_config.json")).unwrap();
    let bytes = std::fs::read(source.join("adapter_model.safetensors")).unwrap();
    std::fs::write(broken.join("adapter_model.safetensors"), &bytes[..bytes.len() / 3]).unwrap();
    let generate = format!("adapter_dirs = [{:?}], max_rank = 8", dir.display().to_string());
    let d = start_full("broken-adapters-daemon", OPEN_TCP, &generate, "");
    let request = format!(r#"{{"name":"t","path":{:?}}}"#, broken.display().to_string());
    let (status, body) = curl(&d, "/v1/adapters", None, Some(&request));
    assert_openai_error(status, &body, 400);
    assert!(body.contains("truncated"), "{body}");
    let big = dir.join("big");
    std::fs::create_dir_all(&big).unwrap();
    for file in ["adapter_config.json", "adapter_model.safetensors"] {
        std::fs::copy(adapters_dir().join("r16-all-linear").join(file), big.join(file)).unwrap();
    }
    let (status, body) =
        curl(&d, "/v1/adapters", None, Some(&format!(r#"{{"name":"b","path":{:?}}}"#, big.display().to_string())));
    assert_openai_error(status, &body, 400);
    assert!(body.contains("max_rank"), "{body}");
    assert!(!answer(&d, &chat("smollm2", "", "Say hi.", 4, false)).is_empty(), "the daemon still serves");
}

#[test]
fn an_adapter_changes_the_style_of_a_rag_answer_but_not_its_sources() {
    let extra = bluebird_index(&scratch("adapter-rag"));
    let d = start_full("adapter-rag-daemon", OPEN_TCP, &adapter_config(4), &extra);
    let ask = |model: &str| -> Value {
        let request = chat(model, r#"{"index":"kb","k":2}"#, "What is the launch code of project Bluebird?", 24, false);
        let (status, body) = curl(&d, "/v1/chat/completions", None, Some(&request));
        assert_eq!(status, 200, "{body}");
        json(&body)
    };
    let (status, body) = load(&d, "all", "r16-all-linear");
    assert_eq!(status, 200, "{body}");
    let (base, tuned) = (ask("smollm2"), ask("all"));
    println!(
        "base: {}\nadapter: {}",
        base["choices"][0]["message"]["content"], tuned["choices"][0]["message"]["content"]
    );
    assert_eq!(base["tailor"]["sources"], tuned["tailor"]["sources"], "retrieval does not depend on the adapter");
    assert!(base["tailor"]["sources"][0]["source"].as_str().unwrap().ends_with("bluebird.txt"));
    assert_ne!(base["choices"][0]["message"]["content"], tuned["choices"][0]["message"]["content"]);
    // Streamed, the same answer and sources.
    let request = chat("all", r#"{"index":"kb","k":2}"#, "What is the launch code of project Bluebird?", 24, true);
    assert_eq!(streamed(&d, &request), tuned["choices"][0]["message"]["content"].as_str().unwrap());
}
