#!/usr/bin/env bash
# The device check, one script sized for a few minutes on a GPU machine:
# every GPU test (each op, forward and backward, against its CPU twin, the
# pool's budget; the decoder on the device against the CPU decoder; the
# continuous-batching engine on the device against its solo runs and the
# CPU engine), then the kernels' figures (core/tensor/benches/cuda.rs: GEMV
# bandwidth against a device copy, the prefill linear kernel's TFLOP/s, SGMV
# against BGMV on a prompt, 32 LoRA adapters against 1, attention TFLOP/s),
# torch SDPA's on the same attention shapes where torch is installed
# (sdpa.py), and the decoder end to end (core/model/benches/device_decode.rs).
#
# Where cargo is, it builds them; a GPU machine without a Rust toolchain
# (the lent H200s have none, and no network) runs what benches/cuda/kit.sh
# prepared here in target/device-kit: carry that folder. NVRTC comes from the
# CUDA toolkit or the PyPI wheel (scripts/cuda_toolchain.sh); without either
# the kit's precompiled CUBINs (sm_90) serve.
set -uo pipefail
cd "$(dirname "$0")/../.."
kit=$PWD/target/device-kit
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: none"
for lib in "$PWD/target/cuda-toolchain/nvidia/cu13/lib" /usr/local/cuda/lib64 /usr/local/nvidia/lib64; do
  [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
if [ -z "${TAILOR_KERNEL_CACHE:-}" ]; then
  for cache in target/kernel-cache "$kit/kernel-cache"; do
    [ -d "$cache" ] && export TAILOR_KERNEL_CACHE=$PWD/$cache && break
  done
fi
echo "kernel cache: ${TAILOR_KERNEL_CACHE:-default}"
export TAILOR_CUDA_TESTS=1
mkdir -p target/device

# Runs one test or bench: from the kit without cargo, else through cargo.
# $1: seconds; $2: the kit's name; $3: cargo's arguments; the rest: the
# program's own arguments.
step() {
  local seconds=$1 name=$2 cargo_args=$3; shift 3
  if command -v cargo > /dev/null; then
    # shellcheck disable=SC2086
    timeout "$seconds" cargo $cargo_args --features cuda -- "$@" 2>&1
  elif [ -x "$kit/bin/$name" ]; then
    timeout "$seconds" "$kit/bin/$name" "$@" 2>&1
  else
    echo "$name: neither cargo nor $kit/bin/$name (run benches/cuda/kit.sh and carry target/device-kit)"
  fi
}

step 300 cuda_kernels "test -p tailor-tensor --test cuda_kernels --release" --test-threads 1 gpu past_the_pool_budget | tail -20
step 300 cuda_backward "test -p tailor-tensor --test cuda_backward --release" --test-threads 1 gpu | tail -8
step 240 device_decoder "test -p tailor-model --test device_decoder --release" --test-threads 1 gpu | tail -8
step 180 device_engine "test -p tailor-engine --test device_engine --release" gpu | tail -6
step 180 cuda_bench "bench -p tailor-tensor --bench cuda" --bench | tail -24 | tee target/cuda-bench.txt
# torch's SDPA on the same attention shapes, where torch is installed.
tflops() { grep "attention, $1 cache" target/cuda-bench.txt | sed -n 's/.*: \([0-9.]*\) TFLOP\/s.*/\1/p' | head -1; }
f32=$(tflops f32); f16=$(tflops f16)
timeout 60 python3 benches/cuda/sdpa.py ${f32:+--tailor-f32 $f32} ${f16:+--tailor-f16 $f16} || echo "torch SDPA: failed"
# The decoder end to end on the device: synthesized SmolLM2-shaped and
# 1B-shaped GGUFs (seeded random weights), prefill/decode tok/s and greedy
# equality with the CPU. Their tokenizer: the kit's, or
# target/device/tokenizer.gguf, or the fetched SmolLM2.
tokenizer=$kit/tokenizer.gguf
[ -f "$tokenizer" ] || tokenizer=target/device/tokenizer.gguf
[ -f "$tokenizer" ] || tokenizer="${TAILOR_MODELS:-$HOME/.cache/tailor/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
step 240 device_decode "bench -p tailor-model --bench device_decode" "$tokenizer" target/device | tail -10
