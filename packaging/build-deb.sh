#!/usr/bin/env bash
# Builds target/debian/tailor_VERSION-1_amd64.deb with cargo-deb from the
# release build (`cargo build --release --workspace` first). Prints its path.
set -euo pipefail
cd "$(dirname "$0")/.."
command -v cargo-deb >/dev/null || cargo install cargo-deb --locked --quiet
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
mkdir -p target/packaging
sed -e 's|@PREFIX@|/usr|' -e 's|@LIBDIR@|${prefix}/lib/x86_64-linux-gnu|' \
    -e 's|@INCLUDEDIR@|${prefix}/include|' -e "s|@VERSION@|$version|" \
    packaging/tailor.pc.in > target/packaging/tailor.pc
cargo deb -p tailor-daemon --no-build --quiet
ls -1t target/debian/tailor_*.deb | head -1
