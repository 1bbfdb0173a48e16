// matvec_quant.h's kernels at the avx2 and avx512 tiers, which have no
// vpdpbusd: a register holds 4 quants of each of kLanes rows, and vpmaddubsw
// takes it: |q| (unsigned) times x with q's sign (signed), so each pair of
// products is at most 2 * 127 * 127 and cannot saturate its int16, then
// vpmaddwd sums the pairs into the row's int32. With the stored quants less
// their offset, the integer sum is sum(q*x) = sum(u*x) - off exactly, and
// each block adds it, scaled, by one FMA in K order, as the reference: the
// result equals the reference's to the bit. Up to four rows of x share each
// load of the weights; more go four at a time over chunks of a row group
// small enough to stay in L2.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "sparq/kernels/matvec.h"
#include "sparq/kernels/matvec_quant.h"
#include "sparq/kernels/simd.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

template <QuantFormat F>
constexpr int kChunkRecords = int(65536 / quant_record_bytes(F));
constexpr int kAheadBytes = 4096;                  // L2 prefetch distance
constexpr int kRegs = kMatvecBlock / kLanes;       // registers of a row group's 64 sums: 8 or 4


#if SPARQ_SIMD_512
inline VI loadu_i(const uint8_t* p) { return _mm512_loadu_si512(p); }
inline VI set1_8(int v) { return _mm512_set1_epi8(char(v)); }
inline VI xor_i(VI a, VI b) { return _mm512_xor_si512(a, b); }
inline VI sub_8(VI a, VI b) { return _mm512_sub_epi8(a, b); }
inline VI srl16(VI a, int n) { return _mm512_srli_epi16(a, unsigned(n)); }
inline VI abs_8(VI a) { return _mm512_abs_epi8(a); }
// x where q > 0, -x where q < 0 (where q == 0 its |q| makes the product 0).
inline VI sign_8(VI x, VI q) { return _mm512_mask_sub_epi8(x, _mm512_movepi8_mask(q), _mm512_setzero_si512(), x); }
inline VI dot_pairs(VI u, VI s) { return _mm512_madd_epi16(_mm512_maddubs_epi16(u, s), _mm512_set1_epi16(1)); }
inline VF scales(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
#else
inline VI loadu_i(const uint8_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline VI set1_8(int v) { return _mm256_set1_epi8(char(v)); }
inline VI xor_i(VI a, VI b) { return _mm256_xor_si256(a, b); }
inline VI sub_8(VI a, VI b) { return _mm256_sub_epi8(a, b); }
inline VI srl16(VI a, int n) { return _mm256_srli_epi16(a, n); }
inline VI abs_8(VI a) { return _mm256_abs_epi8(a); }
inline VI sign_8(VI x, VI q) { return _mm256_sign_epi8(x, q); }
inline VI dot_pairs(VI u, VI s) { return _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)); }
inline VF scales(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif

inline VI broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return set1_i(v);
}

// The signed quants of register j of a record (rows kLanes j.. of the
// group): q[g] holds quants 4g..4g+3 of each of its rows.
template <QuantFormat F>
inline void load_quants(const uint8_t* record, int j, VI q[8]) {
  constexpr size_t set_bytes = (quant_record_bytes(F) - 2 * kMatvecBlock) / 4;
  const int row0 = kLanes * j;
  const uint8_t* s = record + 2 * kMatvecBlock + size_t(row0 / 16) * set_bytes + size_t(row0 % 16) * 4;
  if constexpr (F == QuantFormat::Q8_0) {
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) q[g] = xor_i(loadu_i(s + 64 * g), set1_8(0x80));  // u - 128
  } else {
    const VI low = set1_8(0x0f), eight = set1_8(8);
#pragma GCC unroll 4
    for (int t = 0; t < 4; ++t) {
      const VI v = loadu_i(s + 64 * t);
      q[t] = sub_8(and_i(v, low), eight);
      q[t + 4] = sub_8(and_i(srl16(v, 4), low), eight);
    }
  }
}

template <QuantFormat F, int R>
void tile(const uint8_t* w, int kb0, int n, const QuantRows& x, int m0, float* y, size_t ldy, int cols, bool acc_in) {
  constexpr size_t rec = quant_record_bytes(F);
  const int kblocks = x.K / kQuantBlock;
  VF acc[R][kRegs];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < kRegs; ++j)
      acc[r][j] = acc_in ? load_first(y + r * ldy + kLanes * j, cols - kLanes * j) : zero();
  for (int i = 0; i < n; ++i) {
    const uint8_t* record = w + size_t(i) * rec;
    for (size_t b = 0; b < rec; b += 64) _mm_prefetch(reinterpret_cast<const char*>(record + kAheadBytes + b), _MM_HINT_T1);
    const int kb = kb0 + i;
#pragma GCC unroll 8
    for (int j = 0; j < kRegs; ++j) {
      VI q[8], a[8];
      load_quants<F>(record, j, q);
#pragma GCC unroll 8
      for (int g = 0; g < 8; ++g) a[g] = abs_8(q[g]);
      const VF dw = scales(record + 2 * kLanes * j);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const size_t xb = size_t(m0 + r) * kblocks + kb;
        const int8_t* xq = &x.q[xb * kQuantBlock];
        VI s = set1_i(0);
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) s = add_i(s, dot_pairs(a[g], sign_8(broadcast4(xq + 4 * g), q[g])));
        acc[r][j] = fmadd(to_float(s), mul(dw, set1(x.d[xb])), acc[r][j]);
      }
    }
  }

#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < kRegs; ++j) store_first(y + r * ldy + kLanes * j, acc[r][j], cols - kLanes * j);
}

template <QuantFormat F>
void rows(int R, const uint8_t* w, int kb0, int n, const QuantRows& x, int m0, float* y, size_t ldy, int cols, bool acc_in) {
  switch (R) {
    case 1: return tile<F, 1>(w, kb0, n, x, m0, y, ldy, cols, acc_in);
    case 2: return tile<F, 2>(w, kb0, n, x, m0, y, ldy, cols, acc_in);
    case 3: return tile<F, 3>(w, kb0, n, x, m0, y, ldy, cols, acc_in);
    default: return tile<F, 4>(w, kb0, n, x, m0, y, ldy, cols, acc_in);
  }
}

template <QuantFormat F>
void run(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  constexpr size_t rec = quant_record_bytes(F);
  const int kblocks = W.kblocks();
  for (int b = b0; b < b1; ++b) {
    const uint8_t* group = W.w + size_t(b) * W.group_bytes();
    const int n0 = b * kMatvecBlock, cols = std::min(kMatvecBlock, W.N - n0);
    if (x.M <= 4) {
      rows<F>(x.M, group, 0, kblocks, x, 0, y + n0, ldy, cols, false);
      continue;
    }
    for (int kb0 = 0; kb0 < kblocks; kb0 += kChunkRecords<F>) {
      const int n = std::min(kChunkRecords<F>, kblocks - kb0);
      for (int m0 = 0; m0 < x.M; m0 += 4)
        rows<F>(std::min(4, x.M - m0), group + size_t(kb0) * rec, kb0, n, x, m0, y + size_t(m0) * ldy + n0, ldy, cols,
                kb0 > 0);
    }
  }
}

#if SPARQ_SIMD_512
// 16 int32 as int8 (each in [-127, 127]).
inline void store_q8(int8_t* p, VI v) { _mm_storeu_si128(reinterpret_cast<__m128i*>(p), _mm512_cvtepi32_epi8(v)); }
#else
inline void store_q8(int8_t* p, VI v) {
  const __m256i w16 = _mm256_packs_epi32(v, v);  // per 128-bit lane: 4 values twice
  const __m256i w8 = _mm256_packs_epi16(w16, w16);
  const __m256i in_order = _mm256_permutevar8x32_epi32(w8, _mm256_setr_epi32(0, 4, 0, 4, 0, 4, 0, 4));
  _mm_storel_epi64(reinterpret_cast<__m128i*>(p), _mm256_castsi256_si128(in_order));
}
#endif

}  // namespace

void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  W.format == QuantFormat::Q8_0 ? run<QuantFormat::Q8_0>(W, x, y, ldy, b0, b1)
                                : run<QuantFormat::Q4_0>(W, x, y, ldy, b0, b1);
}

// The reference's arithmetic on lanes: the same max, divisions and rounding
// (vcvtps2dq rounds to nearest even, as nearbyint does).
void quantize_blocks(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off) {
  constexpr int kVecs = kQuantBlock / kLanes;
  for (size_t b = 0; b < n; ++b) {
    const float* xb = x + b * kQuantBlock;
    VF v[kVecs], amax = zero(), bad = zero();
    for (int i = 0; i < kVecs; ++i) {
      v[i] = load(xb + kLanes * i);
      amax = max(amax, abs(v[i]));
      bad = add(bad, sub(v[i], v[i]));  // NaN for an infinite or NaN element
    }
    const bool finite = reduce_add(bad) == 0.0f;
    const float db = reduce_max(amax) / 127, id = db != 0 ? 1 / db : 0;
    if (!finite || !std::isfinite(id)) {  // as the reference: quants 0, the scale NaN or (subnormals) 0
      std::memset(q + b * kQuantBlock, 0, kQuantBlock);
      d[b] = finite ? 0.0f : NAN;
      off[b] = 0;
      continue;
    }
    const VF scale = set1(id);
    VI sum = set1_i(0);
    for (int i = 0; i < kVecs; ++i) {
      const VI qi = to_int(mul(v[i], scale));
      store_q8(q + b * kQuantBlock + kLanes * i, qi);
      sum = add_i(sum, qi);
    }
    int32_t lanes[kLanes];
    std::memcpy(lanes, &sum, sizeof lanes);
    int32_t total = 0;
    for (int32_t l : lanes) total += l;
    d[b] = db;
    off[b] = offset * total;
  }
}

}  // namespace sparq::SPARQ_TIER_NS
