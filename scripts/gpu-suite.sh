#!/usr/bin/env bash
# The whole GPU test suite and the GPU benchmarks in one call, on the GPU machine, from the repository
# root with .device/ (made by scripts/pack-device.sh) beside it. Logs go to $OUT (default /tmp/gpu-out).
#   bash scripts/gpu-suite.sh [tests|bench|all]
set -uo pipefail
cd "$(dirname "$0")/.."
what=${1:-all}
root=$(pwd)
out=${OUT:-/tmp/gpu-out}
mkdir -p "$out"
# The binaries carry the paths they were built at (plugin dirs, test data): recreate them as links.
[ -e build ] || ln -s .device build
src=$(cat .device/source_dir)
if [ "$src" != "$root" ] && [ ! -e "$src" ]; then mkdir -p "$(dirname "$src")" && ln -s "$root" "$src"; fi
mkdir -p "$src/../shared" && { [ -e "$src/../shared/models" ] || ln -s "$root/.device/models" "$src/../shared/models"; }
export LD_LIBRARY_PATH="$root/.device/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export LLM_MODELS_DIR="$root/.device/models"
status=0
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$out/device.txt"

if [ "$what" = tests ] || [ "$what" = all ]; then
  echo "== unit, GPU and end-to-end tests"
  build/bin/llm_tests --gtest_brief=1 2>&1 | tee "$out/tests.log" | grep -vE "^\[.*\] \[(info|debug)\]" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  echo "== llm-runner checks (CPU)"
  bash tests/cli_test.sh build . 2>&1 | tee "$out/cli.log" | tail -3
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  echo "== llm-runner on the GPU"
  for dtype in bf16 fp32; do
    build/bin/llm-runner --config configs/stories260K.yaml --device cuda --dtype $dtype --max-tokens 120 \
      >"$out/runner_$dtype.txt" 2>"$out/runner_$dtype.err" || status=1
    head -c 300 "$out/runner_$dtype.txt"; echo; tail -1 "$out/runner_$dtype.err"
  done
fi
if [ "$what" = bench ] || [ "$what" = all ]; then
  echo "== GPU decode benchmark (ours)"
  build/bin/gpu_decode_bench ${BENCH_ARGS:-} 2>"$out/gpu_bench.err" | tee "$out/gpu_bench.md" || status=1
  if [ -f benches/torch_decode_bench.py ]; then
    echo "== PyTorch reference, same shapes, same run"
    PYTHONUNBUFFERED=1 python3 benches/torch_decode_bench.py --json "$out/torch_bench.json" ${TORCH_ARGS:-} \
      2>"$out/torch_bench.err" | tee "$out/torch_bench.md" || status=1
  fi
fi
exit $status
