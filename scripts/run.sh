#!/usr/bin/env bash
# Builds (Release) and runs llm-runner on the default config: the README's first command.
set -euo pipefail
cd "$(dirname "$0")/.."
# set-up and build output go to stderr: stdout carries only the generated text
bash scripts/install-deps.sh >&2
cmake --preset release >/dev/null
cmake --build --preset release >&2
./build/bin/llm-runner --config configs/stories260K.yaml "$@"
