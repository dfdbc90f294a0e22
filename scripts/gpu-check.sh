#!/usr/bin/env bash
# One command for a GPU machine without Rust (an NVIDIA H100/H200 with CUDA, PyTorch and
# Triton, no network): the GPU test subset, `memlayers bench` (small and paper shapes, f32 and
# f16 values), `bench --train`, the reference layer in PyTorch (measured by `bench` itself
# when torch imports) and Meta's Triton embedding bag, on the same GPU in one run; one JSON
# of every figure, and the ratios printed last.
#
#   scripts/gpu-check.sh bundle [DIR] [--meta-repo PATH]   here, with Rust: build DIR
#       (default gpu-bundle/): stripped release binaries of memlayers and of the GPU tests,
#       the Vulkan loader packages, the scripts; compressed to DIR.tar.xz (well under 64 MiB).
#       --meta-repo copies Meta's Triton bag (lingua/product_key/xformer_embeddingbag.py,
#       CC-BY-NC, with its licence) from a checkout of facebookresearch/memory into the
#       bundle: it is carried, never committed.
#   scripts/gpu-check.sh run [DIR|DIR.tar.xz]   there: everything above; figures and logs to
#       $OUT (or gpu-check-out/): gpu-check.json, the logs. On a machine without CUDA the
#       CUDA parts are skipped and the output says so (that is how it is tested here);
#       GPU_CHECK_QUICK=1 runs the small bench shapes only. Every stage runs under a time
#       limit inside GPU_CHECK_SECONDS (default 480) so that one that hangs or runs long
#       costs its own figures, not the others': the tests share 150 s (90 s a binary), the
#       bench 180 s, bench --train 90 s, the Triton bag 60 s, each also cut to what is left
#       of the whole less what the stages after it are owed; a stage stopped by its limit
#       says so in its log and in the summary.
set -uo pipefail
mode=${1:-run}
shift || true
root="$(cd "$(dirname "$0")/.." && pwd)"
tests=(kernels ops backward memory_layer model optim plan moe teach sharded)

bundle() {
  local dir=${1:-gpu-bundle} meta=""
  shift || true
  while [ $# -gt 0 ]; do
    case $1 in --meta-repo) meta=$2; shift 2 ;; *) echo "unknown option $1" >&2; exit 2 ;; esac
  done
  cd "$root" || exit 1
  rm -rf "$dir" && mkdir -p "$dir/bin" "$dir/tests" "$dir/debs" "$dir/scripts"
  cargo build --release --bin memlayers || exit 1
  cp target/release/memlayers "$dir/bin/"
  local args=()
  for t in "${tests[@]}"; do args+=(--test "$t"); done
  cargo test --release --no-run "${args[@]}" --message-format=json 2>/dev/null |
    python3 -c '
import json, sys, shutil
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and "test" in m["target"]["kind"]:
        shutil.copy(m["executable"], sys.argv[1] + "/" + m["target"]["name"])
' "$dir/tests" || exit 1
  strip "$dir"/bin/* "$dir"/tests/*
  cp scripts/gpu-check.sh scripts/gpu_check_summary.py scripts/triton_bag_bench.py "$dir/scripts/"
  # The Vulkan loader (the device machines have the NVIDIA driver, not always the loader).
  (cd "$dir/debs" && apt-get download libvulkan1 >/dev/null 2>&1) ||
    echo "note: could not download libvulkan1 here; the run uses the machine's loader" >&2
  if [ -n "$meta" ]; then
    mkdir -p "$dir/meta/lingua/product_key"
    cp "$meta/lingua/product_key/xformer_embeddingbag.py" "$dir/meta/lingua/product_key/" || exit 1
    cp "$meta/LICENSE" "$dir/meta/" 2>/dev/null || true
  fi
  tar -C "$(dirname "$dir")" -cJf "$dir.tar.xz" "$(basename "$dir")"
  echo "bundle: $dir ($(du -sh "$dir" | cut -f1)), $dir.tar.xz ($(du -h "$dir.tar.xz" | cut -f1))"
}

run() {
  local src=${1:-gpu-bundle}
  if [ -f "$src" ] && [[ $src == *.tar.xz ]]; then
    tar -C /tmp -xJf "$src" && src=/tmp/$(basename "$src" .tar.xz)
  fi
  local dir
  dir=$(cd "$src" && pwd) || { echo "no bundle at $src" >&2; exit 1; }
  local out=${OUT:-$PWD/gpu-check-out}
  mkdir -p "$out"
  if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1 && [ "$(id -u)" = 0 ]; then
    for f in "$dir"/debs/*.deb; do [ -f "$f" ] && dpkg -x "$f" /; done
    ldconfig
  fi
  local icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
  [ -f "$icd" ] && export VK_DRIVER_FILES=$icd
  export WGPU_BACKEND=${WGPU_BACKEND:-vulkan} PYTHONUNBUFFERED=1
  # The GEMM kernels' timed trial runs afresh and its choice comes back with the figures.
  export MEMLAYERS_CACHE_DIR=$out
  local ml="$dir/bin/memlayers" started=$SECONDS
  local deadline=$((SECONDS + ${GPU_CHECK_SECONDS:-480}))
  # limited CAP OWED LOG CMD...: CMD with its output appended to LOG, stopped after CAP
  # seconds or when only OWED seconds (the later stages') are left of the whole.
  limited() {
    local cap=$1 owed=$2 log=$3 limit
    shift 3
    limit=$((deadline - SECONDS - owed))
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt 5 ]; then
      echo "gpu-check: not run, no time left: $*" | tee -a "$log"
      return
    fi
    timeout -k 10 "$limit" "$@" >> "$log" 2>&1
    [ $? = 124 ] && echo "gpu-check: stopped at its limit of $limit s: $*" | tee -a "$log"
  }
  "$ml" info > "$out/info.txt" 2>&1
  echo "== adapter"; grep -i -m3 "pick\|adapter" "$out/info.txt"
  : > "$out/tests.txt"
  local tests_end=$((SECONDS + 150))
  for t in "$dir"/tests/*; do
    echo "== test $(basename "$t")" | tee -a "$out/tests.txt"
    local cap=$((tests_end - SECONDS)) before
    [ "$cap" -gt 90 ] && cap=90
    before=$(wc -l < "$out/tests.txt")
    limited "$cap" 330 "$out/tests.txt" "$t" --test-threads=1
    tail -n +$((before + 1)) "$out/tests.txt" | grep "^test result" | tail -1
  done
  local quick=()
  [ "${GPU_CHECK_QUICK:-0}" = 1 ] && quick=(--quick)
  echo "== bench ${quick[*]}"
  : > "$out/bench.txt"
  limited 180 150 "$out/bench.txt" "$ml" bench "${quick[@]}"
  echo "== bench --train"
  : > "$out/bench-train.txt"
  limited 90 60 "$out/bench-train.txt" "$ml" bench --train
  echo "== Meta's Triton embedding bag"
  : > "$out/triton-bag.txt"
  limited 60 0 "$out/triton-bag.txt" python3 "$dir/scripts/triton_bag_bench.py" "$dir/meta"
  tail -3 "$out/triton-bag.txt"
  python3 "$dir/scripts/gpu_check_summary.py" "$out" $((SECONDS - started))
}

case $mode in
  bundle) bundle "$@" ;;
  run) run "$@" ;;
  *) echo "usage: $0 bundle [DIR] [--meta-repo PATH] | run [DIR|DIR.tar.xz]" >&2; exit 2 ;;
esac
