#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite, also under the sanitizers
# and the fuzzers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j2
# The same suite under ASan and UBSan, then each fuzz target for a few seconds
# so a regression in the input parsers shows.
scripts/test_sanitize.sh
scripts/fuzz.sh 5
