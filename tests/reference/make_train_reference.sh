#!/usr/bin/env bash
# Regenerates tests/reference/train/* with PyTorch autograd + PEFT (CPU, f32)
# on the converted SmolLM2 folder. Heavy (torch): run by hand, never in CI.
#   tests/reference/make_train_reference.sh [SMOLLM2_HF_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$(VENV=${REF_VENV:-} "$root/scripts/venv.sh" peft torch transformers peft safetensors numpy)
cache=$("$root/target/release/tailor" models path)
mkdir -p "$here/train"
"$venv/bin/python" "$here/make_train_reference.py" "${1:-$cache/SmolLM2-135M-Instruct-hf}" "$here/train"
