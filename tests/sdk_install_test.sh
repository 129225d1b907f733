#!/usr/bin/env bash
# The SDK as a third party uses it: install the project, build sdk/examples/example_backend out of tree
# against the installed LlmSdk package only, drop the plugin in, and generate text through it.
# Usage: sdk_install_test.sh BUILD_DIR SOURCE_DIR.
set -euo pipefail
build=$1 src=$2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
prefix="$tmp/prefix"
step() { echo "== $*"; }

step "cmake --install into $prefix"
cmake --install "$build" --prefix "$prefix" >"$tmp/install.log"
for f in bin/llm-runner lib/llm-runner/plugins/mha_cpu.so include/llm/attention_backend.h; do
  [ -e "$prefix/$f" ] || { echo "FAIL: $f not installed"; exit 1; }
done
config=$(find "$prefix" -name LlmSdkConfig.cmake | head -1)
[ -n "$config" ] || { echo "FAIL: no LlmSdkConfig.cmake installed"; exit 1; }
[ "$(ls "$prefix/include")" = "llm" ] || { echo "FAIL: headers beyond the SDK installed: $(ls "$prefix/include")"; exit 1; }

step "the installed runner finds its plugins without being told"
"$prefix/bin/llm-runner" backends >"$tmp/backends.txt" 2>&1
grep -q "$prefix/lib/llm-runner/plugins/mha_cpu.so" "$tmp/backends.txt" || { cat "$tmp/backends.txt"; exit 1; }

step "example backend built out of tree against the installed SDK only"
cmake -S "$src/sdk/examples/example_backend" -B "$tmp/example" -DCMAKE_PREFIX_PATH="$prefix" \
  -DCMAKE_C_FLAGS="-Wall -Wextra -Werror" >"$tmp/example.log"
cmake --build "$tmp/example" >>"$tmp/example.log" || { cat "$tmp/example.log"; exit 1; }
grep -q "$prefix/include" "$tmp/example/compile_commands.json" 2>/dev/null ||
  grep -rq -- "-I$prefix/include\|-isystem $prefix/include" "$tmp/example" ||
  { echo "FAIL: the example did not compile against the installed headers"; exit 1; }
cmake --install "$tmp/example" >>"$tmp/example.log"  # into the runner's default plugin directory
[ -f "$prefix/lib/llm-runner/plugins/example_cpu.so" ] || { echo "FAIL: example_cpu.so not installed"; exit 1; }

models="${LLM_MODELS_DIR:-$src/../shared/models}"
if [ ! -f "$models/stories260K.bin" ] || [ ! -f "$models/tok512.bin" ]; then
  echo "SKIP (generation only): stories260K.bin / tok512.bin not found in $models"; exit 0
fi
export LLM_MODELS_DIR="$models"
step "generation through the dropped-in backend"
"$prefix/bin/llm-runner" --config "$src/configs/stories260K.yaml" --backends example_cpu --max-tokens 30 \
  >"$tmp/out" 2>"$tmp/err" || { cat "$tmp/err"; exit 1; }
grep -qF "Once upon a time, there was a little girl named Lily. She loved to play outside in the park." "$tmp/out" ||
  { echo "FAIL: unexpected text:"; cat "$tmp/out"; exit 1; }
grep -qF "attention: example_cpu" "$tmp/err" || { echo "FAIL: example_cpu did not serve:"; tail -3 "$tmp/err"; exit 1; }
echo "ok: installed SDK, out-of-tree backend, generation through it"
