#!/usr/bin/env bash
# NVRTC and ptxas without a GPU or a CUDA install: NVIDIA's PyPI wheels
# (CUDA 13, the H200 machine's driver major; NVRTC and ptxas of the same
# release) into target/cuda-toolchain, once. Prints the folder; its
# nvidia/cu13/lib goes on LD_LIBRARY_PATH, nvidia/cu13/bin/ptxas is ptxas.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
dir=${TAILOR_CUDA_TOOLCHAIN:-$root/target/cuda-toolchain}
if [ ! -f "$dir/nvidia/cu13/lib/libnvrtc.so.13" ] || [ ! -x "$dir/nvidia/cu13/bin/ptxas" ]; then
  python3 -m pip install --quiet --disable-pip-version-check --no-deps --upgrade --target "$dir" \
    'nvidia-cuda-nvrtc>=13,<14' 'nvidia-cuda-nvcc>=13,<14' >&2
fi
echo "$dir"
