#!/usr/bin/env bash
# tailor vs llama.cpp on the bundled SmolLM2 Q4_1 GGUF, in one run.
# Builds llama-cpp-python from source once (~15 min on 2 cores): by hand, never in CI.
#   benches/llamacpp/run.sh bench   # speed, ratios printed
#   benches/llamacpp/run.sh top5    # regenerate tests/reference/llamacpp_top5.json
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$(VENV=${LLAMA_VENV:-} "$root/scripts/venv.sh" llama llama-cpp-python numpy)
(cd "$root" && cargo build --release --quiet -p tailor-cli)
tailor="$root/target/release/tailor"
gguf="$("$tailor" models path)/SmolLM2-135M-Instruct.Q4_1.gguf"
case "${1:-bench}" in
  top5) "$venv/bin/python" "$here/compare.py" top5 "$gguf" "$root/tests/reference/llamacpp_top5.json" ;;
  bench) shift || true; "$venv/bin/python" "$here/compare.py" bench "$gguf" "$tailor" "$@" ;;
  *) echo "usage: $0 bench|top5" >&2; exit 2 ;;
esac
