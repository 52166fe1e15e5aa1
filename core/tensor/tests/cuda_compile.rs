//! Every CUDA kernel compiles with NVRTC for sm_90 and an older arch
//! (sm_80), and assembles with ptxas, whose resource report (registers,
//! spills, shared memory) is printed: CI runs this without a GPU, from
//! NVIDIA's PyPI wheels (scripts/cuda_toolchain.sh). Without NVRTC it says
//! it did not run, unless TAILOR_REQUIRE_NVRTC is set (CI sets it).
#![cfg(feature = "cuda")]

use std::path::PathBuf;
use std::process::Command;
use tailor_tensor::cuda::kernels::{KernelSource, ALL};
use tailor_tensor::cuda::nvrtc::{self, KernelCache, Output};
use tailor_tensor::TensorError;

/// The architectures CI compiles for: Hopper and Ampere.
const ARCHES: [u32; 2] = [90, 80];

/// False (after saying so) when NVRTC is missing and not required.
fn nvrtc_present() -> bool {
    if nvrtc::available() {
        return true;
    }
    assert!(
        std::env::var_os("TAILOR_REQUIRE_NVRTC").is_none(),
        "TAILOR_REQUIRE_NVRTC is set but libnvrtc cannot be loaded"
    );
    eprintln!("NVRTC not found: the CUDA kernel compile check did not run (scripts/cuda_toolchain.sh installs it)");
    false
}

/// ptxas from `$TAILOR_PTXAS` or PATH, if any.
fn ptxas() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("TAILOR_PTXAS") {
        return Some(PathBuf::from(path));
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("ptxas")).find(|p| p.is_file())
}

#[test]
fn every_kernel_compiles_to_cubin_for_hopper_and_ampere() {
    if !nvrtc_present() {
        return;
    }
    let (major, minor) = nvrtc::version().unwrap();
    eprintln!("NVRTC {major}.{minor}");
    for kernel in ALL {
        for arch in ARCHES {
            let cubin = nvrtc::compile(kernel, arch, Output::Cubin).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(&cubin[..4], b"\x7fELF", "{} for sm_{arch}: not an ELF image", kernel.file);
        }
    }
}

#[test]
fn ptxas_assembles_every_kernel_without_spills_and_reports_resources() {
    if !nvrtc_present() {
        return;
    }
    let Some(ptxas) = ptxas() else {
        assert!(
            std::env::var_os("TAILOR_REQUIRE_NVRTC").is_none(),
            "TAILOR_REQUIRE_NVRTC is set but no ptxas was found"
        );
        eprintln!("ptxas not found: the resource report did not run");
        return;
    };
    let dir = std::env::temp_dir().join(format!("tailor-ptxas-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    for kernel in ALL {
        let ptx = nvrtc::compile(kernel, 90, Output::Ptx).unwrap_or_else(|e| panic!("{e}"));
        let ptx_path = dir.join(format!("{}.ptx", kernel.name));
        std::fs::write(&ptx_path, &ptx).unwrap();
        let run = Command::new(&ptxas)
            .args(["-arch=sm_90", "-v", "-o"])
            .arg(dir.join(format!("{}.cubin", kernel.name)))
            .arg(&ptx_path)
            .output()
            .unwrap_or_else(|e| panic!("running {}: {e}", ptxas.display()));
        let report = String::from_utf8_lossy(&run.stderr);
        assert!(run.status.success(), "ptxas failed on {}:\n{report}", kernel.file);
        eprintln!("== {} (sm_90)", kernel.file);
        for line in
            report.lines().filter(|l| l.contains("Compiling entry") || l.contains("Used") || l.contains("spill"))
        {
            eprintln!("   {}", line.trim_start_matches("ptxas info    : "));
        }
        let spills =
            report.lines().filter(|l| l.contains("spill") && !l.contains("0 bytes spill stores, 0 bytes spill loads"));
        assert_eq!(spills.count(), 0, "{} spills registers:\n{report}", kernel.file);
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_broken_kernel_fails_with_its_file_name_and_the_compiler_log() {
    if !nvrtc_present() {
        return;
    }
    let broken = KernelSource {
        name: "broken",
        file: "broken.cu",
        code: "extern \"C\" __global__ void broken(float* x) { x[0] = undefined_name; }\n",
        entries: &["broken"],
    };
    let err = nvrtc::compile(&broken, 90, Output::Cubin).unwrap_err();
    let message = err.to_string();
    assert!(matches!(err, TensorError::KernelCompile { .. }), "{message}");
    assert!(
        message.contains("broken.cu") && message.contains("undefined_name") && message.contains("sm_90"),
        "{message}"
    );
}

#[test]
fn the_disk_cache_compiles_once_and_then_reads_the_same_bytes() {
    if !nvrtc_present() {
        return;
    }
    let dir = std::env::temp_dir().join(format!("tailor-kernel-cache-{}", std::process::id()));
    let cache = KernelCache::new(Some(dir.clone()));
    let kernel = &tailor_tensor::cuda::kernels::SILU_MUL;
    let path = cache.path_for(kernel, 90).unwrap();
    assert!(!path.exists());
    let compiled = cache.cubin(kernel, 90).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), compiled, "the first call writes the cache");
    std::fs::write(&path, b"\x7fELF marker").unwrap();
    assert_eq!(cache.cubin(kernel, 90).unwrap(), b"\x7fELF marker", "the second call reads it");
    assert_ne!(cache.path_for(kernel, 80).unwrap(), path, "the arch is part of the key");
    std::fs::remove_dir_all(&dir).unwrap();
}
