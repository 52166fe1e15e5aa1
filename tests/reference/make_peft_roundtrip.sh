#!/usr/bin/env bash
# Trains a small adapter with `tailor train` on the converted SmolLM2 folder
# (16 examples of the style set, rank 2 on all seven projections, one
# epoch), then has PEFT load it and write its logits. Heavy (torch + peft):
# run by hand, never in CI; CI compares against what this commits.
#   tests/reference/make_peft_roundtrip.sh [SMOLLM2_HF_DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$(VENV=${REF_VENV:-} "$root/scripts/venv.sh" peft torch transformers peft safetensors numpy)
tailor="$root/target/release/tailor"
base=${1:-$("$tailor" models path)/SmolLM2-135M-Instruct-hf}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -16 "$root/examples/style/train.jsonl" > "$work/data.jsonl"
"$tailor" --threads 2 train --model "$base" --data "$work/data.jsonl" --out "$work/run" \
  --r 2 --alpha 4 --targets all-linear --epochs 1 --seed 3 --lr 2e-3
rm -rf "$here/train/trained"
mkdir -p "$here/train/trained"
cp "$work/run/adapter_config.json" "$work/run/adapter_model.safetensors" "$here/train/trained/"
"$venv/bin/python" "$here/make_peft_roundtrip.py" "$base" "$here/train"
