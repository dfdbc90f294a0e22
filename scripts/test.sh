#!/usr/bin/env bash
# The test suite: every GPU test on a real wgpu adapter (lavapipe when there is no GPU), the
# WGSL validation, and the wasm32 build of the library.
cd "$(dirname "$0")/.."
source scripts/env.sh
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
cargo test "$@" 2>&1 | tee "$log"
if ! rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
cargo build --lib --target wasm32-unknown-unknown
echo "wasm32-unknown-unknown build of the library: ok"
# One plain closing line with the totals of every test binary.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
