#!/usr/bin/env bash
# tailor's encoder vs sentence-transformers on NegConstraint, in one run (by hand;
# builds a venv with torch + sentence-transformers, ~6 GB).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$(VENV=${REF_VENV:-} "$root/scripts/venv.sh" ref torch transformers safetensors numpy sentence-transformers)
(cd "$root" && cargo build --release --quiet -p tailor-cli)
tailor="$root/target/release/tailor"
"$venv/bin/python" "$here/compare.py" "$tailor" "$("$tailor" models path)/all-MiniLM-L6-v2" "$root/../shared/data/negconstraint" "$@"
