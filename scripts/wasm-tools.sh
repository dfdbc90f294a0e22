#!/usr/bin/env bash
# The wasm toolchain the web build and the browser tests need, installed when missing: the
# wasm32-unknown-unknown target, and wasm-bindgen-cli at exactly the version of the
# wasm-bindgen crate in Cargo.lock (the CLI and the crate must match).
set -euo pipefail
cd "$(dirname "$0")/.."
if ! rustup target list --installed 2>/dev/null | grep -q wasm32-unknown-unknown; then
    rustup target add wasm32-unknown-unknown
fi
want="$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)"
have="$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }' || true)"
if [ "$have" != "$want" ]; then
    echo "installing wasm-bindgen-cli $want (found: ${have:-none})" >&2
    cargo install --force wasm-bindgen-cli --version "=$want"
fi
