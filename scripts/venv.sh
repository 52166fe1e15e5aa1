#!/usr/bin/env bash
# Ensures a Python venv for a by-hand reference or benchmark script and prints
# its path: $VENV if set, else target/NAME-venv (created with PACKAGES).
#   scripts/venv.sh NAME PACKAGE...
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
name=$1; shift
venv=${VENV:-}
[ -n "$venv" ] || venv=$root/target/$name-venv
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv" >&2
  CMAKE_BUILD_PARALLEL_LEVEL=2 "$venv/bin/pip" install --quiet "$@" >&2
fi
echo "$venv"
