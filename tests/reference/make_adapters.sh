#!/usr/bin/env bash
# Regenerates tests/reference/adapters/* and adapters_* with PEFT (torch CPU,
# f32) on the converted SmolLM2 folder. Heavy (torch + peft): run by hand,
# never in CI.
#   tests/reference/make_adapters.sh [SMOLLM2_HF_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$(VENV=${REF_VENV:-} "$root/scripts/venv.sh" peft torch transformers peft safetensors numpy)
cache=$("$root/target/release/tailor" models path)
"$venv/bin/python" "$here/make_adapters.py" "${1:-$cache/SmolLM2-135M-Instruct-hf}" "$here"
