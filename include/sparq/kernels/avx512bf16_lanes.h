// Lane masks and the bf16 loads the hand-written avx512bf16 kernels share,
// beside simd.h's lanes (exp2 and unpacked_in_order among them). Include only from
// *_avx512bf16.cpp files (compiled with that tier's flags).
#pragma once
#include <immintrin.h>

#include <cstdint>

#include "sparq/kernels/simd.h"
#include "sparq/util/common.h"

namespace sparq::avx512bf16 {

// The first n lanes (n clamped to [0, 16] / [0, 32]).
inline __mmask16 first16(int n) {
  return n >= 16 ? __mmask16(0xffff) : n <= 0 ? __mmask16(0) : __mmask16((1u << n) - 1u);
}
inline __mmask32 first32(int n) {
  return n >= 32 ? ~__mmask32(0) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1u);
}

// 32 consecutive elements as f32 (masked-off ones 0). bf16, one load and two
// ops: the even elements, then the odd ones. f32: the first and last 16.
inline void load32(const uint16_t* p, __mmask32 m, __m512& even, __m512& odd) {
  const __m512i x = _mm512_maskz_loadu_epi16(m, p);
  even = _mm512_castsi512_ps(_mm512_slli_epi32(x, 16));
  odd = _mm512_castsi512_ps(_mm512_and_si512(x, _mm512_set1_epi32(int(0xffff0000u))));
}
inline void load32(const float* p, __mmask32 m, __m512& a, __m512& b) {
  a = _mm512_maskz_loadu_ps(__mmask16(m), p);
  b = _mm512_maskz_loadu_ps(__mmask16(m >> 16), p + 16);
}

// x[0] and, when two, x[1] (else 0) as the bf16 pair vdpbf16ps multiplies
// with two interleaved rows, x[0] in the low half.
inline uint32_t bf16_pair(const float* x, bool two) {
  return f32_to_bf16(x[0]) | (two ? uint32_t(f32_to_bf16(x[1])) << 16 : 0u);
}

}  // namespace sparq::avx512bf16
