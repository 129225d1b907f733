#!/usr/bin/env bash
# Installs the Debian packages the build and tests need (run as root, or with sudo available).
# CUDA is optional: without a toolkit the CPU runtime and mha_cpu.so build and run.
set -euo pipefail
packages=(
  build-essential cmake ninja-build pkg-config
  libboost-dev libfmt-dev libspdlog-dev libyaml-cpp-dev libsentencepiece-dev
  libcli11-dev nlohmann-json3-dev libssl-dev libpcre2-dev libgtest-dev libgmock-dev
)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "install-deps: installing ${missing[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
