//! The holes a hostile local user or a web page found in tailord, each as a
//! request against a real daemon (DESIGN §10): files read through the
//! index routes, hangs on devices and FIFOs, TCP without a token, foreign
//! Host headers, non-JSON bodies, a body read before the token was checked,
//! unbounded embedding calls, a full queue, abandoned requests that kept
//! running, SIGTERM that waited forever, a socket path that was a file.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// Tests that time something (gaps, exits, timeouts) hold this, so that
/// they do not share the two cores with each other.
fn timing() -> std::sync::MutexGuard<'static, ()> {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn mkfifo(path: &Path) {
    let status = Command::new("mkfifo").arg(path).status().expect("mkfifo");
    assert!(status.success());
}

/// An index and a search stage over `root`, reading files only under `docs`.
fn index_stages(root: &Path, docs: &Path) -> String {
    let encoder = cache().join("all-MiniLM-L6-v2");
    format!(
        "[[stages]]\nname = \"kb-index\"\nplugin = \"libtailor_retrieval_faiss.so\"\nstage = \"index\"\n\
         config = {{ root = {root:?}, encoder = {encoder:?}, document_roots = [{docs:?}] }}\n\n\
         [[stages]]\nname = \"kb-search\"\nplugin = \"libtailor_retrieval_faiss.so\"\nstage = \"search\"\n\
         config = {{ root = {root:?} }}\n",
    )
}

fn add_paths(d: &Daemon, paths: &[PathBuf]) -> (u16, String) {
    let paths: Vec<String> = paths.iter().map(|p| format!("{:?}", p.display().to_string())).collect();
    let body = format!(r#"{{"paths": [{}]}}"#, paths.join(", "));
    curl_args(d, "/v1/indexes/kb/documents", &["--max-time", "60", "-H", "Content-Type: application/json"], Some(&body))
}

#[test]
fn index_routes_read_only_regular_files_under_the_roots_and_never_hang() {
    let dir = scratch("sec-files");
    let (root, docs) = (dir.join("indexes"), dir.join("docs"));
    std::fs::create_dir_all(docs.join("sub")).unwrap();
    std::fs::write(docs.join("bluebird.txt"), "Project Bluebird: the launch code is 7421.").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", docs.join("passwd.txt")).unwrap();
    std::os::unix::fs::symlink("/dev/zero", docs.join("zero.txt")).unwrap();
    std::os::unix::fs::symlink(&docs, docs.join("sub/loop")).unwrap();
    mkfifo(&docs.join("pipe.txt"));
    let d = start_with("sec-files-daemon", OPEN_TCP, &index_stages(&root, &docs));
    assert_eq!(curl(&d, "/v1/indexes", None, Some(r#"{"name": "kb"}"#)).0, 200);

    for (path, why) in [
        (PathBuf::from("/etc/passwd"), "document roots"),
        (PathBuf::from("/dev/zero"), "document roots"),
        (docs.join("../indexes"), "document roots"),
        (docs.join("passwd.txt"), "document roots"),
        (docs.join("zero.txt"), "document roots"),
        (docs.join("pipe.txt"), "not a regular file"),
    ] {
        let started = Instant::now();
        let (status, body) = add_paths(&d, std::slice::from_ref(&path));
        assert_eq!(status, 400, "{}: {body}", path.display());
        assert!(body.contains(why), "{}: {body}", path.display());
        assert!(started.elapsed() < Duration::from_secs(10), "{} took {:?}", path.display(), started.elapsed());
    }
    // The raw stage route goes through the same stage and the same rules.
    let raw = r#"{"op": "add", "index": "kb", "paths": ["/etc/passwd"]}"#;
    let (status, body) = curl(&d, "/v1/tailor/stages/kb-index", None, Some(raw));
    assert_eq!(status, 400, "{body}");

    // The whole folder: the one real document goes in; the link out, the
    // device, the FIFO and the loop are skipped with their reasons.
    let (status, body) = add_paths(&d, std::slice::from_ref(&docs));
    assert_eq!(status, 200, "{body}");
    let report = json(&body);
    assert_eq!(report["documents"], 1, "{body}");
    let skipped = report["report"]["skipped"].to_string();
    for name in ["passwd.txt", "zero.txt", "pipe.txt", "loop"] {
        assert!(skipped.contains(name), "{name} not skipped: {skipped}");
    }
    let (status, body) = curl(&d, "/v1/indexes/kb/search", None, Some(r#"{"query": "root:x:0:0", "k": 5}"#));
    assert_eq!(status, 200, "{body}");
    assert!(!body.contains("root:x:0"), "/etc/passwd was indexed: {body}");
    assert!(body.contains("7421"), "{body}");
}

#[test]
fn tcp_needs_a_token_a_local_host_name_and_json_and_the_token_comes_first() {
    let dir = scratch("sec-tcp");
    let path = dir.join("open.toml");
    std::fs::write(&path, config("http = \"127.0.0.1:0\"", &format!("{:?}", plugin_dir().display().to_string())))
        .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tailord")).arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("allow_unauthenticated_tcp"), "{err}");

    let server = "http = \"127.0.0.1:0\"\ntoken = \"s3cret\"\nallowed_hosts = [\"tailor.lan\"]\n\
                  cors_origins = [\"https://app.example\"]";
    let d = start("sec-tcp-daemon", server);
    let completion = r#"{"model":"smollm2","prompt":"The capital of France is","max_tokens":2}"#;
    let auth = "Authorization: Bearer s3cret";
    let post = |headers: &[&str]| {
        let mut args = vec!["-H", auth];
        for h in headers {
            args.extend(["-H", h]);
        }
        curl_args(&d, "/v1/completions", &args, Some(completion))
    };
    assert_eq!(post(&["Content-Type: application/json"]).0, 200);
    let (status, body) = post(&["Content-Type: text/plain"]);
    assert_eq!(status, 415, "a simple cross-site POST is refused: {body}");
    let (status, body) = post(&["Content-Type: application/x-www-form-urlencoded"]);
    assert_eq!(status, 415, "{body}");
    let (status, body) = post(&["Content-Type: application/json", "Host: attacker.example:8080"]);
    assert_eq!(status, 403, "a rebinding page's Host is refused: {body}");
    assert_eq!(post(&["Content-Type: application/json", "Host: tailor.lan"]).0, 200, "a configured name passes");
    assert_eq!(post(&["Content-Type: application/json", "Host: localhost:1"]).0, 200);

    // A wrong token is a 401 before the body is looked at, even when the
    // body is over the limit (it used to be a 413: the body came first).
    let huge = format!(r#"{{"model":"smollm2","prompt":"{}"}}"#, "x".repeat(300_000));
    let wrong = ["-H", "Authorization: Bearer nope", "-H", "Content-Type: application/json"];
    assert_eq!(curl_args(&d, "/v1/completions", &wrong, Some(&huge)).0, 401);
    assert_eq!(
        curl_args(&d, "/v1/completions", &["-H", auth, "-H", "Content-Type: application/json"], Some(&huge)).0,
        413
    );
    // CORS: only the configured origin gets a preflight and may read answers.
    let headers_of = |args: &[&str]| {
        let out = Command::new("curl").args(["-sS", "-o", "/dev/null", "-D", "-"]).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).to_lowercase()
    };
    let models = format!("{}/v1/models", d.base);
    let preflight = ["-X", "OPTIONS", "-H", "Access-Control-Request-Method: POST", models.as_str()];
    let listed = headers_of(&[&["-H", "Origin: https://app.example"], &preflight[..]].concat());
    assert!(listed.starts_with("http/1.1 204"), "{listed}");
    assert!(listed.contains("access-control-allow-origin: https://app.example"), "{listed}");
    let other = headers_of(&[&["-H", "Origin: https://evil.example"], &preflight[..]].concat());
    assert!(!other.contains("access-control-allow-origin"), "{other}");
    let read = headers_of(&["-H", "Origin: https://app.example", "-H", auth, models.as_str()]);
    assert!(read.starts_with("http/1.1 200") && read.contains("access-control-allow-origin"), "{read}");
    let rejected = metric(&d, Some("s3cret"), "tailor_requests_rejected_total{reason=\"guard\"}");
    assert!(rejected.unwrap_or(0.0) >= 4.0, "refusals are counted: {rejected:?}");
}

#[test]
fn embedding_calls_are_bounded_and_the_daemon_keeps_serving() {
    let d = start("sec-embed", &format!("{OPEN_TCP}\nmax_body_bytes = 4000000"));
    // 1,000 inputs of ~200 tokens: 200k tokens in one call.
    let text = format!("\"{}\"", "word ".repeat(200));
    let inputs = vec![text; 1000].join(",");
    let started = Instant::now();
    let (status, body) = curl(&d, "/v1/embeddings", None, Some(&format!(r#"{{"model":"minilm","input":[{inputs}]}}"#)));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("tokens in one request"), "{body}");
    assert!(started.elapsed() < Duration::from_secs(20), "refused only after {:?}", started.elapsed());
    let many = vec!["\"hi\""; 3000].join(",");
    let (status, body) = curl(&d, "/v1/embeddings", None, Some(&format!(r#"{{"model":"minilm","input":[{many}]}}"#)));
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("inputs in one request"), "{body}");
    let (status, body) = curl(&d, "/v1/embeddings", None, Some(r#"{"model":"minilm","input":["still here"]}"#));
    assert_eq!(status, 200, "{body}");
}

/// The generate stage with room for one call at a time.
const ONE_AT_A_TIME: &str =
    "[[stages]]\nname = \"narrow\"\nplugin = \"libtailor_serve_llm.so\"\nstage = \"generate\"\n\
    max_pending = 1\nconfig = { model = \"MODEL\" }\n";

/// A request that runs for its whole 4000 tokens (greedy counting never
/// reaches an end of text; a sampled story can end within a second or two,
/// and then a caller meant to give up at 2 s gets its answer instead).
fn long_completion(model: &str, stream: bool) -> String {
    format!(r#"{{"model":"{model}","prompt":"1, 2, 3, 4,","max_tokens":4000,"temperature":0,"stream":{stream}}}"#)
}

fn running(d: &Daemon, stage: &str) -> f64 {
    metric(d, None, &format!("tailor_generate_batch_size{{stage=\"{stage}\"}}")).unwrap_or(-1.0)
}

#[test]
fn a_full_stage_answers_429_and_an_abandoned_request_stops() {
    let _serial = timing();
    let model = cache().join("SmolLM2-135M-Instruct.Q4_1.gguf");
    let extra = ONE_AT_A_TIME.replace("MODEL", &model.display().to_string());
    let d = start_with("sec-queue", OPEN_TCP, &extra);
    std::thread::scope(|scope| {
        // A non-streaming caller that gives up after 2 s.
        let abandoned = scope.spawn(|| {
            let args = ["--max-time", "2", "-H", "Content-Type: application/json"];
            curl_args(&d, "/v1/completions", &args, Some(&long_completion("narrow", false)))
        });
        let deadline = Instant::now() + Duration::from_secs(30);
        while running(&d, "narrow") < 1.0 && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(running(&d, "narrow"), 1.0, "the long request never started");
        let out = Command::new("curl")
            .args(["-sS", "-i", "-H", "Content-Type: application/json", "-d"])
            .arg(long_completion("narrow", false))
            .arg(format!("{}/v1/completions", d.base))
            .output()
            .unwrap();
        let reply = String::from_utf8_lossy(&out.stdout).to_lowercase();
        assert!(reply.starts_with("http/1.1 429"), "{reply}");
        assert!(reply.contains("retry-after: 1"), "{reply}");
        assert_eq!(abandoned.join().unwrap().0, 0, "curl gave up");
    });
    // The engine drops it within a decode step or two of the hang-up.
    let left = Instant::now();
    while running(&d, "narrow") > 0.0 && left.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(20));
    }
    println!("the abandoned generation left the batch {:?} after its client", left.elapsed());
    assert_eq!(running(&d, "narrow"), 0.0, "the abandoned non-streaming request kept decoding");
    let pending = metric(&d, None, "tailor_stage_pending{stage=\"narrow\"}");
    assert_eq!(pending, Some(0.0), "its place in the queue was given back");
    let (status, body) =
        curl(&d, "/v1/completions", None, Some(&long_completion("narrow", false).replace("4000", "2")));
    assert_eq!(status, 200, "{body}");
    assert_eq!(metric(&d, None, "tailor_requests_rejected_total{reason=\"queue_full\"}"), Some(1.0));
}

#[test]
fn sigterm_with_streams_in_flight_exits_within_the_grace() {
    let _serial = timing();
    let dir = scratch("sec-term");
    let socket = dir.join("tailord.sock");
    let server = format!("{OPEN_TCP}\nunix_socket = {:?}\nshutdown_grace_secs = 1", socket.display().to_string());
    let path = dir.join("tailord.toml");
    std::fs::write(&path, config(&server, &format!("{:?}", plugin_dir().display().to_string()))).unwrap();
    let mut d = launch(&path, &[]);
    let clients: Vec<std::process::Child> = (0..8)
        .map(|_| {
            Command::new("curl")
                .args(["-sS", "-N", "-H", "Content-Type: application/json", "-d"])
                .arg(long_completion("smollm2", true))
                .arg(format!("{}/v1/completions", d.base))
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    while running(&d, "smollm2") < 8.0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(running(&d, "smollm2"), 8.0, "eight streams in flight");
    let term = Instant::now();
    assert!(Command::new("kill").args(["-TERM", &d.child.id().to_string()]).status().unwrap().success());
    let status = d.child.wait().unwrap();
    let took = term.elapsed();
    println!("SIGTERM with 8 streams: exited {status} after {took:?} (grace 1 s)");
    assert!(status.success(), "{status}");
    assert!(took < Duration::from_secs(3), "took {took:?}");
    assert!(!socket.exists(), "the socket is removed at exit");
    for mut client in clients {
        let _ = client.wait();
    }
}

#[test]
fn a_file_at_the_socket_path_is_never_replaced() {
    let dir = scratch("sec-socket");
    let socket = dir.join("tailord.sock");
    std::fs::write(&socket, "precious").unwrap();
    let path = dir.join("tailord.toml");
    let server = format!("unix_socket = {:?}", socket.display().to_string());
    std::fs::write(&path, config(&server, &format!("{:?}", plugin_dir().display().to_string()))).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_tailord")).arg("--config").arg(&path).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("not a socket"), "{err}");
    assert_eq!(std::fs::read_to_string(&socket).unwrap(), "precious");
}

#[test]
fn idle_connections_are_closed_and_do_not_starve_the_api() {
    let _serial = timing();
    use std::io::Read;
    let d = start("sec-conns", &format!("{OPEN_TCP}\nmax_connections = 16\nfirst_byte_timeout_secs = 1"));
    let address = d.base.strip_prefix("http://").unwrap().to_string();
    // Four times the connection limit, none of which ever sends a byte.
    let idle: Vec<std::net::TcpStream> = (0..64).map(|_| std::net::TcpStream::connect(&address).unwrap()).collect();
    let started = Instant::now();
    let (status, body) = curl_args(&d, "/health", &["--max-time", "30"], None);
    let waited = started.elapsed();
    println!("/health behind 64 idle connections (limit 16, first byte within 1 s): {waited:?}");
    assert_eq!(status, 200, "{body}");
    assert!(waited < Duration::from_secs(15), "{waited:?}");
    let mut first = &idle[0];
    first.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut buf = [0u8; 16];
    assert!(matches!(first.read(&mut buf), Ok(0)), "the server closed the silent connection");
}

#[test]
fn a_request_head_trickled_byte_by_byte_is_cut_off() {
    let _serial = timing();
    use std::io::{Read, Write};
    let d = start("sec-header", &format!("{OPEN_TCP}\nheader_timeout_secs = 2"));
    let address = d.base.strip_prefix("http://").unwrap().to_string();
    let mut slow = std::net::TcpStream::connect(&address).unwrap();
    slow.set_read_timeout(Some(Duration::from_millis(300))).unwrap();
    // One header byte every 300 ms keeps the idle clock (600 s) from ever
    // firing; only the header deadline can close this connection.
    let started = Instant::now();
    let head = b"GET /health HTTP/1.1\r\nHost: localhost\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa";
    let mut closed_after = None;
    for byte in head.iter() {
        if slow.write_all(&[*byte]).is_err() {
            closed_after = Some(started.elapsed());
            break;
        }
        // Waits 300 ms for the server: end of file (or an answer) means it
        // gave up on this head.
        let mut buf = [0u8; 256];
        if slow.read(&mut buf).is_ok() {
            closed_after = Some(started.elapsed());
            break;
        }
    }
    let closed_after = closed_after.expect("the trickling connection was never closed");
    println!("a head trickled byte by byte was cut off after {closed_after:?} (header timeout 2 s)");
    assert!(closed_after >= Duration::from_secs(2) && closed_after < Duration::from_secs(6), "{closed_after:?}");
    // A well-behaved request on a fresh connection is answered.
    let (status, body) = curl(&d, "/health", None, None);
    assert_eq!(status, 200, "{body}");
}

#[test]
fn a_long_prompt_does_not_freeze_a_running_stream() {
    let _serial = timing();
    use std::io::BufRead;
    let d = start("sec-chunked", OPEN_TCP);
    let mut stream = Command::new("curl")
        .args(["-sS", "-N", "-H", "Content-Type: application/json", "-d"])
        .arg(r#"{"model":"smollm2","prompt":"Once upon a time","max_tokens":2000,"temperature":0.8,"seed":3,"stream":true}"#)
        .arg(format!("{}/v1/completions", d.base))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = std::io::BufReader::new(stream.stdout.take().unwrap()).lines();
    let mut next_event = || lines.by_ref().map_while(Result::ok).find(|l| l.starts_with("data: "));
    assert!(next_event().is_some(), "the stream started");
    // A prompt of about 4,000 tokens joins while the stream runs.
    let long = format!(r#"{{"model":"smollm2","prompt":"{}","max_tokens":1}}"#, "word ".repeat(4000));
    let (status, body) = std::thread::scope(|scope| {
        let admitted = scope.spawn(|| curl(&d, "/v1/completions", None, Some(&long)));
        let (mut last, mut longest, mut events) = (Instant::now(), Duration::ZERO, 0);
        while !admitted.is_finished() {
            let Some(event) = next_event() else { break };
            longest = longest.max(last.elapsed());
            last = Instant::now();
            events += 1;
            if event.contains("[DONE]") {
                break;
            }
        }
        println!("while a 4,000-token prompt was prefilled: {events} stream events, longest gap {longest:?}");
        assert!(events > 5, "the stream got {events} tokens during the prefill");
        assert!(longest < Duration::from_secs(1), "a stream stalled {longest:?} behind a long prompt");
        admitted.join().unwrap()
    });
    assert_eq!(status, 200, "{body}");
    assert!(json(&body)["usage"]["prompt_tokens"].as_u64().unwrap() > 3900, "{body}");
    let _ = stream.kill();
    let _ = stream.wait();
}
