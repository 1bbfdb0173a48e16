// Packed bf16 weights (matvec.h's layout) widened to plain f32 rows, a
// block of 64 rows at a time: the prompt rows of bf16 layers on CPUs without
// AVX512_BF16 run oneDNN's f32 matmul over tiles widened this way.
#pragma once
#include "sparq/kernels/matvec.h"

namespace sparq {

// Block b of W as f32 rows out[min(64, N - 64 b)][K] (exact).
void widen_block(const PackedBf16& W, int b, float* out);

namespace ref {
void widen_block(const PackedBf16& W, int b, float* out);
}
namespace avx2 {
void widen_block(const PackedBf16& W, int b, float* out);
}
namespace avx512 {
void widen_block(const PackedBf16& W, int b, float* out);
}
namespace avx512bf16 {  // rarely needed there: oneDNN multiplies bf16
void widen_block(const PackedBf16& W, int b, float* out);
}

}  // namespace sparq
