#!/usr/bin/env bash
# Runs the tensor-core GEMV kernel (runtime/cuda/gemv_tc.cu) on the CPU, without a GPU: the kernel's own
# source, cut out of the file, compiled by the host compiler with every CUDA thread a fiber (ucontext),
# warp collectives (mma.m16n8k16 with the fragment layouts PTX documents, shuffles) and __syncthreads
# as barriers between fibers. driver.cpp runs each epilogue, bf16 and fp16, 1 to 16 tokens, forced
# splits, odd shapes (also reading and writing the prepared RMSNorm), stories260K's products at every
# token count, against a float64 reference, and flags
# out-of-bounds and misaligned loads, x read before the PDL wait or through the read-only path (__ldg:
# ptxas may hoist such a load above the wait, which no emulation of the source order can see; tools/pdl_check
# checks the SASS), and writes outside the outputs. A development check of the kernel's indexing
# (about a minute on 2 cores), not a test of the GPU: timing, memory ordering and the real mma are not modelled.
#   bash tools/gemv_emulator/run.sh
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
python3 - "$root/runtime/cuda/gemv_tc.cu" "$work/emu_kernel.h" <<'PY'
import sys
src = open(sys.argv[1]).read()
body = src[src.index('namespace llm::cuda {'):src.index('using Kernel =')]
body = body.replace('extern __shared__ float partial[];', 'float* partial = emu::g_block->shared.data();')
open(sys.argv[2], 'w').write('#pragma once\n' + body + '}  // namespace\n}  // namespace llm::cuda\n')
PY
cuda=${CUDA_HOME:-/usr/local/cuda}
g++ -std=c++17 -O1 -w -I"$work" -I"$here" -I"$cuda/include" -I"$root/runtime" -I"$root/runtime/cuda" \
  -I"$root/sdk/include" "$here/driver.cpp" -o "$work/driver"
"$work/driver" | tail -${TAIL:-5}
