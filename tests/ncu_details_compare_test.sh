#!/usr/bin/env bash
# tools/ncu/details_compare.py on a real Nsight Compute details page (the Hopper prefill's) with a second,
# hand-written launch appended (cuDNN's decode kernel, one section): a column per launch, metrics a launch lacks
# as "-", sections chosen; a file with no launch is a clear error. Usage: ncu_details_compare_test.sh SOURCE_DIR
set -euo pipefail
tool="$1/tools/ncu/details_compare.py"
page="$1/tests/data/ncu/details_page.txt"
out=$(python3 "$tool" "$page")
expect() { grep -qF -- "$1" <<<"$out" || { echo "missing: $1"; echo "$out"; exit 1; }; }
expect "| section | metric | unit | prefill_sm90_kernel<__nv_bfloat16, 64, 1> [132x1x1 / 384x1x1] | cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_64x128x128_4x1x1_kernel0_0 [132x1x1 / 384x1x1] |"
expect "| GPU Speed Of Light Throughput | Duration | us | 357.95 | 145.02 |"
expect "| GPU Speed Of Light Throughput | DRAM Throughput | % | 15.22 | 77.10 |"
expect "| Memory Workload Analysis | L2 Hit Rate | % | 63.91 | - |"
expect "| Launch Statistics | Registers Per Thread | register/thread | 168 | - |"
expect "| Occupancy | Achieved Occupancy | % | 18.58 | - |"
if grep -qF "Source Counters" <<<"$out"; then echo "a section not asked for was printed"; exit 1; fi
out=$(python3 "$tool" "$page" --sections "Source Counters")
expect "| Source Counters | Branch Efficiency | % | 99.89 | - |"
if grep -qF "Duration" <<<"$out"; then echo "--sections did not restrict the rows"; exit 1; fi
if err=$(python3 "$tool" /dev/null 2>&1); then echo "an empty file was accepted"; exit 1; fi
grep -qF "holds no kernel launch's details page" <<<"$err" || { echo "unclear error: $err"; exit 1; }
echo "details_compare: ok"
