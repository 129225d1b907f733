#!/usr/bin/env bash
# llm-runner as a user runs it: output streams, exit codes, error messages, the backends listing.
# Usage: cli_test.sh BUILD_DIR SOURCE_DIR. Exits 77 (CTest: skipped) when the models are absent.
set -uo pipefail
build=$1 src=$2
runner="$build/bin/llm-runner"
models="${LLM_MODELS_DIR:-$src/../shared/models}"
if [ ! -f "$models/stories260K.bin" ] || [ ! -f "$models/tok512.bin" ]; then
  echo "SKIP: stories260K.bin / tok512.bin not found in $models (set LLM_MODELS_DIR)"; exit 77
fi
export LLM_MODELS_DIR="$models"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
failures=0 passed=0
check() {  # check NAME COND...: runs COND in a subshell, counts the result
  local name=$1; shift
  if ( "$@" ); then passed=$((passed + 1)); echo "ok   $name"; else failures=$((failures + 1)); echo "FAIL $name"; fi
}
capture() { "$@" >"$tmp/out" 2>"$tmp/err"; echo $? >"$tmp/rc"; }  # capture PROGRAM ARGS...: out, err, rc
run() { capture "$runner" "$@"; }
rc() { [ "$(cat "$tmp/rc")" = "$1" ]; }
out_has() { grep -qF -- "$1" "$tmp/out"; }
err_has() { grep -qF -- "$1" "$tmp/err"; }

run --version
check "--version names the ABI" eval 'rc 0 && out_has "plugin ABI 1.2"'
run --help
check "--help lists the overrides" eval 'rc 0 && out_has "--max-tokens" && out_has "--backends" && out_has "backends"'

run --config "$src/configs/stories260K.yaml" --max-tokens 40
check "default config: known greedy text on stdout" eval 'rc 0 && out_has "Once upon a time, there was a little girl named Lily. She loved to play outside in the park."'
check "stats line on stderr with the decode figure" eval 'grep -qE "decode [0-9.]+ tok/s" "$tmp/err" && err_has "attention: mha_cpu"'
check "logs go to stderr, not stdout" eval '! grep -q "\[info\]" "$tmp/out"'

run --config "$src/configs/stories260K_q80.yaml" --max-tokens 20
check "int8 config runs" eval 'rc 0 && out_has "Once upon a time, there was a little girl"'

run --config "$src/configs/stories260K.yaml" --max-tokens 30 --temperature 0.8 --top-k 20 --top-p 0.9 --seed 7
cp "$tmp/out" "$tmp/sampled1"
run --config "$src/configs/stories260K.yaml" --max-tokens 30 --temperature 0.8 --top-k 20 --top-p 0.9 --seed 7
check "seeded sampling is reproducible" cmp -s "$tmp/out" "$tmp/sampled1"

printf 'model:\n  path: stories260K.bin\n  tokenizer: tok512.bin\ngeneration:\n  temprature: 0.5\n' >"$tmp/typo.yaml"
run --config "$tmp/typo.yaml"
check "unknown config key names the key" eval 'rc 1 && err_has "unknown key '"'"'generation.temprature'"'"'"'

printf 'generation:\n  max_tokens: lots\n' >"$tmp/type.yaml"
run --config "$tmp/type.yaml"
check "wrong type names key and expected form" eval 'rc 1 && err_has "'"'"'generation.max_tokens'"'"' must be an integer >= 1, got '"'"'lots'"'"'"'

run --config "$src/configs/stories260K.yaml" --model /nonexistent/model.bin
check "missing model names the file" eval 'rc 1 && err_has "/nonexistent/model.bin"'

head -c 1000 "$models/stories260K.bin" >"$tmp/truncated.bin"
run --config "$src/configs/stories260K.yaml" --model "$tmp/truncated.bin"
check "truncated checkpoint is an error naming it" eval 'rc 1 && err_has "truncated.bin" && err_has "truncated"'

run --config "$src/configs/stories260K.yaml" --backends flash_cuda,mha_cuda
check "no usable backend lists candidates and reasons" eval 'rc 1 && err_has "no usable attention backend" && err_has "mha_cpu.so): loaded, but not named in backends.order"'

run --config "$src/configs/stories260K.yaml" --prompt "$(printf 'word %.0s' $(seq 1 600))" --max-tokens 5
check "prompt longer than the context is a clear error" eval 'rc 1 && err_has "but the model'"'"'s context holds 512"'

printf 'Once upon a time\nThe little dog\n\nTom had a toy car. He\n' >"$tmp/prompts.txt"
run --config "$src/configs/stories260K.yaml" --prompts "$tmp/prompts.txt" --max-tokens 30
check "--prompts: outputs apart and in order" eval 'rc 0 && [ "$(grep -c "^--- [0-9] ---$" "$tmp/out")" = 3 ] && grep -A1 "^--- 1 ---" "$tmp/out" | grep -q "^Once upon a time, there was a little girl" && grep -A1 "^--- 3 ---" "$tmp/out" | grep -q "^Tom had a toy car. He"'
check "--prompts: stats count the sequences" err_has "stats: 3 sequence(s)"

run --config "$src/configs/stories260K.yaml" --device cuda --max-tokens 40
if rc 0; then  # a GPU machine: the same story, on the GPU
  check "--device cuda runs on the GPU" eval 'out_has "Once upon a time, there was a little girl named Lily." && err_has "device cuda"'
else
  check "--device cuda without a usable GPU is a clear error" eval 'rc 1 && err_has "device '"'"'cuda'"'"' requested but"'
fi
run --config "$src/configs/stories260K.yaml" --device auto --max-tokens 20
check "--device auto always runs, saying where" eval 'rc 0 && grep -qE "device (cuda|cpu)" "$tmp/err"' 

printf '\n\n' >"$tmp/empty_prompts.txt"
run --config "$src/configs/stories260K.yaml" --prompts "$tmp/empty_prompts.txt"
check "--prompts with no prompts names the file" eval 'rc 1 && err_has "empty_prompts.txt: no prompts"'

run --config "$src/configs/stories260K.yaml" --fail-backend mha_cpu
check "--fail-backend without @CALL is a clear error" eval 'rc 1 && err_has "expected NAME@CALL"'

LLM_FLAKY_FAIL_AT=0 run --config "$src/configs/stories260K.yaml" --backends mha_cpu,flaky_cpu --plugin-dir "$build/test_plugins" --fail-backend mha_cpu@20 --max-tokens 40
check "--fail-backend drill: the run completes on the next backend with the same text" eval 'rc 0 && out_has "Once upon a time, there was a little girl named Lily. She loved to play outside in the park." && err_has "injected failure on call 20" && err_has "attention: mha_cpu -> flaky_cpu"'

run backends --config "$src/configs/stories260K.yaml" --plugin-dir "$build/test_plugins" --json
check "backends --json: machine-readable verdicts" eval 'rc 0 && out_has "\"name\": \"mha_cpu\"" && out_has "\"supported\": true"'
check "backends --json: capability flags by name" eval 'out_has "\"flags\": [" && out_has "\"decode\""'
check "backends --json: rejected plugins with reasons" eval 'out_has "ABI major mismatch" && out_has "missing entry symbol" && out_has "libvanishing_dep.so: cannot open shared object file"'

mkdir -p "$tmp/open_dir" && cp "$build/plugins/mha_cpu.so" "$tmp/open_dir/" && chmod 0777 "$tmp/open_dir"
run backends --config "$src/configs/stories260K.yaml" --plugin-dir "$tmp/open_dir"
check "backends: a plugin in a world-writable directory is refused with the rule" eval 'rc 0 && out_has "open_dir is writable by other users (mode 0777)"'

LLM_TEST_BAD_PROBE=crash run backends --config "$src/configs/stories260K.yaml" --plugin-dir "$build/test_plugins"
check "backends: a plugin that crashes at probe is named with the signal, the runner lives on" eval 'rc 0 && out_has "probe crashed (signal 11" && out_has "mha_cpu"'

"$build/bin/convert_to_gguf" --model "$models/stories260K.bin" --tokenizer "$models/tok512.bin" --type q8_0 --out "$tmp/s.gguf" >/dev/null
run --model "$tmp/s.gguf" --max-tokens 30
check "a GGUF model runs with the tokenizer it carries" eval 'rc 0 && out_has "Once upon a time, there was a little girl named Lily."'
run --model "$models/stories260K.bin" --max-tokens 5
check "a llama2.c model without a tokenizer names what is missing" eval 'rc 1 && err_has "'"'"'model.tokenizer'"'"' (or --tokenizer) is required" && err_has "carries no tokenizer"'

run --config "$src/configs/stories260K.yaml" --tensor-parallel 4 --max-tokens 40
check "--tensor-parallel 4: the same text, said in the stats line" eval 'rc 0 && out_has "Once upon a time, there was a little girl named Lily. She loved to play outside in the park." && err_has "tensor parallel 4"'
run --config "$src/configs/stories260K.yaml" --tensor-parallel 3
check "--tensor-parallel that does not divide the heads is a clear error" eval 'rc 1 && err_has "8 query heads do not divide among them"'

run backends
check "backends without a model still lists plugins" eval 'rc 0 && out_has "mha_cpu" && out_has "not run"'

# make_checkpoint: the classifier is the preset's model's (separate for tinyllama, shared for the stories
# models) unless --shared or --unshared says; a separate one is vocab x dim fp32 values more (v1 files).
mc() { capture "$build/bin/make_checkpoint" "$@"; }
small=(--dim 64 --hidden-dim 172 --layers 1 --heads 8 --kv-heads 4 --vocab 512 --seq-len 64)
size() { stat -c %s "$1"; }
mc --preset tinyllama "${small[@]}" --out "$tmp/tiny.bin"; mc --preset tinyllama "${small[@]}" --shared --out "$tmp/tiny_shared.bin"
check "make_checkpoint: tinyllama's classifier is separate unless --shared" \
  eval '[ $(( $(size "$tmp/tiny.bin") - $(size "$tmp/tiny_shared.bin") )) -eq $((512 * 64 * 4)) ]'
mc --preset stories260K --out "$tmp/s260.bin"; mc --preset stories260K --unshared --out "$tmp/s260_unshared.bin"
check "make_checkpoint: stories260K shares its classifier unless --unshared" \
  eval '[ $(( $(size "$tmp/s260_unshared.bin") - $(size "$tmp/s260.bin") )) -eq $((512 * 64 * 4)) ]'
mc --shared --unshared --out "$tmp/both.bin"
check "make_checkpoint: --shared with --unshared is refused, nothing written" \
  eval '! rc 0 && err_has "excludes" && [ ! -e "$tmp/both.bin" ]'

echo "$passed passed, $failures failed"
[ "$failures" -eq 0 ]
