#!/usr/bin/env bash
# Builds (Release, warnings as errors) and runs the whole test suite: the README's second command.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install-deps.sh
cmake --preset ci >/dev/null
cmake --build --preset ci
ctest --preset ci
