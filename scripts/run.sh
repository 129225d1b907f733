#!/usr/bin/env bash
# Builds (Release) and runs llm-runner on the default config: the README's first command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset release >/dev/null
cmake --build --preset release
./build/bin/llm-runner --config configs/stories260K.yaml "$@"
