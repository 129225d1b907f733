#!/usr/bin/env bash
# scripts/pack-ab.sh refuses, with a message naming what is wrong and before it checks anything out or
# builds: no NAME, a NAME with other characters, no .device/, a working tree with changes, a REV that is no
# commit. Run on a copy of the script in a scratch repository. Usage: pack_ab_test.sh SOURCE_DIR
set -euo pipefail
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir -p "$work/scripts"
cp "$1/scripts/pack-ab.sh" "$work/scripts/"
git -C "$work" init -q
git -C "$work" -c user.name=t -c user.email=t@t add scripts
git -C "$work" -c user.name=t -c user.email=t@t commit -qm init
refuses() {  # refuses MESSAGE ARGS...: exits non-zero and prints MESSAGE
  local want=$1 out
  shift
  if out=$(bash "$work/scripts/pack-ab.sh" "$@" 2>&1); then
    echo "accepted: pack-ab.sh $*"
    exit 1
  fi
  grep -qF -- "$want" <<<"$out" || { echo "pack-ab.sh $*: expected '$want', got: $out"; exit 1; }
}
refuses "usage: pack-ab.sh NAME [REV]"
refuses "pack-ab.sh: NAME 'a b' must be letters, digits, '.', '_' or '-'" "a b"
refuses "pack-ab.sh: no .device/ here; run scripts/pack-device.sh first" base
mkdir "$work/.device"
echo "# changed" >>"$work/scripts/pack-ab.sh"
refuses "pack-ab.sh: the working tree has changes" base
git -C "$work" checkout -q scripts/pack-ab.sh
refuses "pack-ab.sh: no commit 'nope'" base nope
[ ! -e "$work/.device/ab" ] || { echo "pack-ab.sh wrote .device/ab before refusing"; exit 1; }
echo "pack-ab.sh: 5 refusals, each with its message"
