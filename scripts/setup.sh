#!/usr/bin/env bash
# Installs the Debian packages sparq-run builds with. Safe to run again.
set -euo pipefail
pkgs=(g++ cmake make pkg-config libdnnl-dev libcli11-dev libfmt-dev catch2
      nlohmann-json3-dev libpcre2-dev python3-matplotlib  # scripts/plot_bench.py
      clang-14 libclang-rt-14-dev)  # scripts/fuzz.sh: libFuzzer and the sanitizer runtimes
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
sudo=""
[ "$(id -u)" -ne 0 ] && sudo="sudo"
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -qq || true
$sudo apt-get install -y -qq "${missing[@]}"
