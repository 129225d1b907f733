#!/usr/bin/env bash
# The whole GPU test suite and the GPU benchmarks in one call, on the GPU machine, from the repository
# root with .device/ (made by scripts/pack-device.sh) beside it. Logs go to $OUT (default /tmp/gpu-out).
#   bash scripts/gpu-suite.sh [tests|bench|attention|gemv|profile|trace|dram|sass|fixtures|tp|runs|ab|builds|all]
#   (bench: end to end; attention: the kernels beside SDPA, joined with the issue's bars; gemv: the
#    decode-step matrix-vector kernels beside cuBLAS, then end-to-end decode at batch 1 and 8 with each
#    kernel; profile: per-kernel times of decode steps, ncu (PROFILE_SHAPE, default tinyllama); trace: where
#    a replayed decode step's time goes, kernel by kernel as they overlap, timed by CUPTI (TRACE_SHAPES,
#    TRACE_BATCHES, tools/kernel_trace); dram: the same with what the DRAM moved under each kernel and
#    across a layer, sampled by the GPU's performance monitors (DRAM_SHAPES, DRAM_BATCHES, DRAM_NS,
#    DRAM_LAUNCHES); runs: greedy decode in runs of steps, its tests and its speed at each run length
#    (RUNS_LENGTHS); ab: end-to-end decode under environment switches, alternating (AB_VARIANTS, AB_ROUNDS,
#    AB_BATCHES); builds: the same against the builds scripts/pack-ab.sh packed into .device/ab/ (each its
#    gpu_decode_bench and flash_cuda plugin, under each AB_VARIANTS); sass: one
#    kernel's instructions and stalls by SASS line, ncu's source page summarised by tools/ncu/sass_summary.py,
#    with its details page and every raw metric (sass_raw.csv)
#    (SASS_KERNEL regex, SASS_SKIP launches, SASS_NCU_ARGS more ncu options, SASS_CMD the program:
#    default flash_cuda decode at batch 32, 4K keys);
#    tp: tensor parallelism over every GPU present: its tests, llm-runner, and decode of the Llama-2-7B
#    and Llama-2-70B shapes at 1, 2 and 4 GPUs where present; TP_SHAPES overrides the shapes)
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
  build/bin/llm_tests --gtest_brief=1 --gtest_output="xml:$out/tests.xml" 2>&1 | tee "$out/tests.log" |
    grep -vE "^\[.*\] \[(info|debug)\]" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  # Where the suite's time goes (device time is short): the ten slowest tests.
  python3 - "$out/tests.xml" <<'PY' || true
import sys, xml.etree.ElementTree as ET
cases = [(float(c.get("time", 0)), c.get("classname") + "." + c.get("name")) for c in ET.parse(sys.argv[1]).iter("testcase")]
print("slowest tests: " + ", ".join(f"{n} {t:.1f} s" for t, n in sorted(cases, reverse=True)[:10]))
PY
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
    echo "== side by side, with the GPU issue's bars (ahead of PyTorch; batch-1 shares of the floor)"
    python3 benches/compare_decode.py "$out/gpu_bench.md" "$out/torch_bench.md" | tee "$out/bench_compare.md" || status=1
  fi
fi
if [ "$what" = attention ] || [ "$what" = all ]; then
  echo "== attention kernels (ours), then PyTorch SDPA on the same shapes"
  build/bin/attention_bench ${ATTN_ARGS:-} 2>"$out/attention_bench.err" | tee "$out/attention_bench.md" || status=1
  PYTHONUNBUFFERED=1 python3 benches/torch_attention_bench.py ${TORCH_ATTN_ARGS:-} 2>"$out/torch_attention_bench.err" \
    | tee "$out/torch_attention_bench.md" || status=1
  echo "== side by side, with the flash_cuda issue's bars (prefill >= SDPA flash, decode >= SDPA cuDNN)"
  python3 benches/compare_attention.py "$out/attention_bench.md" "$out/torch_attention_bench.md" \
    | tee "$out/attention_compare.md" || status=1
fi
if [ "$what" = gemv ] || [ "$what" = all ]; then
  echo "== decode-step matrix-vector kernels: CUDA cores, tensor cores, cuBLAS (gemv_bench)"
  build/bin/gemv_bench ${GEMV_ARGS:-} 2>"$out/gemv_bench.err" | tee "$out/gemv_bench.md" || status=1
  echo "== decode with each matrix-vector kernel (gpu_decode_bench --products)"
  build/bin/gpu_decode_bench --shapes ${GEMV_SHAPES:-stories110M,tinyllama,llama2-7b} --batches ${GEMV_BATCHES:-1,8,16} \
    --backends flash_cuda,mha_cuda --products cuda_core,tensor_core,cublas --prompt-len 128 --new-tokens 128 \
    --work-dir ${GEMV_WORK_DIR:-/tmp/llm-gpu-bench} 2>"$out/gemv_decode.err" | tee "$out/gemv_decode.md" || status=1
fi
if [ "$what" = fixtures ]; then
  echo "== Hugging Face reference fixtures (transformers models and logits, a tokenizers BPE): tests/data/hf"
  PYTHONUNBUFFERED=1 python3 tools/hf_fixtures.py --out "$out/hf" --spm .device/models/tok512.model || status=1
  tar czf "$out/hf_fixtures.tgz" -C "$out" hf && du -sh "$out/hf_fixtures.tgz"  # unpack into tests/data/
fi
if [ "$what" = tp ] || [ "$what" = all ]; then
  gpus=$(nvidia-smi -L | wc -l)
  echo "== tensor parallelism over $gpus GPU(s) (NCCL_NVLS_ENABLE=${NCCL_NVLS_ENABLE:-unset})"
  nvidia-smi topo -m >"$out/topo.txt" 2>&1
  build/bin/llm_tests --gtest_filter='TensorParallel*' 2>&1 | tee "$out/tp_tests.log" | grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |GPUs|error" | tail -30
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  if [ "$gpus" -ge 2 ]; then
    build/bin/llm-runner --config configs/stories260K.yaml --device cuda --tensor-parallel 2 --max-tokens 60 \
      >"$out/runner_tp2.txt" 2>"$out/runner_tp2.err" || status=1
    head -c 300 "$out/runner_tp2.txt"; echo; grep -E "tensor parallel|error" "$out/runner_tp2.err" | head -5
  fi
  worlds=1; for n in 2 4 8; do [ "$gpus" -ge $n ] && worlds="$worlds,$n"; done
  for shape in ${TP_SHAPES:-llama2-7b llama2-70b}; do
    w=$worlds; [ "$shape" = llama2-70b ] && w=${worlds#1,}  # 70B in bf16 does not fit one GPU
    [ "$shape" = llama2-70b ] && [ "$gpus" -lt 2 ] && continue
    echo "== decode, $shape, GPUs $w"
    build/bin/gpu_decode_bench --shapes $shape --tensor-parallel $w --batches ${TP_BATCHES:-1,8} \
      --backends flash_cuda,mha_cuda --work-dir ${TP_WORK_DIR:-/tmp/llm-gpu-bench} ${TP_ARGS:-} \
      2>>"$out/tp_bench.err" | tee -a "$out/tp_bench.md" || status=1
    if [ "$w" != 1 ] && [[ " ${TP_NCCL_SHAPES-llama2-7b} " == *" $shape "* ]]; then  # the same through NCCL alone
      LLM_ALL_REDUCE=nccl build/bin/gpu_decode_bench --shapes $shape --tensor-parallel ${w#1,} \
        --batches ${TP_BATCHES:-1,8} --backends flash_cuda,mha_cuda --work-dir ${TP_WORK_DIR:-/tmp/llm-gpu-bench} \
        ${TP_ARGS:-} 2>>"$out/tp_bench.err" | grep "NCCL only" | tee -a "$out/tp_bench.md" || status=1
    fi
    rm -f ${TP_WORK_DIR:-/tmp/llm-gpu-bench}/${shape}_random_q80.bin  # the disk holds one 70B file at a time
  done
fi
if [ "$what" = profile ]; then
  shape=${PROFILE_SHAPE:-tinyllama}
  echo "== per-kernel device time over decode steps ($shape shape, batch 1, ncu, clocks left alone)"
  build/bin/make_checkpoint --preset "$shape" --format q80 --out "/tmp/$shape.bin" >/dev/null || status=1
  # Skip the load and the prefill; profile ~2 decode steps' kernels (graph nodes one by one). ncu runs
  # them one at a time (no overlap, no launch gaps) and by default flushes the caches before each.
  ncu --clock-control none --launch-skip ${PROFILE_SKIP:-1200} --launch-count ${PROFILE_COUNT:-400} \
    --metrics gpu__time_duration.sum --csv ${PROFILE_NCU_ARGS:-} \
    build/bin/llm-runner --model "/tmp/$shape.bin" --tokenizer llama2-tokenizer.bin --device cuda --dtype bf16 \
    --prompt "Once upon a time" --max-tokens 40 ${PROFILE_ARGS:-} >"$out/profile_$shape.csv" 2>"$out/profile_$shape.err" \
    || status=1
  python3 - "$out/profile_$shape.csv" <<'PY' | tee "$out/profile_$shape.md"
import csv, sys
from collections import defaultdict
rows = list(csv.reader(line for line in open(sys.argv[1]) if line.startswith('"')))
head = rows[0]
ki, ui, vi = head.index("Kernel Name"), head.index("Metric Unit"), head.index("Metric Value")
scale = {"nsecond": 1e-3, "ns": 1e-3, "usecond": 1.0, "us": 1.0, "msecond": 1e3, "ms": 1e3}
acc = defaultdict(lambda: [0, 0.0])
for r in rows[1:]:
    us = float(r[vi].replace(",", "")) * scale.get(r[ui], 1.0)
    acc[r[ki][:90]][0] += 1
    acc[r[ki][:90]][1] += us
total = sum(v[1] for v in acc.values())
print(f"{sum(v[0] for v in acc.values())} kernels, {total:.1f} us of device time")
print("| kernel | calls | avg us | share |\n|---|---:|---:|---:|")
for name, (n, us) in sorted(acc.items(), key=lambda kv: -kv[1][1])[:20]:
    print(f"| {name} | {n} | {us / n:.2f} | {100 * us / total:.1f}% |")
PY
fi
if [ "$what" = sass ]; then
  kernel=${SASS_KERNEL:-decode_kernel}
  echo "== instructions and stalls by SASS line: $kernel (ncu --set full --import-source yes)"
  # shellcheck disable=SC2086  # SASS_CMD is a command line
  ncu -f --set full --import-source yes -k "regex:$kernel" --launch-skip ${SASS_SKIP:-3} --launch-count 1 -o "$out/sass" \
    ${SASS_NCU_ARGS:-} \
    ${SASS_CMD:-build/bin/attention_bench --what decode --batches 32 --kv-lens 4096 --reps 1} >"$out/sass_run.txt" 2>&1 \
    || status=1
  ncu -i "$out/sass.ncu-rep" --page details >"$out/sass_details.txt" 2>&1 || status=1
  # Every collected metric by name (the L2's sectors by kind, hits and misses, that the details page sums up).
  ncu -i "$out/sass.ncu-rep" --page raw --csv >"$out/sass_raw.csv" 2>&1 || status=1
  ncu -i "$out/sass.ncu-rep" --page source --csv --print-source sass >"$out/sass.csv" 2>&1 || status=1
  python3 tools/ncu/sass_summary.py "$out/sass.csv" | tee "$out/sass.md" || status=1
  rm -f "$out/sass.ncu-rep"  # (large; the CSV and the details page hold what is read)
fi
if [ "$what" = runs ]; then
  # Greedy decode in runs of steps (one CUDA graph a run): its tests, then batch-1 and batch-8 decode with
  # each run length, one after the other in this call (RUNS_LENGTHS, default 1,4,8,1).
  echo "== greedy runs of steps: tests"
  build/bin/llm_tests --gtest_filter='LlamaCuda.*:Generation.*' 2>&1 | tee "$out/runs_tests.log" |
    grep -E "^\[ *(OK|FAILED|SKIPPED|PASSED) |error" | tail -40
  [ "${PIPESTATUS[0]}" -eq 0 ] || status=1
  for n in $(echo "${RUNS_LENGTHS:-1,4,8,1}" | tr , ' '); do
    echo "== decode, runs of $n steps"
    LLM_STEPS_AHEAD=$n build/bin/gpu_decode_bench --backends flash_cuda --batches ${RUNS_BATCHES:-1,8} \
      --work-dir ${RUNS_WORK_DIR:-/tmp/llm-gpu-bench} 2>>"$out/runs_bench.err" | tee -a "$out/runs_bench.md" || status=1
  done
fi
# End-to-end decode as the A/B modes (ab, builds) run it, alike for every variant: ab_decode BENCH LOG
# VARIANT (NAME=VALUE[,NAME=VALUE...], "-" for none) appends to $out/LOG.md (stderr to LOG.err).
ab_decode() {
  local bench=$1 log=$2 vars=()
  [ "$3" = - ] || IFS=, read -r -a vars <<<"$3"
  env "${vars[@]}" "$bench" --backends flash_cuda --batches ${AB_BATCHES:-1,8} --work-dir ${AB_WORK_DIR:-/tmp/llm-gpu-bench} \
    ${AB_ARGS:-} 2>>"$out/$log.err" | tee -a "$out/$log.md"
}
if [ "$what" = ab ]; then
  # Experiments switched by environment variables, end to end in one call: decode under each of AB_VARIANTS
  # (space-separated; a variant is NAME=VALUE[,NAME=VALUE...], "-" for none), alternating, AB_ROUNDS rounds.
  for round in $(seq "${AB_ROUNDS:-2}"); do
    for v in ${AB_VARIANTS:--}; do
      echo "== round $round: $v"
      ab_decode build/bin/gpu_decode_bench ab_bench "$v" || status=1
    done
  done
fi
if [ "$what" = builds ]; then
  # Builds against each other, end to end in one call: each folder of .device/ab/ (scripts/pack-ab.sh) holds
  # a gpu_decode_bench and the flash_cuda plugin built with it, swapped in for its runs; alternating,
  # AB_ROUNDS rounds, at AB_BATCHES, with AB_ARGS, each build under each of AB_VARIANTS (as ab).
  keep="$out/.flash_cuda.so.keep"
  cp build/plugins/flash_cuda.so "$keep"
  for round in $(seq "${AB_ROUNDS:-2}"); do
    for dir in .device/ab/*/; do
      name=$(basename "$dir")
      [ -f "$dir/gpu_decode_bench.xz" ] && xz -d -f "$dir/gpu_decode_bench.xz" && chmod +x "$dir/gpu_decode_bench"
      # The bench finds its plugins beside its own folder (bin/../plugins): it runs from build/bin.
      cp "$dir/gpu_decode_bench" build/bin/gpu_decode_bench.ab
      cp "$dir/flash_cuda.so" build/plugins/flash_cuda.so
      for v in ${AB_VARIANTS:--}; do
        echo "== round $round: $name ($(cat "$dir/commit" 2>/dev/null)) $v" | tee -a "$out/builds_bench.md"
        ab_decode build/bin/gpu_decode_bench.ab builds_bench "$v" || status=1
      done
      cp "$keep" build/plugins/flash_cuda.so
    done
  done
  rm -f "$keep" build/bin/gpu_decode_bench.ab
fi
if [ "$what" = trace ]; then
  # Every kernel of the replayed decode steps timed as it ran (CUPTI; not serialised as under ncu), each
  # kernel's share of the step on the critical path. Tracing itself slows a step by up to 15%.
  for shape in $(echo "${TRACE_SHAPES:-stories110M,tinyllama,llama2-7b}" | tr , ' '); do
    for batch in $(echo "${TRACE_BATCHES:-1}" | tr , ' '); do
      echo "== decode step kernels: $shape, batch $batch"
      KERNEL_TRACE_OUT="$out/trace_${shape}_b$batch.csv" LD_PRELOAD="$root/build/lib/libkernel_trace.so" \
        build/bin/gpu_decode_bench --backends "${TRACE_BACKENDS:-flash_cuda}" --shapes "$shape" --batches "$batch" \
        --new-tokens 64 >"$out/trace_${shape}_b$batch.log" 2>&1 || status=1
      python3 tools/kernel_trace/summarize.py "$out/trace_${shape}_b$batch.csv" --steps 40 |
        tee "$out/trace_${shape}_b$batch.md" || status=1
    done
  done
fi
if [ "$what" = dram ]; then
  # The trace above with the DRAM's bytes sampled every DRAM_NS ns for DRAM_LAUNCHES graph launches from
  # the 384th (tools/kernel_trace/dram_sampler.cpp). On the H200 the window landed among the single steps
  # the bench replays back to back (2026-12-03); its first KERNEL_TRACE_DRAM_SAMPLES (20,000) samples are kept.
  for shape in $(echo "${DRAM_SHAPES:-tinyllama}" | tr , ' '); do
    for batch in $(echo "${DRAM_BATCHES:-1}" | tr , ' '); do
      echo "== DRAM under the decode step's kernels: $shape, batch $batch"
      base="$out/dram_${shape}_b$batch"
      KERNEL_TRACE_OUT="$base.trace.csv" KERNEL_TRACE_DRAM_OUT="$base.csv" KERNEL_TRACE_DRAM_NS="${DRAM_NS:-1000}" \
        KERNEL_TRACE_DRAM_FROM=384 KERNEL_TRACE_DRAM_LAUNCHES="${DRAM_LAUNCHES:-2}" LD_PRELOAD="$root/build/lib/libkernel_trace.so" \
        build/bin/gpu_decode_bench --backends "${TRACE_BACKENDS:-flash_cuda}" --shapes "$shape" --batches "$batch" \
        --new-tokens 256 >"$base.log" 2>&1 || status=1
      grep -E "dram_sampler|kernel_trace" "$base.log"
      bw=$(sed -n 's/.*copy bandwidth \([0-9]*\) GB.*/\1/p' "$base.log" | head -1)
      python3 tools/kernel_trace/summarize.py "$base.trace.csv" --steps 60 --dram "$base.csv" ${bw:+--bandwidth "$bw"} |
        tee "$base.md" || status=1
    done
  done
fi
exit $status
