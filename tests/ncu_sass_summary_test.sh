#!/usr/bin/env bash
# tools/ncu/sass_summary.py on a trimmed real Nsight Compute source page (decode_kernel's, plus a second
# kernel): totals, shares by opcode and stall reason, kernels kept apart; a file with no source page is a
# clear error. Usage: ncu_sass_summary_test.sh SOURCE_DIR
set -euo pipefail
tool="$1/tools/ncu/sass_summary.py"
out=$(python3 "$tool" "$1/tests/data/ncu/sass_source_page.csv" --top 5)
expect() { grep -qF -- "$1" <<<"$out" || { echo "missing: $1"; echo "$out"; exit 1; }; }
expect "262,144 warp instructions executed, 1,456 warp-stall samples"
expect "| ISETP | 65,536 | 25.0% | 84.5% |"
expect "| LDS | 2,048 | 0.8% | 0.0% |"
expect "| long_sb | 1,217 | 83.6% |"
expect "| 0x7f5cb37db390 | 1,231 | 65,536 | \`ISETP.GT.AND P0, PT, R4, R77, PT\` |"
expect "## second_kernel"
expect "63,488 warp instructions executed, 6 warp-stall samples"
if err=$(python3 "$tool" /dev/null 2>&1); then echo "an empty file was accepted"; exit 1; fi
grep -qF "holds no kernel's source page" <<<"$err" || { echo "unclear error: $err"; exit 1; }
echo "sass_summary: ok"
