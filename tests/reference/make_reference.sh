#!/usr/bin/env bash
# Regenerates tests/reference/smollm2_* with transformers (torch CPU, f32).
# Heavy (torch + transformers, ~6 GB): run by hand, never in CI.
#   tests/reference/make_reference.sh [HF_MODEL_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${REF_VENV:-$root/target/ref-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet torch transformers safetensors numpy
fi
model=${1:-$("$root/target/release/tailor" models path)/SmolLM2-135M-Instruct-hf}
"$venv/bin/python" "$here/make_reference.py" "$model" "$here"
