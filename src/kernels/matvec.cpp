#include "sparq/kernels/matvec.h"
#include "sparq/kernels/matvec_quant.h"

#include "sparq/util/cpu.h"

namespace sparq::matvec {

void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1) {
  use_avx512() ? avx512::matvec_bf16(W, x, M, y, ldy, b0, b1) : ref::matvec_bf16(W, x, M, y, ldy, b0, b1);
}

void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  use_avx512() ? avx512::matvec_quant(W, x, y, ldy, b0, b1) : ref::matvec_quant(W, x, y, ldy, b0, b1);
}

void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out) {
  use_avx512() ? avx512::dequantize_bf16(W, b0, b1, out) : ref::dequantize_bf16(W, b0, b1, out);
}

}  // namespace sparq::matvec
