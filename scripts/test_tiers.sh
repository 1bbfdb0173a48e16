#!/usr/bin/env bash
# Runs the kernel, model-golden and SparQ-golden tests of build/ once per CPU
# tier named (default: avx2 portable), each with SPARQ_CPU set, so the whole
# process (oneDNN included) runs as on a CPU of that tier.
set -euo pipefail
cd "$(dirname "$0")/.."
tags="[ops],[matvec],[matmul],[quant],[attention],[sparq],[kv_cache],[model],[engine]"
for tier in ${@:-avx2 portable}; do
  echo "== tests at CPU tier $tier"
  SPARQ_CPU=$tier OMP_NUM_THREADS=2 build/tests/sparq-tests "$tags"
done
