//! Reliability of `tailor index`, through the real binary: SIGKILL in the
//! middle of `index add` loses no committed batch and a rerun adds no
//! duplicates; a corrupt vector file is a clear error that `index rebuild`
//! repairs; binary, non-UTF-8 and huge files are skipped with a warning.
//! Also `tailor ask` over such an index: an answer, then its numbered sources.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn tailor(data: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tailor"));
    cmd.env("TAILOR_DATA", data).env("RUST_BACKTRACE", "0");
    cmd
}

fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(out.status.success(), "{:?} failed: {}", cmd, String::from_utf8_lossy(&out.stderr));
    out
}

fn info(data: &Path, name: &str) -> (u64, u64) {
    let out = run_ok(tailor(data).args(["index", "info", name]));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["documents"].as_u64().unwrap(), v["chunks"].as_u64().unwrap())
}

fn write_corpus(dir: &Path, files: usize) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 0..files {
        let text = format!(
            "Document {i}. The warehouse in city {i} stores {} crates of apples and ships them on day {}.",
            i * 7,
            i % 31
        );
        std::fs::write(dir.join(format!("doc-{i:04}.txt")), text).unwrap();
    }
}

#[test]
fn sigkill_mid_ingest_loses_nothing_and_rerun_adds_no_duplicates() {
    let root = scratch("kill");
    let (data, corpus) = (root.join("data"), root.join("corpus"));
    write_corpus(&corpus, 300);
    run_ok(tailor(&data).args(["index", "create", "kb"]));
    let log = data.join("indexes/kb/store.log");
    let mut child = tailor(&data).args(["index", "add", "kb"]).arg(&corpus).spawn().unwrap();
    let started = Instant::now();
    // Wait until at least one batch is committed, then kill -9.
    while std::fs::metadata(&log).map(|m| m.len()).unwrap_or(0) == 0 {
        assert!(started.elapsed() < Duration::from_secs(120), "no batch committed in time");
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "the ingest was killed before it finished");
    let (docs_after_kill, _) = info(&data, "kb");
    assert!(
        docs_after_kill > 0 && docs_after_kill < 300,
        "a partial ingest keeps its committed batches ({docs_after_kill})"
    );
    let out = run_ok(tailor(&data).args(["index", "add", "kb"]).arg(&corpus));
    let report = String::from_utf8_lossy(&out.stdout);
    assert!(report.contains(&format!("{docs_after_kill} unchanged")), "the rerun skips committed documents: {report}");
    assert_eq!(info(&data, "kb"), (300, 300), "every document exactly once");
    let out = run_ok(tailor(&data).args(["search", "kb", "apples in city 123", "-k", "3", "--json"]));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(hits[0]["doc_id"].as_str().unwrap().ends_with("doc-0123.txt"), "{hits}");
}

#[test]
fn corrupt_vector_file_is_reported_and_rebuild_repairs_it() {
    let root = scratch("rebuild");
    let (data, corpus) = (root.join("data"), root.join("corpus"));
    write_corpus(&corpus, 20);
    run_ok(tailor(&data).args(["index", "create", "kb"]));
    run_ok(tailor(&data).args(["index", "add", "kb"]).arg(&corpus));
    std::fs::write(data.join("indexes/kb/vectors.faiss"), b"garbage, not faiss").unwrap();
    let out = tailor(&data).args(["search", "kb", "apples"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("corrupt") && err.contains("tailor index rebuild"), "{err}");
    run_ok(tailor(&data).args(["index", "rebuild", "kb"]));
    let out = run_ok(tailor(&data).args(["search", "kb", "apples in city 7", "-k", "1", "--json"]));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(hits[0]["doc_id"].as_str().unwrap().ends_with("doc-0007.txt"), "{hits}");
    // Deleting a document removes it from search results and counts.
    let out = run_ok(tailor(&data).args(["index", "delete", "kb"]).arg(corpus.join("doc-0007.txt")));
    assert!(String::from_utf8_lossy(&out.stdout).contains("deleted 1 documents"));
    assert_eq!(info(&data, "kb"), (19, 19));
    let out = run_ok(tailor(&data).args(["search", "kb", "apples in city 7", "-k", "1", "--json"]));
    let hits: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(!hits[0]["doc_id"].as_str().unwrap().ends_with("doc-0007.txt"), "{hits}");
}

#[test]
fn binary_non_utf8_and_huge_files_are_skipped_with_a_warning() {
    let root = scratch("skip");
    let (data, corpus) = (root.join("data"), root.join("corpus"));
    write_corpus(&corpus, 3);
    std::fs::write(corpus.join("image.bin"), [0x89, b'P', b'N', b'G', 0, 0, 1, 2]).unwrap();
    std::fs::write(corpus.join("latin1.txt"), [b'c', b'a', b'f', 0xE9]).unwrap();
    std::fs::File::create(corpus.join("huge.txt")).unwrap().set_len(65 << 20).unwrap();
    run_ok(tailor(&data).args(["index", "create", "kb"]));
    let out = run_ok(tailor(&data).args(["index", "add", "kb"]).arg(&corpus));
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    for (file, why) in [("image.bin", "binary"), ("latin1.txt", "UTF-8"), ("huge.txt", "limit")] {
        assert!(stderr.contains(file) && stderr.contains(why), "no warning for {file}: {stderr}");
    }
    assert!(stdout.contains("3 skipped"), "{stdout}");
    assert_eq!(info(&data, "kb").0, 3);
    let unknown = tailor(&data).args(["search", "nope", "x"]).output().unwrap();
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("no index named \"nope\""));
}

#[test]
fn ask_answers_with_numbered_sources_and_seeded_sampling_repeats() {
    let root = scratch("ask");
    let (data, corpus) = (root.join("data"), root.join("corpus"));
    write_corpus(&corpus, 5);
    let bluebird = corpus.join("bluebird.txt");
    std::fs::write(&bluebird, "The launch code of project Bluebird is 7-4-1-9. Only the captain may use it.").unwrap();
    run_ok(tailor(&data).args(["index", "create", "qa"]));
    run_ok(tailor(&data).args(["index", "add", "qa"]).arg(&corpus));
    let ask = |extra: &[&str]| {
        let mut cmd = tailor(&data);
        cmd.args(["ask", "qa", "What is the launch code of project Bluebird?", "-k", "2", "--max-tokens", "12"]);
        String::from_utf8(run_ok(cmd.args(extra)).stdout).unwrap()
    };
    let greedy = ask(&[]);
    let (answer, sources) = greedy.split_once("Sources:").expect("a Sources: section");
    assert!(!answer.trim().is_empty(), "an answer before the sources: {greedy}");
    let first = sources.lines().find(|l| l.starts_with("[1]")).expect("source [1]");
    assert!(first.contains("bluebird.txt"), "the Bluebird document is the first source: {sources}");
    assert!(sources.lines().any(|l| l.starts_with("[2]")), "-k 2 gives two sources: {sources}");
    let sampled = ["--temperature", "0.8", "--top-p", "0.9", "--seed", "7"];
    assert_eq!(ask(&sampled), ask(&sampled), "a seeded sampled answer repeats");
}
