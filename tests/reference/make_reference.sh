#!/usr/bin/env bash
# Regenerates tests/reference/smollm2_* with transformers (torch CPU, f32) and
# tests/reference/minilm_* with sentence-transformers.
# Heavy (torch + transformers, ~6 GB): run by hand, never in CI.
#   tests/reference/make_reference.sh [SMOLLM2_HF_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$(VENV=${REF_VENV:-} "$root/scripts/venv.sh" ref torch transformers safetensors numpy sentence-transformers)
cache=$("$root/target/release/tailor" models path)
"$venv/bin/python" "$here/make_reference.py" "${1:-$cache/SmolLM2-135M-Instruct-hf}" "$here"
"$venv/bin/python" "$here/make_embedding_reference.py" "$cache/all-MiniLM-L6-v2" "$root/../shared/data/negconstraint"
