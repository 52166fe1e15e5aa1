//! Plugins through the real ABI: the C example compiled with the system C
//! compiler and loaded with dlopen; a copy built against ABI major 2 is
//! refused naming both versions; paths outside the plugin directories are
//! refused; a panicking Rust stage fails only its request.

use std::path::{Path, PathBuf};
use std::process::Command;
use tailor_plugin_abi::host::{default_host, Plugin, PluginError};
use tailor_plugin_abi::{export_plugin, ffi, Stage, StageKind};

fn scratch(name: &str) -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// Compiles the C example plugin with extra flags into `dir`.
fn build_c_plugin(dir: &Path, file: &str, flags: &[&str]) -> PathBuf {
    let out = dir.join(file);
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Wextra", "-Werror", "-shared", "-fPIC", "-I"])
        .arg(repo().join("include"))
        .args(flags)
        .arg(repo().join("plugins/examples/redact_email.c"))
        .arg("-o")
        .arg(&out)
        .status()
        .expect("running the C compiler");
    assert!(status.success(), "compiling the C plugin failed");
    out
}

/// The host table as the C compiler lays it out (each field's offset and
/// the size, from the header) equals the Rust mirror's, so an append to the
/// header that the mirror misses, or places differently, fails here.
#[test]
fn the_host_table_has_the_same_layout_in_c_and_in_rust() {
    let dir = scratch("host-layout");
    use std::mem::{offset_of, size_of};
    use tailor_plugin_abi::ffi::HostApi;
    /// Each field's name and its offset in the Rust mirror.
    macro_rules! fields {
        ($($field:ident),*) => {
            ([$(stringify!($field)),*], [$(offset_of!(HostApi, $field)),*])
        };
    }
    let (fields, offsets) = fields!(
        struct_size,
        abi_major,
        abi_minor,
        cpu_threads,
        host_ctx,
        log,
        progress,
        is_cancelled,
        call_stage,
        parallel_for,
        device,
        device_reserve,
        device_release
    );
    let prints: String =
        fields.iter().map(|f| format!("printf(\"%zu \", offsetof(tailor_host_api, {f}));\n")).collect();
    let program = format!(
        "#include <stddef.h>\n#include <stdio.h>\n#include \"tailor_plugin.h\"\n\
         int main(void) {{\n{prints}printf(\"%zu\\n\", sizeof(tailor_host_api));\nreturn 0;\n}}\n"
    );
    std::fs::write(dir.join("layout.c"), program).unwrap();
    let binary = dir.join("layout");
    let status = Command::new(std::env::var("CC").unwrap_or_else(|_| "cc".into()))
        .args(["-std=c11", "-Wall", "-Werror", "-I"])
        .arg(repo().join("include"))
        .arg(dir.join("layout.c"))
        .arg("-o")
        .arg(&binary)
        .status()
        .expect("running the C compiler");
    assert!(status.success(), "compiling the layout probe failed");
    let printed = String::from_utf8(Command::new(&binary).output().unwrap().stdout).unwrap();
    let rust = offsets.into_iter().chain([size_of::<HostApi>()]);
    let rust: Vec<String> = rust.map(|n| n.to_string()).collect();
    assert_eq!(printed.split_whitespace().collect::<Vec<_>>(), rust, "offsets of {fields:?}, then the size");
}

#[test]
fn c_plugin_loads_and_redacts_email_addresses() {
    let dir = scratch("c-plugin");
    let path = build_c_plugin(&dir, "libredact_email.so", &[]);
    let plugin = Plugin::load(&path, std::slice::from_ref(&dir), default_host()).unwrap();
    assert_eq!((plugin.name(), plugin.version()), ("redact-email", "1.0.0"));
    let stages = plugin.stages();
    assert_eq!(stages.len(), 1);
    assert_eq!((stages[0].name.as_str(), stages[0].kind), ("redact-email", Some(StageKind::Filter)));
    let stage = plugin.instantiate("redact-email", "{}").unwrap();
    let out = stage
        .call_collect(1, r#"{"text": "Write to alice@example.com or bob.smith@corp.co.uk. Not an @ sign."}"#)
        .unwrap();
    assert_eq!(out, r#"{"text": "Write to [redacted] or [redacted]. Not an @ sign."}"#);
    assert!(matches!(plugin.instantiate("nope", "{}"), Err(PluginError::UnknownStage { .. })));
    // Cancelling from the sink stops the stream.
    let mut chunks = 0;
    let err = stage.call(2, "a@b.co and c@d.co", &mut |_| {
        chunks += 1;
        false
    });
    assert!(matches!(err, Err(PluginError::Stage { status: ffi::ERR_CANCELLED, .. })) && chunks == 1);
}

#[test]
fn plugin_built_for_another_abi_major_is_refused_naming_both_versions() {
    let dir = scratch("abi2");
    let path = build_c_plugin(&dir, "libredact_v2.so", &["-DTAILOR_PLUGIN_ABI_MAJOR=2"]);
    let err = Plugin::load(&path, std::slice::from_ref(&dir), default_host()).err().expect("ABI 2 must be refused");
    let message = err.to_string();
    assert!(matches!(err, PluginError::AbiMismatch { plugin_major: 2, host_major: 1, .. }), "{message}");
    let (plugin, host) =
        (format!("ABI 2.{}", tailor_plugin_abi::ABI_MINOR), format!("ABI 1.{}", tailor_plugin_abi::ABI_MINOR));
    assert!(message.contains(&plugin) && message.contains(&host), "{message}");
}

#[test]
fn plugins_outside_the_configured_directories_are_refused() {
    let allowed = scratch("allowed");
    let elsewhere = scratch("elsewhere");
    let path = build_c_plugin(&elsewhere, "libredact_email.so", &[]);
    let err = Plugin::load(&path, std::slice::from_ref(&allowed), default_host()).err().expect("must be refused");
    assert!(matches!(err, PluginError::NotAllowed { .. }), "{err}");
    // A symlink inside the allowed directory pointing outside is refused too.
    let link = allowed.join("sneaky.so");
    std::os::unix::fs::symlink(&path, &link).unwrap();
    assert!(matches!(
        Plugin::load(&link, std::slice::from_ref(&allowed), default_host()),
        Err(PluginError::NotAllowed { .. })
    ));
    // A library without the entry point is not a plugin.
    let plain = allowed.join("libplain.so");
    std::fs::write(allowed.join("plain.c"), "int answer(void) { return 42; }\n").unwrap();
    let ok = Command::new("cc")
        .args(["-shared", "-fPIC"])
        .arg(allowed.join("plain.c"))
        .arg("-o")
        .arg(&plain)
        .status()
        .unwrap();
    assert!(ok.success());
    assert!(matches!(Plugin::load(&plain, &[allowed], default_host()), Err(PluginError::NoEntry { .. })));
}

/// Upper-cases text; panics on request "boom".
struct Shout;

impl Stage for Shout {
    const KIND: StageKind = StageKind::Filter;
    const NAME: &'static std::ffi::CStr = c"shout";

    fn create(config_json: &str) -> Result<Self, String> {
        if config_json.contains("refuse") {
            return Err("config refused".into());
        }
        Ok(Shout)
    }

    fn call(
        &self,
        _id: u64,
        request: &str,
        emit: &mut dyn FnMut(&str) -> bool,
    ) -> Result<(), tailor_plugin_abi::StageError> {
        if request == "boom" {
            panic!("boom requested");
        }
        if request.is_empty() {
            return Err("empty request".into());
        }
        for word in request.split_inclusive(' ') {
            if !emit(&word.to_uppercase()) {
                break;
            }
        }
        Ok(())
    }
}

export_plugin!(name: "shout-plugin", version: "0.1.0", stages: [Shout]);

#[test]
fn rust_stage_panic_fails_only_its_request() {
    let plugin = Plugin::from_entry(tailor_plugin_entry, Path::new("(linked)"), default_host()).unwrap();
    assert_eq!(plugin.name(), "shout-plugin");
    let stage = plugin.instantiate("shout", "{}").unwrap();
    assert_eq!(stage.call_collect(1, "hello plugin world").unwrap(), "HELLO PLUGIN WORLD");
    let err = stage.call_collect(2, "boom").unwrap_err();
    assert!(matches!(err, PluginError::Stage { status: ffi::ERR_INTERNAL, .. }), "{err}");
    assert!(err.to_string().contains("stage panicked: boom requested"), "{err}");
    assert_eq!(stage.call_collect(3, "still alive").unwrap(), "STILL ALIVE", "the next request succeeds");
    let err = stage.call_collect(4, "").unwrap_err();
    assert!(
        matches!(err, PluginError::Stage { status: ffi::ERR_INVALID, .. }) && err.to_string().contains("empty request")
    );
    let err = plugin.instantiate("shout", r#"{"refuse": true}"#).err().unwrap();
    assert!(err.to_string().contains("config refused"), "{err}");
}
