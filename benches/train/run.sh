#!/usr/bin/env bash
# Seconds per LoRA step and peak memory: tailor train vs PEFT + torch (CPU),
# same data, settings and threads, in one run (by hand; builds a venv with
# torch + transformers + peft).
#   benches/train/run.sh [--threads N] [--steps N]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$(VENV=${REF_VENV:-} "$root/scripts/venv.sh" peft torch transformers peft safetensors numpy)
(cd "$root" && cargo build --release --quiet -p tailor-cli)
tailor="$root/target/release/tailor"
models=$("$tailor" models path)
"$venv/bin/python" "$here/compare.py" "$tailor" "$models" "$root" "$@"
