#!/usr/bin/env bash
# Prepares, on this machine, what benches/cuda/run.sh needs on a GPU machine
# that has the CUDA driver, NVRTC and python3 with torch but no Rust
# toolchain and no network: the GPU tests and the two CUDA benches built
# here (release, feature cuda, stripped), every kernel precompiled to CUBIN
# for sm_90 (so NVRTC is not even needed there), and a GGUF with SmolLM2's
# tokenizer for the end-to-end bench. All in target/device-kit (ignored),
# small enough to carry:
#   benches/cuda/kit.sh
#   then, with the device tool: run "bash benches/cuda/run.sh", carry ["target/device-kit"]
set -euo pipefail
cd "$(dirname "$0")/../.."
kit=target/device-kit
rm -rf "$kit" && mkdir -p "$kit/bin"
# Builds cargo target TARGET (a test or a bench) and copies its executable to
# $kit/bin/NAME.
build() {
  local name=$1 target=$2; shift 2
  local exe
  exe=$(cargo "$@" --features cuda --no-run --message-format=json 2>/dev/null |
    TARGET=$target python3 -c 'import json, os, sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == os.environ["TARGET"]:
        print(m["executable"])' | tail -1)
  [ -n "$exe" ] || { echo "kit: no executable for $target" >&2; exit 1; }
  strip -o "$kit/bin/$name" "$exe"
}
build cuda_kernels cuda_kernels test -p tailor-tensor --test cuda_kernels --release
build cuda_backward cuda_backward test -p tailor-tensor --test cuda_backward --release
build device_decoder device_decoder test -p tailor-model --test device_decoder --release
build device_engine device_engine test -p tailor-engine --test device_engine --release
build cuda_bench cuda bench -p tailor-tensor --bench cuda
build device_decode device_decode bench -p tailor-model --bench device_decode
# CUBINs for sm_90, compiled by NVRTC from the PyPI wheel.
nvrtc="$(scripts/cuda_toolchain.sh)/nvidia/cu13/lib"
LD_LIBRARY_PATH="$nvrtc" "$kit/bin/cuda_bench" precompile "$PWD/$kit/kernel-cache" > /dev/null
# SmolLM2's tokenizer in a tiny GGUF (one layer of 32).
cargo build --release --quiet -p tailor-cli
./target/release/tailor models synth "$kit/tokenizer.gguf" --hidden 32 --intermediate 32 --layers 1 --heads 1 \
  --kv-heads 1 --dtype q4_0 > /dev/null
du -sh "$kit"
