#!/usr/bin/env bash
# tailor vs llama.cpp on the bundled SmolLM2 Q4_1 GGUF, in one run.
# Builds llama-cpp-python from source once (~15 min on 2 cores): by hand, never in CI.
#   benches/llamacpp/run.sh bench   # speed, ratios printed
#   benches/llamacpp/run.sh top5    # regenerate tests/reference/llamacpp_top5.json
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=${LLAMA_VENV:-$root/target/llama-venv}
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  CMAKE_BUILD_PARALLEL_LEVEL=2 "$venv/bin/pip" install --quiet llama-cpp-python numpy
fi
(cd "$root" && cargo build --release --quiet -p tailor-cli)
tailor="$root/target/release/tailor"
gguf="$("$tailor" models path)/SmolLM2-135M-Instruct.Q4_1.gguf"
case "${1:-bench}" in
  top5) "$venv/bin/python" "$here/compare.py" top5 "$gguf" "$root/tests/reference/llamacpp_top5.json" ;;
  bench) shift || true; "$venv/bin/python" "$here/compare.py" bench "$gguf" "$tailor" "$@" ;;
  *) echo "usage: $0 bench|top5" >&2; exit 2 ;;
esac
