//! The hand-written include/tailor.h declares exactly what libtailor
//! exports: cbindgen renders the crate's C view, and both headers, reduced
//! to their declarations, must be the same set. (A C program calling every
//! function, compiled with -Werror against the header and linked against
//! the library, is in `consumers.rs`.)

use std::collections::BTreeSet;
use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn generated_header() -> String {
    let mut config = cbindgen::Config { language: cbindgen::Language::C, ..Default::default() };
    config.style = cbindgen::Style::Both;
    config.usize_is_size_t = true;
    let bindings = cbindgen::Builder::new()
        .with_crate(env!("CARGO_MANIFEST_DIR"))
        .with_config(config)
        .generate()
        .expect("cbindgen reads the crate");
    let mut out = Vec::new();
    bindings.write(&mut out);
    String::from_utf8(out).expect("UTF-8")
}

/// Removes C comments.
fn strip_comments(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("/*") {
        out.push_str(&rest[..start]);
        rest = rest[start..].find("*/").map_or("", |end| &rest[start + end + 2..]);
    }
    out.push_str(rest);
    out.lines().map(|l| l.split("//").next().unwrap_or("")).collect::<Vec<_>>().join("\n")
}

/// `#define TAILOR_…` lines.
fn defines(text: &str) -> BTreeSet<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| l.starts_with("#define TAILOR_") && l.split_whitespace().count() > 2)
        .map(|l| l.split_whitespace().collect::<Vec<_>>().join(" "))
        .collect()
}

/// Top-level declarations, whitespace-normalized.
fn declarations(text: &str) -> BTreeSet<String> {
    let text = strip_comments(text);
    // The C++ guard's `extern "C" {` and its `}` sit inside #ifdef __cplusplus.
    let mut kept = Vec::new();
    let mut in_cplusplus = false;
    for line in text.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("#ifdef __cplusplus") || trimmed.starts_with("#if defined(__cplusplus)") {
            in_cplusplus = true;
        } else if in_cplusplus && trimmed.starts_with("#endif") {
            in_cplusplus = false;
        } else if !in_cplusplus && !trimmed.starts_with('#') {
            kept.push(trimmed);
        }
    }
    let flat = kept.join(" ");
    let mut statements = BTreeSet::new();
    let (mut depth, mut current) = (0i32, String::new());
    for c in flat.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            _ => {}
        }
        if c == ';' && depth == 0 {
            statements.insert(normalize(&current));
            current.clear();
        } else {
            current.push(c);
        }
    }
    assert!(current.trim().is_empty(), "trailing text {current:?}");
    statements
}

/// Whitespace collapsed; `struct`/`enum` tags dropped (cbindgen writes
/// `struct tailor_x *`, the header the typedef name: the same type).
fn normalize(statement: &str) -> String {
    let mut s = statement.split_whitespace().collect::<Vec<_>>().join(" ");
    for tag in ["struct tailor_", "enum tailor_"] {
        s = s.replace(tag, "tailor_");
    }
    for (from, to) in [("( ", "("), (" )", ")"), ("{ ", "{"), (" }", "}"), (" ,", ","), (", ", ","), (",}", "}")] {
        s = s.replace(from, to);
    }
    s
}

#[test]
fn tailor_h_declares_exactly_the_exported_api() {
    let hand = std::fs::read_to_string(root().join("include/tailor.h")).expect("include/tailor.h");
    let generated = generated_header();
    let (hand_decls, generated_decls) = (declarations(&hand), declarations(&generated));
    let only_hand: Vec<_> = hand_decls.difference(&generated_decls).collect();
    let only_rust: Vec<_> = generated_decls.difference(&hand_decls).collect();
    assert!(
        only_hand.is_empty() && only_rust.is_empty(),
        "tailor.h and the Rust exports differ.\nonly in tailor.h:\n  {}\nonly in the Rust code:\n  {}",
        only_hand.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  "),
        only_rust.iter().map(|s| s.as_str()).collect::<Vec<_>>().join("\n  ")
    );
    assert_eq!(defines(&hand), defines(&generated), "#define constants differ");
    let functions =
        hand_decls.iter().filter(|d| d.contains("tailor_") && d.ends_with(')') && !d.starts_with("typedef"));
    assert!(functions.count() >= 30, "the header lost its functions");
}

#[test]
fn every_exported_symbol_is_declared() {
    let hand = std::fs::read_to_string(root().join("include/tailor.h")).expect("include/tailor.h");
    let library = root().join("target/release/libtailor.so");
    assert!(library.exists(), "build it first: cargo build --release -p tailor-ffi");
    let out = std::process::Command::new("nm").args(["-D", "--defined-only"]).arg(&library).output().expect("nm");
    let symbols = String::from_utf8_lossy(&out.stdout);
    let exported: BTreeSet<&str> =
        symbols.lines().filter_map(|l| l.split_whitespace().nth(2)).filter(|s| s.starts_with("tailor_")).collect();
    let declared: BTreeSet<String> = declarations(&hand)
        .iter()
        .filter(|d| !d.starts_with("typedef"))
        .filter_map(|d| d.split('(').next()?.rsplit([' ', '*']).next().map(str::to_string))
        .collect();
    let declared: BTreeSet<&str> = declared.iter().map(String::as_str).collect();
    assert_eq!(exported, declared, "libtailor.so's tailor_* symbols vs tailor.h's functions");
    let caller = std::fs::read_to_string(root().join("tests/c/every_function.c")).expect("every_function.c");
    let uncalled: Vec<&&str> = declared.iter().filter(|f| !caller.contains(&format!("{f}("))).collect();
    assert!(uncalled.is_empty(), "tests/c/every_function.c must call every function; it misses {uncalled:?}");
}
