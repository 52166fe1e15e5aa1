#!/usr/bin/env bash
# The device check, one script sized for a few minutes on a GPU machine:
# builds tailor-tensor with CUDA, runs every GPU test (each op against its
# CPU twin, the pool's budget), then prints GEMV bandwidth against a device
# copy and 32 LoRA adapters against 1 (core/tensor/benches/cuda.rs).
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
timeout 300 cargo test --release -p tailor-tensor --features cuda --test cuda_kernels -- --test-threads 1 2>&1 | tail -25
timeout 240 cargo test --release -p tailor-model --features cuda --test device_decoder -- --test-threads 1 gpu 2>&1 | tail -12
timeout 180 cargo bench -p tailor-tensor --features cuda --bench cuda 2>&1 | tail -20
