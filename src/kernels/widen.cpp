#include "sparq/kernels/widen.h"

#include <algorithm>

#include "sparq/util/common.h"
#include "sparq/util/cpu.h"

namespace sparq {

namespace ref {

// Each step's 64 pairs go to 64 rows, whose lines stay in L1 over the steps.
void widen_block(const PackedBf16& W, int b, float* out) {
  const int rows = std::min(kMatvecBlock, W.N - b * kMatvecBlock), K = W.K;
  const uint16_t* w = W.w + size_t(b) * W.block_elems();
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < rows; ++n) out[size_t(n) * K + k] = bf16_to_f32(w[size_t(k / 2) * 2 * kMatvecBlock + 2 * n + k % 2]);
}

}  // namespace ref

void widen_block(const PackedBf16& W, int b, float* out) {
  using Widen = void (*)(const PackedBf16&, int, float*);
  for_tier<Widen>(cpu_tier(), ref::widen_block, avx2::widen_block, avx512::widen_block, avx512bf16::widen_block)(W, b, out);
}

}  // namespace sparq
