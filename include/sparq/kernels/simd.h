// Lanes of f32 for the kernels written once for several tiers. Each
// src/kernels/*_simd.cpp is compiled with the AVX2/FMA/F16C flags, with the
// AVX-512 F/BW/VL/DQ ones, and, when no hand-written *_avx512bf16.cpp twin
// exists, with the avx512bf16 tier's; its code sits in namespace
// sparq::SPARQ_TIER_NS (avx2, avx512 or avx512bf16), so the builds' inline
// functions never share a symbol. Include only from *_simd.cpp files and the
// hand-written avx512bf16 ones (through avx512bf16_lanes.h).
#pragma once
// GCC 12.2 warns about the _mm512_undefined_* self-initialisation inside
// immintrin.h (GCC PR 105593, fixed in 12.3); these are false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <cstdint>
#include <cstring>

#if defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__) && \
    defined(__AVX512BF16__)
#define SPARQ_TIER_NS avx512bf16
#define SPARQ_SIMD_512 1
#elif defined(__AVX512F__) && defined(__AVX512BW__) && defined(__AVX512VL__) && defined(__AVX512DQ__)
#define SPARQ_TIER_NS avx512
#define SPARQ_SIMD_512 1
#elif defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
#define SPARQ_TIER_NS avx2
#define SPARQ_SIMD_512 0
#else
#error "kernels/simd.h is for the avx2 and avx512 tiers' files (*_simd.cpp)"
#endif

namespace sparq::SPARQ_TIER_NS {

#if SPARQ_SIMD_512

inline constexpr int kLanes = 16;
using VF = __m512;   // kLanes f32
using VI = __m512i;  // kLanes i32
using Mask = __mmask16;

inline Mask first_mask(int n) {
  return n >= 16 ? Mask(0xffff) : n <= 0 ? Mask(0) : Mask((1u << n) - 1u);
}
inline VF zero() { return _mm512_setzero_ps(); }
inline VF set1(float x) { return _mm512_set1_ps(x); }
inline VF load(const float* p) { return _mm512_loadu_ps(p); }
inline void store(float* p, VF v) { _mm512_storeu_ps(p, v); }
// The first n lanes (n clamped to [0, kLanes]); the others are 0 and not read.
inline VF load_first(const float* p, int n) { return _mm512_maskz_loadu_ps(first_mask(n), p); }
inline void store_first(float* p, VF v, int n) { _mm512_mask_storeu_ps(p, first_mask(n), v); }
inline VI widen_bf16(__m256i h) { return _mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16); }
// kLanes bf16 as f32 (exact).
inline VF load_bf16(const uint16_t* p) {
  return _mm512_castsi512_ps(widen_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))));
}
inline VF load_bf16_first(const uint16_t* p, int n) {
  return _mm512_castsi512_ps(widen_bf16(_mm256_maskz_loadu_epi16(first_mask(n), p)));
}
// kLanes int8 as f32 (exact), and kLanes f16 (F16C's conversion, exact).
inline VF load_i8(const int8_t* p) {
  return _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VF load_f16(const uint16_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
inline VI as_int(VF v) { return _mm512_castps_si512(v); }
inline VF as_float(VI v) { return _mm512_castsi512_ps(v); }
inline VF add(VF a, VF b) { return _mm512_add_ps(a, b); }
inline VF sub(VF a, VF b) { return _mm512_sub_ps(a, b); }
inline VF mul(VF a, VF b) { return _mm512_mul_ps(a, b); }
inline VF div(VF a, VF b) { return _mm512_div_ps(a, b); }
inline VF max(VF a, VF b) { return _mm512_max_ps(a, b); }  // b when either is NaN
inline VF min(VF a, VF b) { return _mm512_min_ps(a, b); }
inline VF fmadd(VF a, VF b, VF c) { return _mm512_fmadd_ps(a, b, c); }    // a * b + c
inline VF fnmadd(VF a, VF b, VF c) { return _mm512_fnmadd_ps(a, b, c); }  // c - a * b
inline VF sqrt(VF a) { return _mm512_sqrt_ps(a); }
inline VF abs(VF a) { return _mm512_abs_ps(a); }
inline VF round_nearest(VF a) { return _mm512_roundscale_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline Mask lt(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_LT_OQ); }
inline Mask le(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_LE_OQ); }
inline Mask eq(VF a, VF b) { return _mm512_cmp_ps_mask(a, b, _CMP_EQ_OQ); }
inline VF select(Mask m, VF yes, VF no) { return _mm512_mask_blend_ps(m, no, yes); }
inline unsigned mask_bits(Mask m) { return unsigned(m); }  // bit i: lane i
inline float reduce_add(VF v) { return _mm512_reduce_add_ps(v); }
inline float reduce_max(VF v) { return _mm512_reduce_max_ps(v); }
inline VF scale_pow2(VF p, VF n) { return _mm512_scalef_ps(p, n); }  // p * 2^n, n integral
// Rounded to bf16 as f32_to_bf16 does (nearest even, NaN kept quiet).
inline VI bf16_bits(VF v);
inline void store_bf16(uint16_t* p, VF v) {
  _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), _mm512_cvtepi32_epi16(bf16_bits(v)));
}
inline void store_bf16_first(uint16_t* p, VF v, int n) {
  _mm256_mask_storeu_epi16(p, first_mask(n), _mm512_cvtepi32_epi16(bf16_bits(v)));
}
inline VI set1_i(int x) { return _mm512_set1_epi32(x); }
inline VI add_i(VI a, VI b) { return _mm512_add_epi32(a, b); }
inline VI and_i(VI a, VI b) { return _mm512_and_si512(a, b); }
inline VI or_i(VI a, VI b) { return _mm512_or_si512(a, b); }
inline VI srl_i(VI a, int n) { return _mm512_srli_epi32(a, unsigned(n)); }
inline VI select_i(Mask m, VI yes, VI no) { return _mm512_mask_blend_epi32(m, no, yes); }
inline Mask gt_i(VI a, VI b) { return _mm512_cmpgt_epi32_mask(a, b); }
inline VF to_float(VI a) { return _mm512_cvtepi32_ps(a); }
inline VI to_int(VF a) { return _mm512_cvtps_epi32(a); }  // nearest even
inline VI bf16_bits(VF v) {
  const VI u = as_int(v);
  const VI rounded = srl_i(add_i(add_i(u, set1_i(0x7fff)), and_i(srl_i(u, 16), set1_i(1))), 16);
  const Mask nan = gt_i(and_i(u, set1_i(0x7fffffff)), set1_i(0x7f800000));
  return select_i(nan, or_i(srl_i(u, 16), set1_i(0x40)), rounded);
}

// Rows interleaved by unpacklo/hi_epi16 (and dot products over them) leave
// positions {0-3, 8-11, 16-19, 24-27} of 32 in lo and the other quads in hi;
// this puts positions 0..15 in lo and 16..31 in hi.
inline void unpacked_in_order(VF& lo, VF& hi) {
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  const VF x = _mm512_permutex2var_ps(lo, first, hi);
  hi = _mm512_permutex2var_ps(lo, second, hi);
  lo = x;
}

#else  // AVX2

inline constexpr int kLanes = 8;
using VF = __m256;
using VI = __m256i;
using Mask = __m256;  // all ones in a lane that is set

inline VI first_mask_i(int n) {
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(n), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}
inline Mask first_mask(int n) { return _mm256_castsi256_ps(first_mask_i(n)); }
inline VF zero() { return _mm256_setzero_ps(); }
inline VF set1(float x) { return _mm256_set1_ps(x); }
inline VF load(const float* p) { return _mm256_loadu_ps(p); }
inline void store(float* p, VF v) { _mm256_storeu_ps(p, v); }
inline VF load_first(const float* p, int n) { return _mm256_maskload_ps(p, first_mask_i(n)); }
inline void store_first(float* p, VF v, int n) { _mm256_maskstore_ps(p, first_mask_i(n), v); }
inline VI widen_bf16(__m128i h) { return _mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16); }
inline VF load_bf16(const uint16_t* p) {
  return _mm256_castsi256_ps(widen_bf16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))));
}
inline VF load_bf16_first(const uint16_t* p, int n) {
  uint16_t buf[8] = {};
  std::memcpy(buf, p, sizeof(uint16_t) * size_t(n < 0 ? 0 : n > 8 ? 8 : n));
  return load_bf16(buf);
}
inline VF load_i8(const int8_t* p) {
  return _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))));
}
inline VF load_f16(const uint16_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
inline VI as_int(VF v) { return _mm256_castps_si256(v); }
inline VF as_float(VI v) { return _mm256_castsi256_ps(v); }
inline VF add(VF a, VF b) { return _mm256_add_ps(a, b); }
inline VF sub(VF a, VF b) { return _mm256_sub_ps(a, b); }
inline VF mul(VF a, VF b) { return _mm256_mul_ps(a, b); }
inline VF div(VF a, VF b) { return _mm256_div_ps(a, b); }
inline VF max(VF a, VF b) { return _mm256_max_ps(a, b); }  // b when either is NaN
inline VF min(VF a, VF b) { return _mm256_min_ps(a, b); }
inline VF fmadd(VF a, VF b, VF c) { return _mm256_fmadd_ps(a, b, c); }
inline VF fnmadd(VF a, VF b, VF c) { return _mm256_fnmadd_ps(a, b, c); }
inline VF sqrt(VF a) { return _mm256_sqrt_ps(a); }
inline VF abs(VF a) { return _mm256_and_ps(a, _mm256_castsi256_ps(_mm256_set1_epi32(0x7fffffff))); }
inline VF round_nearest(VF a) { return _mm256_round_ps(a, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC); }
inline Mask lt(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_LT_OQ); }
inline Mask le(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_LE_OQ); }
inline Mask eq(VF a, VF b) { return _mm256_cmp_ps(a, b, _CMP_EQ_OQ); }
inline VF select(Mask m, VF yes, VF no) { return _mm256_blendv_ps(no, yes, m); }
inline unsigned mask_bits(Mask m) { return unsigned(_mm256_movemask_ps(m)); }
inline float reduce_add(VF v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)));
}
inline float reduce_max(VF v) {
  __m128 s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_max_ps(s, _mm_movehl_ps(s, s));
  return _mm_cvtss_f32(_mm_max_ss(s, _mm_movehdup_ps(s)));
}
inline VI set1_i(int x) { return _mm256_set1_epi32(x); }
inline VI add_i(VI a, VI b) { return _mm256_add_epi32(a, b); }
inline VI and_i(VI a, VI b) { return _mm256_and_si256(a, b); }
inline VI or_i(VI a, VI b) { return _mm256_or_si256(a, b); }
inline VI srl_i(VI a, int n) { return _mm256_srli_epi32(a, n); }
inline VI select_i(Mask m, VI yes, VI no) { return _mm256_castps_si256(select(m, as_float(yes), as_float(no))); }
inline Mask gt_i(VI a, VI b) { return as_float(_mm256_cmpgt_epi32(a, b)); }
inline VF to_float(VI a) { return _mm256_cvtepi32_ps(a); }
inline VI to_int(VF a) { return _mm256_cvtps_epi32(a); }
// p * 2^n for integral n in [-152, 101] and p * 2^-26 normal: p * 2^-26 is
// exact, and one product by the normal 2^(n + 26) rounds once, as scalef.
inline VF scale_pow2(VF p, VF n) {
  const VF f = as_float(_mm256_slli_epi32(add_i(to_int(n), set1_i(127 + 26)), 23));
  return mul(mul(p, set1(0x1p-26f)), f);
}
inline VI bf16_bits(VF v) {
  const VI u = as_int(v);
  const VI rounded = srl_i(add_i(add_i(u, set1_i(0x7fff)), and_i(srl_i(u, 16), set1_i(1))), 16);
  const Mask nan = gt_i(and_i(u, set1_i(0x7fffffff)), set1_i(0x7f800000));
  return select_i(nan, or_i(srl_i(u, 16), set1_i(0x40)), rounded);
}
inline __m128i pack_bf16(VF v) {
  const VI b = bf16_bits(v);  // each < 2^16: the unsigned saturating pack keeps it
  return _mm256_castsi256_si128(_mm256_permute4x64_epi64(_mm256_packus_epi32(b, b), 0x08));
}
inline void store_bf16(uint16_t* p, VF v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), pack_bf16(v)); }
inline void store_bf16_first(uint16_t* p, VF v, int n) {
  uint16_t buf[8];
  store_bf16(buf, v);
  std::memcpy(p, buf, sizeof(uint16_t) * size_t(n < 0 ? 0 : n > 8 ? 8 : n));
}
// As the AVX-512 one: lo holds positions {0-3, 8-11} of 16, hi {4-7, 12-15}.
inline void unpacked_in_order(VF& lo, VF& hi) {
  const VF x = _mm256_permute2f128_ps(lo, hi, 0x20);
  hi = _mm256_permute2f128_ps(lo, hi, 0x31);
  lo = x;
}

#endif

inline VF zero_if_nan(VF v) { return select(eq(v, v), v, zero()); }

// One f16 as f32, broadcast: a q8_0 block's scale.
inline VF set1_f16(const void* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  return set1(_cvtsh_ss(h));
}
// kLanes values c0.. of a q8_0 row of d (its quants, then its f16 scales), as f32.
inline VF load_q8_row(const int8_t* row, int c0, int d) {
  return mul(load_i8(row + c0), set1_f16(row + d + 2 * (c0 / 32)));
}

// 2^x for x <= 0 (max-subtracted scores): x = n + f with |f| <= 1/2, a
// degree-5 polynomial fitted to 2^f for relative error with p(0) = 1, so the
// max's weight is exactly 1 (9.2e-8; ~1.7e-7 after f32 rounding, well inside
// what the kernels promise), and 2^n by scaling, which underflows to
// subnormals and 0. NaN and x < -151 give 0.
inline VF exp2(VF x) {
  x = max(x, set1(-151.0f));
  const VF n = round_nearest(x);
  const VF f = sub(x, n);
  VF p = set1(1.3264725854e-3f);
  p = fmadd(p, f, set1(9.6715128291e-3f));
  p = fmadd(p, f, set1(5.5507337476e-2f));
  p = fmadd(p, f, set1(2.4022242081e-1f));
  p = fmadd(p, f, set1(6.9314697760e-1f));
  p = fmadd(p, f, set1(1.0f));
  return scale_pow2(p, n);
}

}  // namespace sparq::SPARQ_TIER_NS
