#include "sparq/kernels/matvec.h"

#include <algorithm>

#include "sparq/util/common.h"

namespace sparq::ref {

// Pair by pair, as vdpbf16ps adds them: acc += w0 x0 + w1 x1.
void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1) {
  for (int b = b0; b < b1; ++b) {
    const int n1 = std::min(W.N, (b + 1) * kMatvecBlock);
    for (int m = 0; m < M; ++m) {
      const uint16_t* xm = x + size_t(m) * W.kp;
      for (int n = b * kMatvecBlock; n < n1; ++n) {
        float acc = 0;
        for (int k = 0; k < W.kp; k += 2) {
          const uint16_t* w = W.w + packed_index(W.kp, n, k);
          acc += bf16_to_f32(w[0]) * bf16_to_f32(xm[k]) + bf16_to_f32(w[1]) * bf16_to_f32(xm[k + 1]);
        }
        y[size_t(m) * ldy + n] = acc;
      }
    }
  }
}

}  // namespace sparq::ref
