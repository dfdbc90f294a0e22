#!/usr/bin/env bash
# The main job: `memlayers demo` on this machine's GPU (or lavapipe): a dense model and a
# memory model with the same FLOPs per token learn the same facts; recall of each, with
# results.json, recall.png and both models in demo-out/. Extra arguments go to the demo
# (e.g. `scripts/run.sh --sweep`, `scripts/run.sh --facts my.tsv`).
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo run --release -- demo "$@"
