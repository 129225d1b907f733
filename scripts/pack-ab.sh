#!/usr/bin/env bash
# Packs one build of a commit for `gpu-suite.sh builds` (builds measured against each other in one GPU call):
# checks REV out, builds gpu_decode_bench and the flash_cuda plugin, and keeps them in .device/ab/NAME/, then
# returns to the branch it started on and rebuilds it. Run scripts/pack-device.sh first; commit experiments
# (on a branch) first too: the working tree must be clean.
#   bash scripts/pack-ab.sh NAME [REV]      (REV: default HEAD)
set -euo pipefail
cd "$(dirname "$0")/.."
name=${1:?usage: pack-ab.sh NAME [REV]}
rev=${2:-HEAD}
[[ "$name" =~ ^[A-Za-z0-9_.-]+$ ]] || { echo "pack-ab.sh: NAME '$name' must be letters, digits, '.', '_' or '-'" >&2; exit 1; }
[ -d .device ] || { echo "pack-ab.sh: no .device/ here; run scripts/pack-device.sh first" >&2; exit 1; }
git diff --quiet && git diff --cached --quiet ||
  { echo "pack-ab.sh: the working tree has changes; commit them (on a branch) or stash them first" >&2; exit 1; }
start=$(git symbolic-ref --short -q HEAD || git rev-parse HEAD)
git rev-parse --verify -q "$rev^{commit}" >/dev/null || { echo "pack-ab.sh: no commit '$rev'" >&2; exit 1; }
trap 'git checkout -q "$start" && cmake --build --preset release >/dev/null' EXIT
git checkout -q "$rev"
cmake --build --preset release --target gpu_decode_bench flash_cuda
mkdir -p ".device/ab/$name"
cp build/bin/gpu_decode_bench build/plugins/flash_cuda.so ".device/ab/$name/"
xz -f -T2 ".device/ab/$name/gpu_decode_bench"
git rev-parse --short "$rev" >".device/ab/$name/commit"
echo "packed .device/ab/$name ($(cat ".device/ab/$name/commit"))"
