#!/usr/bin/env bash
# The main job: a memory layer on this machine's GPU (or lavapipe), checked against the CPU
# oracle. Extra arguments go to the example's cargo invocation.
cd "$(dirname "$0")/.."
source scripts/env.sh
cargo run --release --example hello_memory "$@"
