#!/usr/bin/env bash
# Compiles the runtime's PDL kernels for sm_90 and checks their SASS with check.py: no activation load, store
# or atomic may come before griddepcontrol.wait (only streamed weight loads may). Needs nvcc only (no GPU, no
# disassembler).   bash tools/pdl_check/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
nvcc=${NVCC:-${CUDA_HOME:-/usr/local/cuda}/bin/nvcc}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
flags=(-O3 -DNDEBUG -std=c++17 -arch=sm_90 -cubin -I"$root/runtime" -I"$root/runtime/cuda" -I"$root/sdk/include")
"$nvcc" "${flags[@]}" -o "$work/calibrate.cubin" "$here/calibrate.cu"
cubins=()
for f in gemv_tc gemv cuda_kernels; do
  "$nvcc" "${flags[@]}" -DLLM_HAVE_CUDA=1 -o "$work/$f.cubin" "$root/runtime/cuda/$f.cu"
  cubins+=("$work/$f.cubin")
done
python3 "$here/check.py" "$work/calibrate.cubin" "${cubins[@]}"
