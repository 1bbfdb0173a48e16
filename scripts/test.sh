#!/usr/bin/env bash
# Sets up, builds and runs the whole test suite, also under the sanitizers
# and the fuzzers.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
scripts/build.sh
ctest --test-dir build --output-on-failure -j2
# The kernel and golden tests again with the CPU tier forced to avx2 and to
# portable (SPARQ_CPU holds oneDNN to that tier's instructions too), so the
# lower tiers are tested as on such CPUs, whatever this machine has.
scripts/test_tiers.sh
# The same suite under ASan and UBSan, then each fuzz target for a few seconds
# so a regression in the input parsers shows.
scripts/test_sanitize.sh
scripts/fuzz.sh 5
