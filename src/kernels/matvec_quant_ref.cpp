#include <algorithm>
#include <cmath>
#include <vector>

#include "sparq/kernels/matvec_quant.h"

namespace sparq::ref {

// Row by row, block by block: the block's exact integer sum of stored quant
// times activation, less the offset's share, then one fused multiply-add.
void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  std::vector<int> u(static_cast<size_t>(W.K));
  for (int n = b0 * kMatvecBlock; n < std::min(W.N, b1 * kMatvecBlock); ++n) {
    for (int k = 0; k < W.K; ++k) u[k] = stored_quant(W, n, k);
    for (int m = 0; m < x.M; ++m) {
      float acc = 0;
      for (int kb = 0; kb < W.kblocks(); ++kb) {
        int32_t s = 0;
        for (int k = kb * kQuantBlock; k < (kb + 1) * kQuantBlock; ++k) s += u[k] * x.q[size_t(m) * W.K + k];
        const size_t xb = size_t(m) * W.kblocks() + kb;
        acc = std::fma(float(s - x.off[xb]), stored_scale(W, n, kb) * x.d[xb], acc);
      }
      y[size_t(m) * ldy + n] = acc;
    }
  }
}

}  // namespace sparq::ref
