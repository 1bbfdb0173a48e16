// Lane masks and the bf16 loads the AVX-512 kernels share. Include only from
// *_avx512.cpp files (compiled with the AVX-512 flags).
#pragma once
#include <immintrin.h>

#include <cstdint>

namespace sparq::avx512 {

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

}  // namespace sparq::avx512
