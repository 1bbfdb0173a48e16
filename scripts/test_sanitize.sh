#!/usr/bin/env bash
# Builds the test suite with AddressSanitizer and UndefinedBehaviorSanitizer
# (-DSPARQ_SANITIZE=ON) in build-asan/ and runs it with ctest. Extra args go
# to ctest.
set -euo pipefail
cd "$(dirname "$0")/.."
# -O1 -g1: the sanitizers' usual level, with line numbers in reports and a
# shorter build than -O2 -g.
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=None -DCMAKE_CXX_FLAGS="-O1 -g1" -DSPARQ_SANITIZE=ON >/dev/null
cmake --build build-asan -j2
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1:strict_string_checks=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
export LSAN_OPTIONS=${LSAN_OPTIONS:-suppressions=$PWD/tests/lsan.supp:print_suppressions=0}
ctest --test-dir build-asan --output-on-failure -j2 "$@"
