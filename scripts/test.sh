#!/usr/bin/env bash
# The test suite: every GPU test on a real wgpu adapter (lavapipe when there is no GPU), the
# WGSL validation, the memory layer and the page's model in headless Chromium's WebGPU
# (wasm-bindgen-test), and the web page end to end (web/: npm test). Installs what it needs.
cd "$(dirname "$0")/.."
source scripts/env.sh
source scripts/web-env.sh
set -o pipefail
log="$(mktemp)"
trap 'rm -f "$log"' EXIT
# Every step runs; the script fails at the end if any did.
status=0
# No import cycles between modules (the library's and the commands').
python3 scripts/module_cycles.py 2>&1 | tee "$log" || status=1
cargo test "$@" 2>&1 | tee -a "$log" || status=1
# wgpu's GL back end (llvmpipe through EGL) as a second native back end, on the tests that
# finish in seconds there. Skipped: the ones that loop over every workgroup-size variant of
# the bag, the product top-k and attention (GL's llvmpipe has no subgroups, so the
# attention_lanes.wgsl comparison would run the rows twice), and the long backward and embedding-gradient
# sweeps (minutes on GL's llvmpipe: docs/kernels.md, "Back ends"), and the two tests of the
# GEMM kernels' timed trial (they compile tile shapes: 20-80 s each there). One test at a
# time: wgpu's GL back end gives up on its context after 6 s, which one compile can hold.
WGPU_BACKEND=gl cargo test --test kernels --test ops --test backward --test optim --test moe \
    --test memory_layer --test plan --test train --test sharded -- --test-threads 1 \
    --skip embedding_bag_matches --skip product_topk_is_exact --skip attention_matches_oracle \
    --skip embedding_grad_matches --skip gpu_backward_matches_oracle --skip gemm_choice \
    --skip attention_lanes_equal_rows \
    --skip a_device_with_the_trial_on 2>&1 | tee -a "$log" || status=1
# A value table sharded over a Vulkan device and a GL device in one process.
WGPU_BACKEND=vulkan,gl cargo test --test sharded -- --ignored 2>&1 | tee -a "$log" || status=1
# The browser tests build the library (and everything else) for wasm32-unknown-unknown:
# nothing native-only can creep into the core unnoticed.
cargo test --release --target wasm32-unknown-unknown -p memlayers-web 2>&1 | tee -a "$log" || status=1
(cd web && npm test) 2>&1 | tee -a "$log" || status=1
# One plain closing line with the totals of every test binary, native and in the browser.
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     /^ok   / { w++ } /^FAIL / { wf++ }
     END { printf "tests: %d passed, %d failed (Rust, native and in the browser); web page checks: %d passed, %d failed\n", p, f, w, wf }' "$log"
exit $status
