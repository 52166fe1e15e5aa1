//! `tailor bench` says where a figure was measured: the CPU's name, the
//! features detected and the kernel path each hot operation took, beside
//! the speeds and peak RSS (no timing is asserted: speed lives in benches).
//! And `tailor models synth` / `quantize` write files that `bench` runs.

use std::process::Command;

fn tailor(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_tailor")).args(args).output().expect("running tailor");
    assert!(out.status.success(), "tailor {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    stdout.lines().last().map_or(serde_json::Value::Null, |l| serde_json::from_str(l).unwrap_or_default())
}

#[test]
fn bench_reports_the_machine_and_runs_synthetic_and_requantized_models() {
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (synth, requantized) = (dir.join("tiny-f16.gguf"), dir.join("tiny-q5_1.gguf"));
    let small = ["--hidden", "256", "--intermediate", "512", "--layers", "2", "--heads", "4", "--kv-heads", "2"];
    let mut args = vec!["models", "synth", synth.to_str().unwrap(), "--dtype", "f16"];
    args.extend(small);
    tailor(&args);
    tailor(&["models", "quantize", synth.to_str().unwrap(), requantized.to_str().unwrap(), "--dtype", "q5_1"]);
    for model in [&synth, &requantized] {
        let report = tailor(&[
            "bench",
            "--model",
            model.to_str().unwrap(),
            "--json",
            "--repeat",
            "1",
            "--prompt-tokens",
            "8",
            "--gen-tokens",
            "4",
        ]);
        assert!(report["cpu"].as_str().is_some_and(|c| !c.is_empty()), "{report}");
        assert!(report["cpu_features"].is_array(), "{report}");
        for kernel in ["quantized_rows", "half_rows", "half_prefill", "bf16_gemm"] {
            assert!(report["kernels"][kernel].as_str().is_some_and(|k| !k.is_empty()), "{kernel}: {report}");
        }
        assert!(report["decode_tok_s"].as_f64().is_some_and(|t| t > 0.0), "{report}");
        assert!(report["peak_rss_mib"].as_f64().is_some_and(|m| m > 0.0), "{report}");
    }
}

/// `tailor cpu` prints the same report on its own, for bench scripts.
#[test]
fn cpu_prints_the_report_bench_scripts_show() {
    let report = tailor(&["cpu", "--json"]);
    assert!(report["cpu"].as_str().is_some_and(|c| !c.is_empty()), "{report}");
    let features: Vec<&str> = report["cpu_features"].as_array().unwrap().iter().filter_map(|f| f.as_str()).collect();
    let rows = report["kernels"]["quantized_rows"].as_str().unwrap();
    // The kernel path follows the features detected, never the vendor.
    if rows.contains("avx512-vnni") {
        assert!(features.contains(&"avx512vnni"), "{report}");
    }
    if rows.contains("avx2") || rows.contains("avx512") {
        assert!(["avx2", "fma", "f16c"].iter().all(|f| features.contains(f)), "{report}");
    } else {
        assert_eq!(rows, "scalar rows", "{report}");
    }
    // Every AVX2 CPU gets the interleaved groups unless a layout is forced.
    if std::env::var_os("TAILOR_WEIGHT_LAYOUT").is_none() && features.contains(&"avx2") {
        assert!(rows.starts_with("interleaved groups"), "{report}");
    }
}
