#!/usr/bin/env bash
# tailor vs llama.cpp on the bundled SmolLM2 Q4_1 GGUF, in one run.
# Builds llama-cpp-python from source once (~15 min on 2 cores): by hand, never in CI.
#   benches/llamacpp/run.sh bench   # speed, ratios printed
#   benches/llamacpp/run.sh top5    # regenerate tests/reference/llamacpp_top5.json
#   benches/llamacpp/run.sh scale [1b|3b] [TYPE...]
#       a synthetic model (tailor models synth, f16), quantized by llama.cpp to each
#       TYPE (default: BF16 Q8_0 Q6_K Q5_K_M Q5_1 Q5_0 Q4_K_M Q4_1 Q4_0 IQ4_XS IQ4_NL
#       Q3_K_M Q2_K), then both engines on every file: prefill/decode ratios, decode
#       bandwidth vs a copy, peak RSS, and the spread of single rounds' ratios; $ROUNDS
#       rounds (default 3). Files go to $SCALE_DIR (default target/scale;
#       1b needs ~14 GB, 3b ~35 GB).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
# A CPU that lists AMX may still fault on it: these VMs raise a general
# protection fault at llama.cpp's first `ldtilecfg` (the hypervisor leaves
# the tile state off). There llama.cpp is built for every other feature
# the CPU lists (what GGML_NATIVE would pick) with AMX off; PIP_NO_CACHE_DIR
# keeps pip from reusing a wheel built the other way.
flags=$(grep -m1 '^flags' /proc/cpuinfo || true)
if [[ " $flags " == *" amx_tile "* ]]; then
  has() { [[ " $flags " == *" $1 "* ]] && echo ON || echo OFF; }
  export PIP_NO_CACHE_DIR=1 CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON \
-DGGML_F16C=ON -DGGML_AVX512=$(has avx512f) -DGGML_AVX512_VBMI=$(has avx512vbmi) \
-DGGML_AVX512_VNNI=$(has avx512_vnni) -DGGML_AVX512_BF16=$(has avx512_bf16) -DGGML_AVX_VNNI=$(has avx_vnni) \
-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF"
fi
venv=$(VENV=${LLAMA_VENV:-} "$root/scripts/venv.sh" llama llama-cpp-python numpy gguf)
(cd "$root" && cargo build --release --quiet -p tailor-cli)
tailor="$root/target/release/tailor"
gguf="$("$tailor" models path)/SmolLM2-135M-Instruct.Q4_1.gguf"
case "${1:-bench}" in
  top5) "$venv/bin/python" "$here/compare.py" top5 "$gguf" "$root/tests/reference/llamacpp_top5.json" ;;
  bench) shift || true; "$venv/bin/python" "$here/compare.py" bench "$gguf" "$tailor" "$@" ;;
  scale)
    shift || true
    shape=${1:-1b}; shift || true
    types=("$@")
    [ ${#types[@]} -gt 0 ] || types=(BF16 Q8_0 Q6_K Q5_K_M Q5_1 Q5_0 Q4_K_M Q4_1 Q4_0 IQ4_XS IQ4_NL Q3_K_M Q2_K)
    dir=${SCALE_DIR:-$root/target/scale}; mkdir -p "$dir"
    "$venv/bin/python" -c 'import gguf' 2>/dev/null || "$venv/bin/pip" install --quiet gguf
    f16="$dir/$shape-f16.gguf"
    [ -f "$f16" ] || "$tailor" models synth "$f16" --shape "$shape" --dtype f16
    "$venv/bin/python" "$here/scale.py" quantize "$f16" "$dir" "${types[@]}"
    files=("$f16")
    for t in "${types[@]}"; do files+=("$dir/$shape-${t,,}.gguf"); done
    "$venv/bin/python" "$here/scale.py" bench "$tailor" "${files[@]}" --rounds "${ROUNDS:-3}" ;;
  *) echo "usage: $0 bench|top5|scale" >&2; exit 2 ;;
esac
