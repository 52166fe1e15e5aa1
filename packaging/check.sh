#!/usr/bin/env bash
# Package checks (run by scripts/test.sh after the release build):
#  1. builds the .deb (packaging/build-deb.sh);
#  2. unpacks it into a fresh root that holds nothing but the package, the
#     shared libraries its ELF files load (as ldd resolves them here) and
#     the two models, and checks the systemd unit there with
#     `systemd-analyze verify`;
#  3. runs the packaged tailord in that root (chroot) on the packaged
#     /etc/tailor/tailord.toml (Unix socket only, as packaged) and talks
#     to it over /run/tailor/tailord.sock: health, a
#     chat completion, and the packaged C example built against the
#     packaged tailor.h, tailor.pc and libtailor.so;
#  4. stops it with SIGTERM and expects a clean exit.
# Needs root (chroot).
set -euo pipefail
[ "$(id -u)" -eq 0 ] || exec sudo -E "$0" "$@"
cd "$(dirname "$0")/.."
models="${TAILOR_MODELS:-$HOME/.cache/tailor/models}"
deb=$(packaging/build-deb.sh | tail -1)
root=$(mktemp -d /tmp/tailor-root.XXXXXX)
trap 'kill "${daemon:-0}" 2>/dev/null || true; rm -rf "$root"' EXIT

echo "== unpacking $deb into $root"
dpkg-deb -x "$deb" "$root"
dpkg-deb -e "$deb" "$root/DEBIAN"
for elf in $(find "$root/usr" -type f \( -name '*.so' -o -perm -u+x \)); do
  ldd "$elf" 2>/dev/null | grep -o '/[^ ]*' | while read -r lib; do
    [ -e "$root$lib" ] || cp -L --parents "$lib" "$root"
  done
done
mkdir -p "$root/var/lib/tailor/models" "$root/run/tailor" "$root/tmp"
cp -r "$models/SmolLM2-135M-Instruct.Q4_1.gguf" "$models/all-MiniLM-L6-v2" "$root/var/lib/tailor/models/"

echo "== systemd-analyze verify (with this machine's stock units beside it)"
cp -rn /lib/systemd/system/. "$root/lib/systemd/system/"
# Any message (even a warning about an unknown key) fails the check.
verify=$(systemd-analyze verify --root="$root" /lib/systemd/system/tailord.service 2>&1) || true
[ -z "$verify" ] || { echo "$verify" >&2; exit 1; }
echo "clean"

echo "== tailord from the package"
cp "$root/etc/tailor/tailord.toml" "$root/etc/tailor/check.toml"   # the packaged config as it is: socket only
env -i TAILOR_DATA=/var/lib/tailor TAILOR_MODELS=/var/lib/tailor/models \
  "$(command -v chroot)" "$root" /usr/bin/tailord --config /etc/tailor/check.toml > "$root/tmp/tailord.out" 2>&1 &
daemon=$!
socket="$root/run/tailor/tailord.sock"
for _ in $(seq 1 120); do [ -S "$socket" ] && break; sleep 0.5; done
[ -S "$socket" ] || { cat "$root/tmp/tailord.out"; echo "tailord did not come up" >&2; exit 1; }
[ "$(stat -c %a "$socket")" = 660 ] || { echo "socket mode is $(stat -c %a "$socket"), not 660" >&2; exit 1; }
curl -sS --fail --unix-socket "$socket" http://localhost/health
echo
curl -sS --fail --unix-socket "$socket" http://localhost/v1/chat/completions -H 'Content-Type: application/json' \
  -d '{"model":"smollm2","max_tokens":16,"messages":[{"role":"user","content":"Say hello."}]}' | grep -q '"chat.completion"'
echo "chat completion over the packaged socket: ok"

echo "== the packaged C example against the packaged headers, tailor.pc and libtailor.so"
flags=$(PKG_CONFIG_SYSROOT_DIR="$root" PKG_CONFIG_LIBDIR="$root/usr/lib/x86_64-linux-gnu/pkgconfig" \
  pkg-config --cflags --libs tailor)
cc -std=c11 -Wall -Wextra -Werror -o "$root/tmp/rag_chat" "$root/usr/share/doc/tailor/examples/rag_chat.c" $flags
LD_LIBRARY_PATH="$root/usr/lib/x86_64-linux-gnu" "$root/tmp/rag_chat" "$socket" smollm2 minilm | tail -1 | grep -qx OK
echo "C example: ok"

kill -TERM "$daemon"
wait "$daemon"
echo "tailord stopped cleanly on SIGTERM"
grep -q "stopped" "$root/tmp/tailord.out"
[ ! -e "$socket" ] || { echo "tailord left its socket behind" >&2; exit 1; }
echo "package checks passed"
