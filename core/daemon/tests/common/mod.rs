//! What the daemon tests share: a real tailord started on a config made
//! here (the real first-party plugins, SmolLM2 and MiniLM from the model
//! cache), and curl to talk to it.
#![allow(dead_code)] // each test binary uses its own part

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

/// The models `tailor models fetch` put in the cache.
pub fn cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("TAILOR_MODELS") {
        return PathBuf::from(dir);
    }
    PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tailor/models")
}

/// Where `cargo build --release --workspace` put tailor, tailord and the plugins.
pub fn plugin_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/release")
}

/// A fresh folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Loopback TCP without a token, which has to be asked for in so many words.
pub const OPEN_TCP: &str = "http = \"127.0.0.1:0\"\nallow_unauthenticated_tcp = true";

/// A config with the two standard stages (`smollm2`, `minilm`).
pub fn config(server: &str, plugin_dirs: &str) -> String {
    config_with(server, plugin_dirs, "")
}

/// [`config`] with `extra` appended (more stages); `server` may set its own `max_body_bytes`.
pub fn config_with(server: &str, plugin_dirs: &str, extra: &str) -> String {
    config_full(server, plugin_dirs, "", extra)
}

/// [`config_with`] with `generate` added to the `smollm2` stage's config
/// table (`adapter_dirs = […], adapters = {…}`).
pub fn config_full(server: &str, plugin_dirs: &str, generate: &str, extra: &str) -> String {
    let models = cache();
    let generate = if generate.is_empty() { String::new() } else { format!(", {generate}") };
    let body_limit = if server.contains("max_body_bytes") { "" } else { "max_body_bytes = 200000" };
    format!(
        r#"[server]
{server}
plugin_dirs = [{plugin_dirs}]
{body_limit}

[[stages]]
name = "smollm2"
plugin = "libtailor_serve_llm.so"
stage = "generate"
config = {{ model = "{}"{generate} }}

[[stages]]
name = "minilm"
plugin = "libtailor_retrieval_faiss.so"
stage = "embed"
config = {{ model = "{}" }}
{extra}
"#,
        models.join("SmolLM2-135M-Instruct.Q4_1.gguf").display(),
        models.join("all-MiniLM-L6-v2").display()
    )
}

/// A running tailord, killed when dropped.
pub struct Daemon {
    pub child: Child,
    pub base: String,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// tailord with the standard stages and `server` settings.
pub fn start(name: &str, server: &str) -> Daemon {
    start_with(name, server, "")
}

/// tailord with the standard stages, `extra` ones and `server` settings.
pub fn start_with(name: &str, server: &str, extra: &str) -> Daemon {
    start_full(name, server, "", extra)
}

/// tailord whose `smollm2` stage has `generate` in its config, with the
/// standard stages, `extra` ones and `server` settings.
pub fn start_full(name: &str, server: &str, generate: &str, extra: &str) -> Daemon {
    assert!(
        plugin_dir().join("libtailor_serve_llm.so").exists(),
        "build the plugins first: cargo build --release --workspace"
    );
    let dir = scratch(name);
    let path = dir.join("tailord.toml");
    let plugins = format!("{:?}", plugin_dir().display().to_string());
    std::fs::write(&path, config_full(server, &plugins, generate, extra)).unwrap();
    launch(&path, &[])
}

/// Starts tailord on a config file (with extra environment) and waits for
/// its "listening" line.
pub fn launch(config: &Path, env: &[(&str, &Path)]) -> Daemon {
    launch_logging(config, env, None)
}

/// [`launch`], its log (stderr) written to `log` when given.
pub fn launch_logging(config: &Path, env: &[(&str, &Path)], log: Option<&Path>) -> Daemon {
    let mut command = Command::new(env!("CARGO_BIN_EXE_tailord"));
    command.arg("--config").arg(config).stdout(Stdio::piped());
    if let Some(log) = log {
        command.stderr(std::fs::File::create(log).unwrap());
    }
    for (key, value) in env {
        command.env(key, value);
    }
    let mut child = command.spawn().unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    let base = line
        .trim()
        .strip_prefix("tailord listening on ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_string();
    Daemon { child, base }
}

/// (HTTP status, body) of a curl request, with a JSON body when given.
pub fn curl(daemon: &Daemon, path: &str, token: Option<&str>, body: Option<&str>) -> (u16, String) {
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![];
    if let Some(auth) = &auth {
        args.extend(["-H", auth.as_str()]);
    }
    if body.is_some() {
        args.extend(["-H", "Content-Type: application/json"]);
    }
    curl_args(daemon, path, &args, body)
}

/// (HTTP status, body) of a curl request with another method and a JSON body.
pub fn curl_method(daemon: &Daemon, method: &str, path: &str, body: &str) -> (u16, String) {
    curl_args(daemon, path, &["-X", method, "-H", "Content-Type: application/json"], Some(body))
}

/// (HTTP status, body) of a curl request with these extra arguments
/// (headers, method, time limit); `body` is sent from stdin. Status 0: curl
/// got no answer (say, `--max-time` ran out).
pub fn curl_args(daemon: &Daemon, path: &str, args: &[&str], body: Option<&str>) -> (u16, String) {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-N", "-o", "-", "-w", "\n%{http_code}"]).args(args).arg(format!("{}{path}", daemon.base));
    if body.is_some() {
        cmd.args(["--data-binary", "@-"]);
    }
    let mut child =
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("running curl");
    let mut stdin = child.stdin.take().unwrap();
    // The server may answer (401, 413) before it has read it all.
    let _ = stdin.write_all(body.unwrap_or("").as_bytes());
    drop(stdin);
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

/// Parses JSON, or fails the test showing the text.
pub fn json(text: &str) -> serde_json::Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"))
}

/// The value of a Prometheus series on `/metrics` (its full name with labels).
pub fn metric(daemon: &Daemon, token: Option<&str>, series: &str) -> Option<f64> {
    let (_, metrics) = curl(daemon, "/metrics", token, None);
    metrics.lines().find(|l| l.starts_with(series)).and_then(|l| l.rsplit(' ').next()).and_then(|v| v.parse().ok())
}

/// An index `kb` of three small documents (the Bluebird launch code, a
/// garden tip, a train time) built in `dir` with the `tailor` CLI; returns
/// the config of a search stage `kb-search` over it.
pub fn bluebird_index(dir: &Path) -> String {
    let (data, corpus) = (dir.join("data"), dir.join("corpus"));
    std::fs::create_dir_all(&corpus).unwrap();
    std::fs::write(corpus.join("bluebird.txt"), "Project Bluebird: the launch code of project Bluebird is 7421.")
        .unwrap();
    std::fs::write(corpus.join("garden.txt"), "Tomatoes grow best in full sun with regular watering.").unwrap();
    std::fs::write(corpus.join("trains.txt"), "The night train to Vienna leaves at 22:10 from platform 4.").unwrap();
    let tailor = plugin_dir().join("tailor");
    for args in [vec!["index", "create", "kb"], vec!["index", "add", "kb", corpus.to_str().unwrap()]] {
        let out = Command::new(&tailor).args(&args).env("TAILOR_DATA", &data).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
    format!(
        "[[stages]]\nname = \"kb-search\"\nplugin = \"libtailor_retrieval_faiss.so\"\nstage = \"search\"\nconfig = {{ root = {:?} }}\n",
        data.join("indexes").display().to_string()
    )
}

/// The Python interpreter of a venv with the `openai` package
/// (`scripts/test.sh` makes target/openai-venv); missing is a failure.
#[allow(dead_code)]
pub fn openai_python() -> PathBuf {
    let python = match std::env::var_os("TAILOR_OPENAI_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/openai-venv/bin/python"),
    };
    assert!(
        python.exists(),
        "{} is missing: scripts/test.sh creates it (scripts/venv.sh openai openai)",
        python.display()
    );
    python
}
