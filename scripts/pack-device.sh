#!/usr/bin/env bash
# Builds (Release, with CUDA) and packs what the GPU machine needs into .device/ (git-ignored): binaries,
# plugins, test plugins, the non-system libraries they load, and the models. Then run, on that machine,
# `bash scripts/gpu-suite.sh` with .device carried along (see docs/GPU.md).
set -euo pipefail
cd "$(dirname "$0")/.."
models="${LLM_MODELS_DIR:-../shared/models}"
cmake --preset release >/dev/null
cmake --build --preset release
rm -rf .device
../shared/tools/device-pack .device build >/dev/null
# CUPTI's PM sampling (tools/kernel_trace/dram_sampler.cpp) loads the profiler's host and target libraries
# at run time, so device-pack, which follows what the binaries link, does not see them.
for lib in libnvperf_host.so libnvperf_target.so; do
  for dir in /usr/local/cuda/lib64 /usr/local/cuda/extras/CUPTI/lib64; do
    [ -f "$dir/$lib" ] && { cp "$dir/$lib" .device/lib/; break; }
  done
done
mkdir -p .device/models
for m in stories260K.bin stories260K_q80.bin tok512.bin tok512.model llama2-tokenizer.bin llama2-tokenizer.model; do
  cp "$models/$m" .device/models/
done
pwd >.device/source_dir  # the tests' compiled-in paths point here; gpu-suite.sh recreates them
du -sh .device
