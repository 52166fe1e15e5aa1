//! The three consumers of include/tailor.h, built the way users build them
//! (through `tailor.pc`) and run against a live tailord over its Unix
//! socket with SmolLM2 and MiniLM: the C programs under valgrind (no
//! errors, no leaks), the C++17 program over tailor.hpp, and `go test` on
//! the cgo package in go/.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").canonicalize().expect("repository root")
}

fn models() -> PathBuf {
    match std::env::var_os("TAILOR_MODELS") {
        Some(dir) => PathBuf::from(dir),
        None => PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/tailor/models"),
    }
}

/// The PEFT-made test adapters (tests/reference/adapters).
fn adapters_dir() -> PathBuf {
    root().join("tests/reference/adapters")
}

/// A fresh folder of this test's own: tests run in parallel, so each
/// removes and recreates only its own.
fn scratch(test: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("consumers-{}-{test}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// tailord with a generate, an embed, an index and a search stage, on a Unix socket.
fn start_daemon(dir: &Path) -> (Daemon, PathBuf) {
    let release = root().join("target/release");
    assert!(release.join("tailord").exists(), "build the workspace first: cargo build --release --workspace");
    let (socket, indexes, m) = (dir.join("tailord.sock"), dir.join("indexes"), models());
    let (jobs, data) = (dir.join("jobs"), dir.join("data"));
    std::fs::create_dir_all(&data).expect("data dir");
    let style = std::fs::read_to_string(root().join("examples/style/train.jsonl")).expect("style set");
    let four: String = style.lines().take(4).map(|l| format!("{l}\n")).collect();
    std::fs::write(data.join("train.jsonl"), four).expect("training file");
    let minilm = m.join("all-MiniLM-L6-v2");
    let config = format!(
        r#"[server]
unix_socket = {socket:?}
plugin_dirs = [{release:?}]

[[stages]]
name = "smollm2"
plugin = "libtailor_serve_llm.so"
stage = "generate"
config = {{ model = {gguf:?}, adapter_dirs = [{adapters:?}], jobs_dir = {jobs:?}, data_dirs = [{data:?}] }}

[[stages]]
name = "minilm"
plugin = "libtailor_retrieval_faiss.so"
stage = "embed"
config = {{ model = {minilm:?} }}

[[stages]]
name = "docs"
plugin = "libtailor_retrieval_faiss.so"
stage = "index"
config = {{ root = {indexes:?}, encoder = {minilm:?} }}

[[stages]]
name = "docs-search"
plugin = "libtailor_retrieval_faiss.so"
stage = "search"
config = {{ root = {indexes:?} }}
"#,
        gguf = m.join("SmolLM2-135M-Instruct.Q4_1.gguf"),
        adapters = adapters_dir(),
    );
    (spawn_daemon(dir, &config), socket)
}

/// Starts tailord on `config` and waits until it listens.
fn spawn_daemon(dir: &Path, config: &str) -> Daemon {
    let path = dir.join("tailord.toml");
    std::fs::write(&path, config).expect("config");
    let mut child = Command::new(root().join("target/release/tailord"))
        .arg("--config")
        .arg(&path)
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting tailord");
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout).read_line(&mut line).expect("tailord's first line");
    assert!(line.starts_with("tailord listening on"), "tailord said {line:?}");
    Daemon(child)
}

/// packaging/tailor.pc.in filled in for this checkout; returns its folder.
fn pkg_config_dir(dir: &Path) -> PathBuf {
    let template = std::fs::read_to_string(root().join("packaging/tailor.pc.in")).expect("tailor.pc.in");
    let pc = template
        .replace("@PREFIX@", &root().display().to_string())
        .replace("@LIBDIR@", "${prefix}/target/release")
        .replace("@INCLUDEDIR@", "${prefix}/include")
        .replace("@VERSION@", env!("CARGO_PKG_VERSION"));
    let out = dir.join("pkgconfig");
    std::fs::create_dir_all(&out).expect("pkgconfig dir");
    std::fs::write(out.join("tailor.pc"), pc).expect("tailor.pc");
    out
}

fn pkg_config(pc_dir: &Path) -> Vec<String> {
    let out = Command::new("pkg-config")
        .args(["--cflags", "--libs", "tailor"])
        .env("PKG_CONFIG_PATH", pc_dir)
        .output()
        .expect("pkg-config (Debian: pkg-config)");
    assert!(out.status.success(), "pkg-config: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).split_whitespace().map(str::to_string).collect()
}

fn run(command: &mut Command) -> Output {
    let out = command.output().unwrap_or_else(|e| panic!("running {command:?}: {e}"));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    println!("$ {command:?}\n{stdout}{stderr}");
    assert!(out.status.success(), "{command:?} failed ({})\n{stdout}\n{stderr}", out.status);
    out
}

fn compile(compiler: &str, standard: &str, source: &str, output: &Path, flags: &[String]) {
    run(Command::new(compiler)
        .args([standard, "-Wall", "-Wextra", "-Werror", "-g", "-o"])
        .arg(output)
        .arg(root().join(source))
        .args(flags));
}

/// Runs a program under valgrind: any memory error or leak fails it.
fn under_valgrind(program: &Path, args: &[&str]) -> String {
    let out = run(Command::new("valgrind")
        .args(["-q", "--leak-check=full", "--errors-for-leak-kinds=definite,indirect", "--error-exitcode=99"])
        .arg(program)
        .args(args)
        .env("LD_LIBRARY_PATH", root().join("target/release")));
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn opening_a_client_with_a_wrong_token_is_refused() {
    use tailor::session::{tailor_client_close, tailor_client_default_params, tailor_client_open};
    use tailor::tailor_status;
    let dir = scratch("token");
    let socket = dir.join("tailord.sock");
    let release = root().join("target/release");
    let minilm = models().join("all-MiniLM-L6-v2");
    let config = format!(
        "[server]\nunix_socket = {socket:?}\ntoken = \"right\"\nplugin_dirs = [{release:?}]\n\n[[stages]]\n\
         name = \"minilm\"\nplugin = \"libtailor_retrieval_faiss.so\"\nstage = \"embed\"\nconfig = {{ model = {minilm:?} }}\n"
    );
    let _daemon = spawn_daemon(&dir, &config);
    let socket = std::ffi::CString::new(socket.display().to_string()).expect("socket path");
    for (token, want) in [("right", tailor_status::TAILOR_OK), ("wrong", tailor_status::TAILOR_ERR_UNAUTHORIZED)] {
        let token = std::ffi::CString::new(token).expect("token");
        let mut params = tailor_client_default_params();
        params.socket_path = socket.as_ptr();
        params.token = token.as_ptr();
        let mut client = std::ptr::null_mut();
        // SAFETY: params and its strings live across the call; `client` is
        // an out-pointer, closed below when the call gave one.
        let status = unsafe { tailor_client_open(&params, &mut client) };
        assert_eq!(status as i32, want as i32, "token {token:?}");
        // SAFETY: made by tailor_client_open (or NULL), closed once.
        unsafe { tailor_client_close(client) };
    }
}

#[test]
fn c_cpp_and_go_apps_chat_embed_and_retrieve_through_libtailor() {
    let dir = scratch("apps");
    let (_daemon, socket) = start_daemon(&dir);
    let socket_arg = socket.display().to_string();
    let args = [socket_arg.as_str(), "smollm2", "minilm"];
    let pc_dir = pkg_config_dir(&dir);
    let flags = pkg_config(&pc_dir);

    let c_demo = dir.join("rag_chat");
    compile("cc", "-std=c11", "examples/c/rag_chat.c", &c_demo, &flags);
    let out = under_valgrind(&c_demo, &args);
    for expected in
        ["chat: ", "embed: 2 vectors of 384 floats", "[1] bluebird", "TAILOR_ERR_CONNECT", "TAILOR_ERR_NOT_FOUND"]
    {
        assert!(out.contains(expected), "C demo output lacks {expected:?}:\n{out}");
    }
    assert!(out.ends_with("OK\n"), "{out}");

    let every = dir.join("every_function");
    compile("cc", "-std=c11", "tests/c/every_function.c", &every, &flags);
    let adapter = adapters_dir().join("r8-qv").display().to_string();
    let training = dir.join("data/train.jsonl").display().to_string();
    let out = under_valgrind(&every, &[args[0], args[1], args[2], &adapter, &training]);
    assert!(out.contains("OK (0 failures)"), "{out}");

    let cpp_demo = dir.join("rag_chat_cpp");
    compile("c++", "-std=c++17", "examples/cpp/rag_chat.cpp", &cpp_demo, &flags);
    let out = under_valgrind(&cpp_demo, &[args[0], args[1], args[2], &adapter]);
    assert!(out.contains("[1] bluebird") && out.contains("rag + adapter: ") && out.ends_with("OK\n"), "{out}");
    assert!(out.contains("deadline: TAILOR_ERR_TIMEOUT") && out.contains("tokens: 5 of 8192"), "{out}");

    run(Command::new("go")
        .args(["test", "-count=1", "-v", "./..."])
        .current_dir(root().join("go"))
        .env("PKG_CONFIG_PATH", &pc_dir)
        .env("LD_LIBRARY_PATH", root().join("target/release"))
        .env("TAILOR_SOCKET", &socket)
        .env("TAILOR_TEST_MODEL", "smollm2")
        .env("TAILOR_TEST_EMBED", "minilm")
        .env("TAILOR_TEST_ADAPTER", adapters_dir().join("r8-qv"))
        .env("TAILOR_TEST_TRAINING", dir.join("data/train.jsonl"))
        .env("GOCACHE", dir.join("gocache"))
        .env("GOPATH", dir.join("gopath"))
        .env("GOFLAGS", "-mod=mod")
        .env("GOTOOLCHAIN", "local"));
}
