// Run-time choice of the tier's matrix-vector kernels: one relaxed atomic
// load per call.
#include "sparq/kernels/matvec.h"

#include "sparq/kernels/matvec_quant.h"
#include "sparq/util/cpu.h"

namespace sparq {

namespace ref {
extern const MatvecKernels kMatvec = {matvec_bf16, matvec_quant, quantize_blocks, dequantize_bf16};
}
namespace avx2 {
extern const MatvecKernels kMatvec;
}
namespace avx512 {
extern const MatvecKernels kMatvec;
}
namespace avx512bf16 {
extern const MatvecKernels kMatvec = {matvec_bf16, matvec_quant, quantize_blocks, dequantize_bf16};
}

const MatvecKernels& matvec_kernels(CpuTier t) {
  return for_tier(t, ref::kMatvec, avx2::kMatvec, avx512::kMatvec, avx512bf16::kMatvec);
}

namespace matvec {
namespace {
const MatvecKernels& k() { return matvec_kernels(cpu_tier()); }
}  // namespace

void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1) {
  k().matvec_bf16(W, x, M, y, ldy, b0, b1);
}

void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  k().matvec_quant(W, x, y, ldy, b0, b1);
}

void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out) { k().dequantize_bf16(W, b0, b1, out); }

}  // namespace matvec
}  // namespace sparq
