//! tailord end to end: the real daemon binary loads the real first-party
//! plugins (built as cdylibs by `cargo build --workspace`) with SmolLM2 and
//! MiniLM, and curl talks to it over HTTP.

mod common;

use common::*;
use std::path::PathBuf;
use std::process::Command;

const CHAT: &str = r#"{"model":"smollm2","max_tokens":24,"messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France?"}]}"#;

#[test]
fn chat_streaming_embeddings_and_errors_over_http() {
    let d = start("api", "http = \"127.0.0.1:0\"\ntoken = \"s3cret\"");
    let token = Some("s3cret");
    assert_eq!(curl(&d, "/health", None, None), (200, r#"{"status":"ok"}"#.to_string()));
    let (status, body) = curl(&d, "/v1/models", None, None);
    assert_eq!(status, 401, "{body}");
    let (status, body) = curl(&d, "/v1/models", token, None);
    assert_eq!(status, 200);
    let ids: Vec<String> =
        json(&body)["data"].as_array().unwrap().iter().map(|m| m["id"].as_str().unwrap().to_string()).collect();
    assert_eq!(ids, ["smollm2", "minilm"]);

    let (status, body) = curl(&d, "/v1/chat/completions", token, Some(CHAT));
    assert_eq!(status, 200, "{body}");
    let reply = json(&body);
    let answer = reply["choices"][0]["message"]["content"].as_str().unwrap().to_string();
    assert!(answer.contains("Paris"), "{answer}");
    assert!(reply["usage"]["prompt_tokens"].as_u64().unwrap() > 10);

    let (status, again) = curl(&d, "/v1/chat/completions", token, Some(CHAT));
    assert_eq!(status, 200);
    assert_eq!(json(&again)["choices"], reply["choices"], "the answer cache returns the same answer");
    let (_, metrics) = curl(&d, "/metrics", token, None);
    assert!(metrics.contains("tailor_answer_cache_hits_total 1"), "{metrics}");

    let streaming = CHAT.replacen('{', "{\"stream\":true,", 1);
    let (status, body) = curl(&d, "/v1/chat/completions", token, Some(&streaming));
    assert_eq!(status, 200);
    let events: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(events.last(), Some(&"[DONE]"));
    let streamed: String = events[..events.len() - 1]
        .iter()
        .map(|e| json(e)["choices"][0]["delta"]["content"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(streamed, answer, "streaming and non-streaming greedy answers agree");

    let (status, body) = curl(
        &d,
        "/v1/completions",
        token,
        Some(r#"{"model":"smollm2","prompt":"The capital of France is","max_tokens":3}"#),
    );
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["choices"][0]["text"].as_str().unwrap().contains("Paris"));

    let (status, body) =
        curl(&d, "/v1/embeddings", token, Some(r#"{"model":"minilm","input":["first text","second text"]}"#));
    assert_eq!(status, 200, "{body}");
    let data = json(&body)["data"].as_array().unwrap().clone();
    assert_eq!(data.len(), 2);
    let v: Vec<f64> = data[0]["embedding"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    assert_eq!(v.len(), 384);
    assert!((v.iter().map(|x| x * x).sum::<f64>() - 1.0).abs() < 1e-4);
    // Both plugins ran kernels, on one pool: the daemon's (cpu_threads
    // participants, the caller being one), not a team per plugin.
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(kernel_threads(&d), (1..cores).map(|i| format!("tailor-spin-{i}")).collect::<Vec<_>>());

    for (request, want) in [
        ("{not json", 400),
        (r#"{"model":"gpt-9","messages":[{"role":"user","content":"hi"}]}"#, 404),
        (r#"{"model":"smollm2","messages":[]}"#, 400),
        (r#"{"model":"smollm2","messages":[{"role":"user","content":"hi"}],"top_p":0}"#, 400),
    ] {
        let (status, body) = curl(&d, "/v1/chat/completions", token, Some(request));
        assert_eq!(status, want, "{request} -> {body}");
        assert!(json(&body)["error"]["message"].as_str().is_some());
    }
    let long = format!(r#"{{"model":"smollm2","messages":[{{"role":"user","content":"{}"}}]}}"#, "word ".repeat(9000));
    let (status, body) = curl(&d, "/v1/chat/completions", token, Some(&long));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("context"), "{body}");
    // Every failure in OpenAI's shape, axum's own answers included.
    let huge = format!(r#"{{"model":"smollm2","prompt":"{}"}}"#, "x".repeat(300_000));
    let (status, body) = curl(&d, "/v1/completions", token, Some(&huge));
    assert_eq!(status, 413, "{body}");
    assert_eq!(json(&body)["error"]["code"], "request_too_large", "{body}");
    let (status, body) = curl(&d, "/v1/no-such-route", token, Some("{}"));
    assert_eq!((status, json(&body)["error"]["type"].as_str()), (404, Some("invalid_request_error")), "{body}");
    // Embeddings: base64 is the float vector's bytes; `dimensions` is refused by name.
    let request = r#"{"model":"minilm","input":"first text","encoding_format":"base64"}"#;
    let (status, body) = curl(&d, "/v1/embeddings", token, Some(request));
    assert_eq!(status, 200, "{body}");
    let decoded = base64_floats(json(&body)["data"][0]["embedding"].as_str().unwrap());
    assert_eq!(decoded.len(), 384);
    assert!(decoded.iter().zip(&v).all(|(a, b)| (*a as f64 - b).abs() < 1e-6), "base64 decodes to the float vector");
    let (status, body) = curl(&d, "/v1/embeddings", token, Some(r#"{"model":"minilm","input":"x","dimensions":8}"#));
    assert_eq!((status, json(&body)["error"]["param"].as_str()), (400, Some("dimensions")), "{body}");
    // Log-probabilities over the API are the CLI's, value for value.
    let request =
        r#"{"model":"smollm2","prompt":"The capital of France is","max_tokens":3,"temperature":0,"logprobs":3}"#;
    let (status, body) = curl(&d, "/v1/completions", token, Some(request));
    assert_eq!(status, 200, "{body}");
    let api = json(&body)["choices"][0]["logprobs"].clone();
    let cli = Command::new(plugin_dir().join("tailor"))
        .args(["generate", "--model"])
        .arg(cache().join("SmolLM2-135M-Instruct.Q4_1.gguf"))
        .args(["--prompt", "The capital of France is", "--max-tokens", "3", "--logprobs", "3"])
        .output()
        .expect("running the tailor CLI");
    let cli: Vec<serde_json::Value> = String::from_utf8_lossy(&cli.stdout).lines().map(json).collect();
    assert_eq!(cli.len(), 3, "{cli:?}");
    for (i, line) in cli.iter().enumerate() {
        assert_eq!(api["tokens"][i], line["token"], "{api} vs {line}");
        let close =
            |a: &serde_json::Value, b: &serde_json::Value| (a.as_f64().unwrap() - b.as_f64().unwrap()).abs() < 1e-5;
        assert!(close(&api["token_logprobs"][i], &line["logprob"]), "{api} vs {line}");
        for alternative in line["top_logprobs"].as_array().unwrap() {
            let token = alternative["token"].as_str().unwrap();
            assert!(close(&api["top_logprobs"][i][token], &alternative["logprob"]), "{token}: {api} vs {line}");
        }
    }
    // Token counts before sending, the chat template included; the model's shape on /v1/models.
    let tokenize = r#"{"model":"smollm2","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the capital of France?"}]}"#;
    let (status, body) = curl(&d, "/tokenize", token, Some(tokenize));
    assert_eq!(status, 200, "{body}");
    let counted = json(&body);
    assert_eq!(counted["count"], reply["usage"]["prompt_tokens"], "{body}");
    assert_eq!(counted["max_model_len"].as_u64(), Some(8192), "{body}");
    let ids = counted["tokens"].clone();
    let (status, body) = curl(&d, "/detokenize", token, Some(&format!(r#"{{"model":"smollm2","tokens":{ids}}}"#)));
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["prompt"].as_str().unwrap().contains("<|im_start|>user\nWhat is the capital of France?"));
    let (_, body) = curl(&d, "/tokenize", token, Some(r#"{"model":"smollm2","prompt":"Hello","extra":1}"#));
    assert_eq!(json(&body)["error"]["param"], "extra", "{body}");
    let (_, body) = curl(&d, "/v1/models", token, None);
    let models = json(&body);
    assert_eq!(models["data"][0]["max_model_len"].as_u64(), Some(8192), "{body}");
    assert_eq!(
        (models["data"][1]["max_model_len"].as_u64(), models["data"][1]["tailor_dim"].as_u64()),
        (Some(256), Some(384))
    );
    let (status, _) = curl(&d, "/health", None, None);
    assert_eq!(status, 200, "the daemon keeps serving after bad requests");
}

/// `device = "cuda"` where there is no usable CUDA (no driver here, or a
/// build without it): the daemon says so, serves on the CPU, and shows no
/// device memory on /metrics.
#[test]
fn a_cuda_device_that_is_unavailable_falls_back_to_the_cpu_and_serves() {
    let dir = scratch("cuda-fallback");
    let path = dir.join("tailord.toml");
    let plugins = format!("{:?}", plugin_dir().display().to_string());
    let server = format!("{OPEN_TCP}\ndevice = \"cuda\"\ndevice_memory_mb = 512");
    std::fs::write(&path, config(&server, &plugins)).unwrap();
    let log = dir.join("tailord.log");
    let d = launch_logging(&path, &[], Some(&log));
    let request = r#"{"model":"smollm2","prompt":"The capital of France is","max_tokens":3}"#;
    let (status, body) = curl(&d, "/v1/completions", None, Some(request));
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["choices"][0]["text"].as_str().unwrap().contains("Paris"));
    let logged = std::fs::read_to_string(&log).unwrap();
    assert!(logged.contains("cuda:0 is unavailable") && logged.contains("running on the CPU"), "{logged}");
    assert_eq!(metric(&d, None, "tailor_device_memory_reserved_bytes"), None);
}

#[test]
fn non_loopback_bind_and_foreign_plugin_paths_are_refused() {
    let dir = scratch("refuse");
    let path = dir.join("remote.toml");
    std::fs::write(&path, config("http = \"0.0.0.0:0\"", &format!("{:?}", plugin_dir().display().to_string())))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tailord")).arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("allow_remote"), "{err}");
    let empty = scratch("empty-plugins");
    std::fs::write(&path, config(OPEN_TCP, &format!("{:?}", empty.display().to_string()))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tailord")).arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("cannot load"), "{err}");
    let abs = config(OPEN_TCP, &format!("{:?}", empty.display().to_string())).replace(
        "\"libtailor_serve_llm.so\"",
        &format!("{:?}", plugin_dir().join("libtailor_serve_llm.so").display().to_string()),
    );
    std::fs::write(&path, abs).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tailord")).arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("plugins load only from the configured directories"), "{err}");
}

#[test]
fn unix_socket_metrics_sd_notify_and_sigterm() {
    use std::os::unix::fs::PermissionsExt;
    let dir = scratch("unix");
    let socket = dir.join("tailord.sock");
    let notify_path = dir.join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify.set_read_timeout(Some(std::time::Duration::from_secs(120))).unwrap();
    let path = dir.join("tailord.toml");
    let server = format!("{OPEN_TCP}\nunix_socket = {:?}", socket.display().to_string());
    std::fs::write(&path, config(&server, &format!("{:?}", plugin_dir().display().to_string()))).unwrap();
    let mut d = launch(&path, &[("NOTIFY_SOCKET", &notify_path)]);
    let mut buf = [0u8; 256];
    let n = notify.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("READY=1"));
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o660, "the socket is owner/group only");
    let out = Command::new("curl")
        .args(["-sS", "--unix-socket"])
        .arg(&socket)
        .args([
            "http://tailord/v1/completions",
            "-H",
            "Content-Type: application/json",
            "-d",
            r#"{"model":"smollm2","prompt":"The capital of France is","max_tokens":3}"#,
        ])
        .output()
        .unwrap();
    let reply = json(&String::from_utf8_lossy(&out.stdout));
    assert!(reply["choices"][0]["text"].as_str().unwrap().contains("Paris"), "{reply}");
    let (status, metrics) = curl(&d, "/metrics", None, None);
    assert_eq!(status, 200);
    assert!(metrics.contains("tailor_requests_total{outcome=\"ok\"} 1"), "{metrics}");
    assert!(metrics.contains("tailor_completion_tokens_total 3"), "{metrics}");
    let status = Command::new(plugin_dir().join("tailor")).arg("status").arg("--socket").arg(&socket).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(
        status.status.success() && text.contains("stage smollm2") && text.contains("tailor_requests_total"),
        "{text}"
    );

    let pid = d.child.id().to_string();
    assert!(Command::new("kill").args(["-TERM", &pid]).status().unwrap().success());
    let n = notify.recv(&mut buf).unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).contains("STOPPING=1"));
    assert!(d.child.wait().unwrap().success(), "SIGTERM stops tailord cleanly");
}

#[test]
fn rag_through_chat_returns_sources() {
    let extra = bluebird_index(&scratch("rag"));
    let d = start_with("rag-daemon", OPEN_TCP, &extra);
    let request = r#"{"model":"smollm2","max_tokens":32,"tailor":{"index":"kb","k":2},
        "messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"What is the launch code of project Bluebird?"}]}"#;
    let (status, body) = curl(&d, "/v1/chat/completions", None, Some(request));
    assert_eq!(status, 200, "{body}");
    let reply = json(&body);
    let sources = reply["tailor"]["sources"].as_array().expect("sources");
    assert_eq!(sources.len(), 2);
    assert!(sources[0]["source"].as_str().unwrap().ends_with("bluebird.txt"), "{reply}");
    println!("answer: {}", reply["choices"][0]["message"]["content"]);
    let (status, body) = curl(&d, "/v1/chat/completions", None, Some(&request.replace("\"kb\"", "\"missing\"")));
    assert_eq!(status, 404, "{body}");
    assert!(body.contains("no index named"), "{body}");
}

#[test]
fn concurrent_streaming_clients_each_get_their_single_request_output() {
    let d = start("concurrent", OPEN_TCP);
    let prompts: Vec<String> = (0..32).map(|i| format!("Count from {i} to {}:", i + 5)).collect();
    let request = |p: &str, stream: bool| {
        format!(
            r#"{{"model":"smollm2","max_tokens":12,"stream":{stream},"messages":[{{"role":"user","content":"{p}"}}]}}"#
        )
    };
    let alone: Vec<String> = prompts
        .iter()
        .map(|p| {
            let (status, body) = curl(&d, "/v1/chat/completions", None, Some(&request(p, false)));
            assert_eq!(status, 200);
            json(&body)["choices"][0]["message"]["content"].as_str().unwrap().to_string()
        })
        .collect();
    let together: Vec<String> = std::thread::scope(|scope| {
        let handles: Vec<_> = prompts
            .iter()
            .map(|p| {
                let (d, body) = (&d, request(p, true));
                scope.spawn(move || {
                    let (status, text) = curl(d, "/v1/chat/completions", None, Some(&body));
                    assert_eq!(status, 200);
                    text.lines()
                        .filter_map(|l| l.strip_prefix("data: "))
                        .filter(|e| *e != "[DONE]")
                        .map(|e| json(e)["choices"][0]["delta"]["content"].as_str().unwrap_or("").to_string())
                        .collect::<String>()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together, alone, "32 concurrent streams reproduce each single-request greedy output");
    let (_, metrics) = curl(&d, "/metrics", None, None);
    let value = |name: &str| -> f64 {
        let line = metrics.lines().find(|l| l.starts_with(&format!("{name}{{stage=\"smollm2\"}}")));
        line.and_then(|l| l.rsplit(' ').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name}: {metrics}"))
    };
    let mean_batch = value("tailor_generate_decoded_tokens_total") / value("tailor_generate_decode_steps_total");
    println!("mean decode batch over the test: {mean_batch:.2}");
    assert!(mean_batch > 1.5, "the concurrent streams were not batched together: {metrics}");
    assert_eq!(value("tailor_generate_queue_depth"), 0.0);
    // Every prompt starts with the chat template's system prompt: after the
    // first, each reused its keys and values (and still matched exactly).
    assert!(value("tailor_generate_prefix_hits_total") >= 31.0, "{metrics}");
}

/// Little-endian f32s from standard base64.
fn base64_floats(text: &str) -> Vec<f32> {
    let alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let sextets: Vec<u32> = text.trim_end_matches('=').chars().map(|c| alphabet.find(c).unwrap() as u32).collect();
    let mut bytes = Vec::new();
    for group in sextets.chunks(4) {
        let n = group.iter().enumerate().fold(0, |n, (i, s)| n | s << (18 - 6 * i));
        bytes.extend(n.to_be_bytes()[1..group.len()].iter());
    }
    bytes.chunks_exact(4).map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])).collect()
}

/// Names of the daemon's kernel-pool threads, sorted.
fn kernel_threads(d: &Daemon) -> Vec<String> {
    let tasks = std::fs::read_dir(format!("/proc/{}/task", d.child.id())).unwrap();
    let comm = |task: std::fs::DirEntry| std::fs::read_to_string(task.path().join("comm")).ok();
    let mut names: Vec<String> = tasks
        .filter_map(|task| comm(task.ok()?))
        .map(|name| name.trim().to_string())
        .filter(|name| name.starts_with("tailor-spin"))
        .collect();
    names.sort();
    names
}

#[test]
fn official_openai_client_completes_streams_and_embeds() {
    let python = openai_python();
    let d = start("openai", "http = \"127.0.0.1:0\"\ntoken = \"s3cret\"");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/daemon/openai_client.py");
    let out = Command::new(&python).arg(script).args([d.base.as_str(), "smollm2", "minilm"]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("{stdout}");
    assert!(out.status.success(), "openai client failed:\n{stdout}\n{stderr}");
}

#[test]
fn c_filter_plugin_runs_as_a_pipeline_stage_after_generation() {
    let dir = scratch("pipeline");
    let plugins = dir.join("plugins");
    std::fs::create_dir_all(&plugins).unwrap();
    let repo = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let built = Command::new("cc")
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
        .arg(repo.join("include"))
        .arg(repo.join("plugins/examples/redact_email.c"))
        .arg("-o")
        .arg(plugins.join("libredact_email.so"))
        .status()
        .unwrap();
    assert!(built.success());
    let models = cache();
    let extra = format!(
        "[[stages]]\nname = \"redact\"\nplugin = \"libredact_email.so\"\nstage = \"redact-email\"\n\n\
         [[stages]]\nname = \"smollm2-safe\"\nplugin = \"libtailor_serve_llm.so\"\nstage = \"generate\"\n\
         filters = [\"redact\"]\nconfig = {{ model = {:?} }}\n",
        models.join("SmolLM2-135M-Instruct.Q4_1.gguf").display().to_string()
    );
    let path = dir.join("tailord.toml");
    let dirs = format!("{:?}, {:?}", plugin_dir().display().to_string(), plugins.display().to_string());
    std::fs::write(&path, config_with(OPEN_TCP, &dirs, &extra)).unwrap();
    let d = launch(&path, &[]);

    let (status, body) =
        curl(&d, "/v1/tailor/stages/redact", None, Some(r#"{"text": "write to alice@example.com today"}"#));
    assert_eq!((status, json(&body)["text"].as_str().unwrap()), (200, "write to [redacted] today"));

    let prompt = "List of email addresses:\\n1. bob@example.com\\n2. carol@example.com\\n3.";
    let request = |model: &str, stream: bool| {
        format!(r#"{{"model":"{model}","prompt":"{prompt}","max_tokens":10,"stream":{stream}}}"#)
    };
    let text = |body: &str| json(body)["choices"][0]["text"].as_str().unwrap().to_string();
    let (_, raw) = curl(&d, "/v1/completions", None, Some(&request("smollm2", false)));
    let raw = text(&raw);
    assert!(raw.contains("@example.com"), "the unfiltered model writes an address: {raw:?}");
    let (_, safe) = curl(&d, "/v1/completions", None, Some(&request("smollm2-safe", false)));
    let safe = text(&safe);
    assert!(safe.contains("[redacted]") && !safe.contains('@'), "{safe:?}");
    let (_, streamed) = curl(&d, "/v1/completions", None, Some(&request("smollm2-safe", true)));
    let streamed: String = streamed
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .filter(|e| *e != "[DONE]")
        .map(|e| json(e)["choices"][0]["text"].as_str().unwrap_or("").to_string())
        .collect();
    assert_eq!(streamed, safe, "streamed answers pass the same filter");
}

#[test]
fn a_panicking_in_process_stage_fails_only_its_request() {
    let extra = "[[stages]]\nname = \"shout\"\nplugin = \"libtailor_example_shout.so\"\nstage = \"shout\"\n";
    let d = start_with("panic", OPEN_TCP, extra);
    let (status, body) = curl(&d, "/v1/tailor/stages/shout", None, Some(r#"{"text": "hello"}"#));
    assert_eq!((status, json(&body)["text"].as_str().unwrap()), (200, "HELLO"));
    let (status, body) = curl(&d, "/v1/tailor/stages/shout", None, Some(r#"{"text": "panic"}"#));
    assert_eq!(status, 500, "{body}");
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("shout was asked to panic"), "{body}");
    let (status, body) = curl(&d, "/v1/tailor/stages/shout", None, Some(r#"{"text": "again"}"#));
    assert_eq!((status, json(&body)["text"].as_str().unwrap()), (200, "AGAIN"), "the next request succeeds");
    let (status, _) = curl(&d, "/v1/completions", None, Some(r#"{"model":"smollm2","prompt":"Hi","max_tokens":2}"#));
    assert_eq!(status, 200, "other stages keep serving");
    assert_host_services(&d);
}

/// The shout stage uses the host's services: calls the embed stage by
/// name, reports progress (on /metrics), reads its CPU budget, checks
/// cancellation; a call to a missing stage fails with the host's message.
fn assert_host_services(d: &Daemon) {
    let ask = r#"{"text": "hi", "ask": {"stage": "minilm", "request": {"input": ["a sentence to embed"]}}}"#;
    let (status, body) = curl(d, "/v1/tailor/stages/shout", None, Some(ask));
    assert_eq!(status, 200, "{body}");
    let reply = json(&body);
    assert_eq!(reply["answer"]["embeddings"][0].as_array().map(Vec::len), Some(384), "{body}");
    assert!(reply["cpu_threads"].as_u64().unwrap() >= 1 && reply["cancelled"] == false, "{body}");
    let (_, metrics) = curl(d, "/metrics", None, None);
    assert!(metrics.contains("tailor_task_done{task=\"shout ask\"} 1"), "{metrics}");
    let missing = r#"{"text": "hi", "ask": {"stage": "nowhere", "request": {}}}"#;
    let (status, body) = curl(d, "/v1/tailor/stages/shout", None, Some(missing));
    assert_eq!(status, 400, "{body}");
    let message = json(&body)["error"]["message"].as_str().unwrap_or_default().to_string();
    assert!(message.contains("no stage named \"nowhere\""), "{body}");
}

#[test]
fn a_crashing_isolated_stage_fails_one_request_and_is_restarted() {
    let extra =
        "[[stages]]\nname = \"shout\"\nplugin = \"libtailor_example_shout.so\"\nstage = \"shout\"\nisolate = true\n";
    let d = start_with("isolated", OPEN_TCP, extra);
    let call = |text: &str| curl(&d, "/v1/tailor/stages/shout", None, Some(&format!(r#"{{"text": "{text}"}}"#)));
    let (status, body) = call("hello");
    assert_eq!((status, json(&body)["text"].as_str().unwrap()), (200, "HELLO"));
    let (status, body) = call("abort");
    assert_eq!(status, 500, "{body}");
    assert!(json(&body)["error"]["message"].as_str().unwrap().contains("isolated plugin process crashed"), "{body}");
    let (status, body) = call("again");
    assert_eq!(
        (status, json(&body)["text"].as_str().unwrap()),
        (200, "AGAIN"),
        "a new plugin host serves the next request"
    );
    let (status, body) = call("panic");
    assert_eq!(status, 500);
    assert!(body.contains("shout was asked to panic"), "{body}");
    assert_eq!(call("still").0, 200);
    assert_eq!(curl(&d, "/health", None, None).0, 200);
    // The same services, proxied from the child process.
    assert_host_services(&d);
}

#[test]
fn indexes_are_managed_through_the_daemon_and_searched_at_once() {
    let dir = scratch("manage");
    let (root, corpus) = (dir.join("indexes"), dir.join("corpus"));
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("bluebird.txt"), "Project Bluebird: the launch code of project Bluebird is 7421.")
        .unwrap();
    std::fs::write(corpus.join("trains.txt"), "The night train to Vienna leaves at 22:10 from platform 4.").unwrap();
    let stage = |name: &str, kind: &str, config: String| {
        format!("[[stages]]\nname = \"{name}\"\nplugin = \"libtailor_retrieval_faiss.so\"\nstage = \"{kind}\"\nconfig = {{ {config} }}\n")
    };
    let root_cfg = format!("root = {:?}", root.display().to_string());
    let encoder = format!(
        "{root_cfg}, encoder = {:?}, document_roots = [{:?}]",
        cache().join("all-MiniLM-L6-v2").display().to_string(),
        corpus.display().to_string()
    );
    let extra = stage("kb-index", "index", encoder) + &stage("kb-search", "search", root_cfg);
    let d = start_with("manage-daemon", OPEN_TCP, &extra);
    let call = |path: &str, body: String| {
        let (status, text) = curl(&d, path, None, Some(&body));
        assert_eq!(status, 200, "{path}: {text}");
        json(&text)
    };
    call("/v1/indexes", r#"{"name": "kb"}"#.into());
    let added = call("/v1/indexes/kb/documents", format!(r#"{{"paths": [{:?}]}}"#, corpus.display().to_string()));
    assert_eq!((added["documents"].as_u64(), added["chunks"].as_u64()), (Some(2), Some(2)), "{added}");
    let (_, metrics) = curl(&d, "/metrics", None, None);
    assert!(metrics.contains("tailor_task_done{task=\"index kb: files\"} 2"), "ingest progress: {metrics}");
    let inline = r#"{"documents": [{"id": "memo-7", "text": "The cafeteria serves lentil soup on Thursdays.",
        "metadata": {"author": "facilities"}}]}"#;
    let added = call("/v1/indexes/kb/documents", inline.into());
    assert_eq!(added["documents"].as_u64(), Some(3), "{added}");
    let hits = call("/v1/indexes/kb/search", r#"{"query": "What soup is served on Thursday?", "k": 1}"#.into());
    assert_eq!(hits["hits"][0]["doc_id"], "memo-7", "{hits}");
    assert_eq!(hits["hits"][0]["metadata"]["author"], "facilities", "{hits}");
    let ask = r#"{"model":"smollm2","max_tokens":8,"tailor":{"index":"kb","k":1,"search":"kb-search"},
        "messages":[{"role":"user","content":"What is the launch code of project Bluebird?"}]}"#;
    let (status, body) = curl(&d, "/v1/chat/completions", None, Some(ask));
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["tailor"]["sources"][0]["source"].as_str().unwrap().ends_with("bluebird.txt"), "{body}");
    let streamed = ask.replacen('{', r#"{"stream":true,"stream_options":{"include_usage":true},"#, 1);
    let (status, body) = curl(&d, "/v1/chat/completions", None, Some(&streamed));
    assert_eq!(status, 200, "{body}");
    let events: Vec<serde_json::Value> =
        body.lines().filter_map(|l| l.strip_prefix("data: ")).filter(|d| *d != "[DONE]").map(json).collect();
    let last_choice = events.iter().rev().find(|e| !e["choices"][0]["finish_reason"].is_null()).expect("finish chunk");
    assert!(last_choice["tailor"]["sources"][0]["text"].as_str().unwrap().contains("7421"), "{body}");
    assert!(events.last().unwrap()["usage"]["completion_tokens"].as_u64().unwrap() > 0, "{body}");
    let bluebird = std::fs::canonicalize(corpus.join("bluebird.txt")).unwrap();
    let (status, text) = curl_method(
        &d,
        "DELETE",
        "/v1/indexes/kb/documents",
        &format!(r#"{{"ids": [{:?}]}}"#, bluebird.display().to_string()),
    );
    assert_eq!(status, 200, "{text}");
    assert_eq!(json(&text)["deleted"].as_u64(), Some(1), "{text}");
    let (_, body) = curl(&d, "/v1/chat/completions", None, Some(ask));
    assert!(
        json(&body)["tailor"]["sources"][0]["source"].as_str().unwrap().ends_with("trains.txt"),
        "deleted documents leave search at once: {body}"
    );
    let info = curl(&d, "/v1/indexes/kb", None, None);
    assert_eq!(json(&info.1)["documents"].as_u64(), Some(2), "{}", info.1);
    let (status, body) = curl(&d, "/v1/indexes/kb/documents", None, Some(r#"{"documents": [{"id": 3}]}"#));
    assert_eq!(status, 400, "{body}");
    let (status, body) = curl(&d, "/v1/tailor/stages/kb-index", None, Some(r#"{"op": "explode", "index": "kb"}"#));
    assert_eq!(status, 400, "{body}");

    // Listing and dropping: the index goes with its files, search and RAG
    // see it gone at once, and the name is free again.
    call("/v1/indexes", r#"{"name": "scratchpad", "kind": "hnsw"}"#.into());
    let (status, body) = curl(&d, "/v1/indexes", None, None);
    assert_eq!(status, 200, "{body}");
    let listed = json(&body);
    let names: Vec<&str> = listed["data"].as_array().unwrap().iter().map(|i| i["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["kb", "scratchpad"], "{body}");
    assert_eq!((listed["data"][1]["kind"].as_str(), listed["data"][1]["dim"].as_u64()), (Some("hnsw"), Some(384)));
    let (status, body) = curl_method(&d, "DELETE", "/v1/indexes/kb", "");
    assert_eq!(status, 200, "{body}");
    assert!(!root.join("kb").exists(), "the index's files are gone");
    let (status, body) = curl(&d, "/v1/indexes/kb/search", None, Some(r#"{"query": "soup", "stage": "kb-search"}"#));
    assert_eq!((status, json(&body)["error"]["code"].as_str()), (404, Some("not_found")), "{body}");
    let (status, body) = curl(&d, "/v1/chat/completions", None, Some(ask));
    assert_eq!(status, 404, "RAG on a dropped index: {body}");
    let (status, body) = curl_method(&d, "DELETE", "/v1/indexes/kb", "");
    assert_eq!(status, 404, "{body}");
    call("/v1/indexes", r#"{"name": "kb"}"#.into());
    assert_eq!(json(&curl(&d, "/v1/indexes/kb", None, None).1)["documents"].as_u64(), Some(0));
}
