#!/usr/bin/env bash
# tailor vs llama.cpp under CPU contention (benches/contention/compare.py),
# by hand: builds llama-cpp-python once (~15 min on 2 cores), never in CI.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
venv=$(VENV=${LLAMA_VENV:-} "$root/scripts/venv.sh" llama llama-cpp-python numpy)
(cd "$root" && cargo build --release --quiet -p tailor-cli)
tailor="$root/target/release/tailor"
"$venv/bin/python" "$here/compare.py" "$("$tailor" models path)/SmolLM2-135M-Instruct.Q4_1.gguf" "$tailor" "$@"
