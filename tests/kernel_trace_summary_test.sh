#!/usr/bin/env bash
# tools/kernel_trace/summarize.py on a hand-made trace: three replays of a three-kernel graph (the second
# kernel starting before the first ends, as under PDL), a graph of another size and a kernel outside any
# graph, which are left out; each kernel's time on the critical path, its own run time, the step and the gap
# between steps; names without parameters or anonymous namespaces; a trace without graph kernels is a clear
# error. With --dram, hand-made DRAM samples (dram_sampler.cpp's CSV: 4 TB/s while the product is on the
# critical path, 1 TB/s under decode, none between steps, and a long first sample that is left out): the
# bytes and GB/s each kernel's time on the path saw, the clocks' offset found at 0, a layer's profile, the
# launches outside the sampled window left out, and a missing DRAM file a clear error. Usage:
# kernel_trace_summary_test.sh SOURCE_DIR
set -euo pipefail
tool="$1/tools/kernel_trace/summarize.py"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
gemv='void llm::cuda::(anonymous namespace)::gemv_kernel<__nv_bfloat16, 1, 8, (llm::cuda::GemvEpilogue)2, false>(llm::cuda::GemvArgs)'
{
  echo "start_ns,end_ns,correlation,graph,graph_node,stream,grid,block,name"
  echo "0,900,5,0,0,7,1,256,\"void warm_up(int)\""
  echo "100,200,6,2,1,7,1,256,\"void other_graph(int)\""
  for k in 1 2 3; do
    b=$((k * 100000))
    echo "$((b + 1000)),$((b + 5000)),$((10 + k)),1,2,7,48,256,\"$gemv\""  # (rows out of order: sorted by start)
    echo "$b,$((b + 2000)),$((10 + k)),1,1,7,1,256,\"void embed(int const*)\""
    echo "$((b + 5500)),$((b + 8000)),$((10 + k)),1,3,7,36,128,\"void flash_cuda::(anonymous namespace)::decode_kernel<__nv_bfloat16, 64, true>(flash_cuda::Params)\""
  done
} >"$work/trace.csv"
out=$(python3 "$tool" "$work/trace.csv")
expect() { grep -qF -- "$1" <<<"$out" || { echo "missing: $1"; echo "$out"; exit 1; }; }
expect "3 steps of 3 kernels (of 4 graph launches); step from first start to last end: median 8.0 us; gap to the next step's first kernel: median 92.0 us"
expect "| embed | 1 x 256 | 1 | 2.0 | 25% | 2.00 | 2.00 | 0.00 |"
expect "| llm::cuda::gemv_kernel<__nv_bfloat16, 1, 8, AddF32, false> | 48 x 256 | 1 | 3.0 |"
expect "| 3.00 | 4.00 | -1.00 |"
expect "| flash_cuda::decode_kernel<__nv_bfloat16, 64, true> | 36 x 128 | 1 | 3.0 |"
expect "| 3.00 | 2.50 | 0.50 |"
if grep -qF "warm_up" <<<"$out" || grep -qF "other_graph" <<<"$out"; then echo "a kernel outside the step was counted"; exit 1; fi
head -2 "$work/trace.csv" >"$work/none.csv"
sed -i 's/,6,2,1,/,6,0,1,/' "$work/none.csv"
if err=$(python3 "$tool" "$work/none.csv" 2>&1); then echo "a trace without graph kernels was accepted"; exit 1; fi
grep -qF "no graph-launched kernels" <<<"$err" || { echo "unclear error: $err"; exit 1; }
{
  echo "start_ns,end_ns,dram__bytes_read.sum,dram__bytes_write.sum"
  echo "0,90000,999999999,0"  # from set-up to the start: left out
  for ((t = 90000; t < 320000; t += 1000)); do
    at=$((t % 100000))
    if ((t < 100000 || at >= 8000)); then bytes=0; elif ((at >= 5000)); then bytes=1000000; elif ((at >= 2000)); then bytes=4000000; else bytes=0; fi
    echo "$t,$((t + 1000)),$((bytes * 3 / 4)),$((bytes / 4))"
  done
} >"$work/dram.csv"
out=$(python3 "$tool" "$work/trace.csv" --dram "$work/dram.csv" --bandwidth 4000 --anchor "AddF32|decode")
expect "3 steps of 3 kernels (of 3 graph launches)"
expect "the sample clock offset by +0.00 us"
expect "against 0.0% at 0). A step moves 0.015 GB in 8.0 us: 1875 GB/s (47%)."
expect "| embed | 2.00 | 0 (0%) | 0.00 |"
expect "AddF32, false> | 3.00 | 4000 (100%) | 12.00 |"
expect "decode_kernel<__nv_bfloat16, 64, true> | 3.00 | 1000 (25%) | 3.00 |"
expect "A layer, 3 of them"
expect "| -2.0 | 4000 | #################### |  |"
expect "| 0.0 | 1000 | ##### |  |"
sed -n "1p;3,4p" "$work/dram.csv" >"$work/short.csv"  # 90-92 us: before the first step
if err=$(python3 "$tool" "$work/trace.csv" --dram "$work/short.csv" 2>&1); then echo "samples outside every launch were accepted"; exit 1; fi
grep -qF "no graph launch lies inside the DRAM samples" <<<"$err" || { echo "unclear error: $err"; exit 1; }
# (dram_sampler writes no file where it could not sample: its reason is on stderr)
if err=$(python3 "$tool" "$work/trace.csv" --dram "$work/missing.csv" 2>&1); then echo "a missing DRAM file was accepted"; exit 1; fi
grep -qF "missing.csv: cannot read dram_sampler's CSV" <<<"$err" || { echo "unclear error: $err"; exit 1; }
echo "kernel_trace summary: ok"
