#!/usr/bin/env bash
# The device check, one script sized for a few minutes on a GPU machine:
# builds tailor-tensor with CUDA, runs every GPU test (each op against its
# CPU twin, the pool's budget; the decoder on the device against the CPU
# decoder; the continuous-batching engine on the device against its solo
# runs and the CPU engine), then prints GEMV bandwidth against a device copy, the
# prefill linear kernel's TFLOP/s, SGMV against BGMV on a prompt, 32 LoRA
# adapters against 1, attention TFLOP/s (core/tensor/benches/cuda.rs) and torch
# SDPA's on the same shapes where torch is installed (sdpa.py), and the decoder
# end to end (core/model/benches/device_decode.rs).
# NVRTC comes from the CUDA toolkit or the PyPI wheel (scripts/cuda_toolchain.sh);
# a machine without either uses CUBINs precompiled elsewhere, carried in
# target/kernel-cache (fill it with:
#   LD_LIBRARY_PATH=$PWD/target/cuda-toolchain/nvidia/cu13/lib \
#   cargo bench -p tailor-tensor --features cuda --bench cuda -- precompile $PWD/target/kernel-cache).
set -euo pipefail
cd "$(dirname "$0")/../.."
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || echo "nvidia-smi: none"
for lib in "$PWD/target/cuda-toolchain/nvidia/cu13/lib" /usr/local/cuda/lib64; do
  [ -d "$lib" ] && export LD_LIBRARY_PATH="$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
done
if [ -z "${TAILOR_KERNEL_CACHE:-}" ] && [ -d target/kernel-cache ]; then
  export TAILOR_KERNEL_CACHE=$PWD/target/kernel-cache
fi
echo "kernel cache: ${TAILOR_KERNEL_CACHE:-default}"
export TAILOR_CUDA_TESTS=1
timeout 300 cargo test --release -p tailor-tensor --features cuda --test cuda_kernels --test cuda_backward -- --test-threads 1 2>&1 | tail -25
timeout 240 cargo test --release -p tailor-model --features cuda --test device_decoder -- --test-threads 1 gpu 2>&1 | tail -12
timeout 180 cargo test --release -p tailor-engine --features cuda --test device_engine -- gpu 2>&1 | tail -6
# The decoder end to end on the device: synthesized SmolLM2-shaped (f32,
# q4_0) and 1B-shaped (q4_0) GGUFs, prefill/decode tok/s and greedy
# equality with the CPU. Their tokenizer: target/device/tokenizer.gguf
# (2.6 MB, carried; make it with `tailor models synth target/device/tokenizer.gguf
# --hidden 32 --intermediate 32 --layers 1 --heads 1 --kv-heads 1 --dtype q4_0`)
# or the fetched SmolLM2.
tokenizer=target/device/tokenizer.gguf
[ -f "$tokenizer" ] || tokenizer="${TAILOR_MODELS:-$HOME/.cache/tailor/models}/SmolLM2-135M-Instruct.Q4_1.gguf"
timeout 240 cargo bench -p tailor-model --features cuda --bench device_decode -- "$tokenizer" target/device 2>&1 | tail -8
timeout 180 cargo bench -p tailor-tensor --features cuda --bench cuda 2>&1 | tail -24 | tee target/cuda-bench.txt
# torch's SDPA on the same attention shapes, where torch is installed.
tflops() { grep "attention, $1 cache" target/cuda-bench.txt | sed -n 's/.*: \([0-9.]*\) TFLOP\/s.*/\1/p' | head -1; }
f32=$(tflops f32); f16=$(tflops f16)
timeout 60 python3 benches/cuda/sdpa.py ${f32:+--tailor-f32 $f32} ${f16:+--tailor-f16 $f16} || echo "torch SDPA: failed"
