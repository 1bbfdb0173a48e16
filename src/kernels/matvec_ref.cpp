#include "sparq/kernels/matvec.h"

#include <algorithm>
#include <cfloat>
#include <cmath>

#include "sparq/util/common.h"

namespace sparq::ref {
namespace {

float flush(float v) { return std::fabs(v) < FLT_MIN ? std::copysign(0.0f, v) : v; }
float bf16_daz(uint16_t h) { return flush(bf16_to_f32(h)); }

}  // namespace

// Pair by pair in vdpbf16ps's order: the odd product is added first, then the
// even one, each addition rounded to f32 (products of bf16 are exact) and, as
// vdpbf16ps does, subnormal inputs and sums flushed to zero. Partial sums of
// tiny products that cancel pass through the subnormal range.
void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1) {
  for (int b = b0; b < b1; ++b) {
    const int n1 = std::min(W.N, (b + 1) * kMatvecBlock);
    for (int m = 0; m < M; ++m) {
      const uint16_t* xm = x + size_t(m) * W.kp;
      for (int n = b * kMatvecBlock; n < n1; ++n) {
        float acc = 0;
        for (int k = 0; k < W.kp; k += 2) {
          const uint16_t* w = W.w + packed_index(W.kp, n, k);
          acc = flush(acc + bf16_daz(w[1]) * bf16_daz(xm[k + 1]));
          acc = flush(acc + bf16_daz(w[0]) * bf16_daz(xm[k]));
        }
        y[size_t(m) * ldy + n] = acc;
      }
    }
  }
}

}  // namespace sparq::ref
