#include <algorithm>
#include <cmath>
#include <vector>

#include "sparq/kernels/matvec_quant.h"
#include "sparq/util/common.h"

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

void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out) {
  const int off = quant_offset(W.format);
  for (int b = b0; b < b1; ++b)
    for (int r = 0; r < kMatvecBlock; ++r)
      for (int k = 0; k < W.K; ++k) {
        const int n = b * kMatvecBlock + r;
        const float v = stored_scale(W, n, k / kQuantBlock) * float(stored_quant(W, n, k) - off);
        out[packed_index(W.K, n - b0 * kMatvecBlock, k)] = f32_to_bf16(v);
      }
}

}  // namespace sparq::ref
