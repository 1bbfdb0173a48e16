// Lane masks and the bf16 loads the hand-written avx512bf16 kernels share,
// beside simd.h's lanes (exp2 among them). Include only from
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

// bf16 load32's (even, odd) back in element order: elements 0..15 and 16..31.
inline void even_odd_in_order(__m512& a, __m512& b) {
  const __m512i lo = _mm512_setr_epi32(0, 16, 1, 17, 2, 18, 3, 19, 4, 20, 5, 21, 6, 22, 7, 23);
  const __m512i hi = _mm512_setr_epi32(8, 24, 9, 25, 10, 26, 11, 27, 12, 28, 13, 29, 14, 30, 15, 31);
  const __m512 x = _mm512_permutex2var_ps(a, lo, b);
  b = _mm512_permutex2var_ps(a, hi, b);
  a = x;
}

// x[0] and, when two, x[1] (else 0) as the bf16 pair vdpbf16ps multiplies
// with two interleaved rows, x[0] in the low half.
inline uint32_t bf16_pair(const float* x, bool two) {
  return f32_to_bf16(x[0]) | (two ? uint32_t(f32_to_bf16(x[1])) << 16 : 0u);
}

// vdpbf16ps over rows interleaved by unpacklo/hi_epi16 leaves positions
// {0-3, 8-11, 16-19, 24-27} of 32 in lo and the other quads in hi; this puts
// positions 0..15 in lo and 16..31 in hi.
inline void unpacked_in_order(__m512& lo, __m512& hi) {
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  const __m512 x = _mm512_permutex2var_ps(lo, first, hi);
  hi = _mm512_permutex2var_ps(lo, second, hi);
  lo = x;
}

}  // namespace sparq::avx512bf16
