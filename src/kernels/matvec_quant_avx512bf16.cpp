// vpdpbusd against quantized weights (matvec_quant.h): for each record and set
// of 16 output rows, the set's 8 steps of unsigned quants (q4_0: 4 loads, each
// split into low and high nibbles) meet 4 broadcast int8 activations each,
// summed in two integer chains per row; the block's sum, less the offset's
// share, is converted once and scaled into the row's float sum. Up to four
// rows of activations share each load of the weights; more go four at a time
// over chunks of a row group small enough to stay in L2, as in matvec_avx512
// (and, as there, loops over registers unrolled by pragma).
// The pragmas silence GCC 12.2 false positives from immintrin.h (PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "sparq/kernels/avx512bf16_lanes.h"
#include "sparq/kernels/matvec_quant.h"

namespace sparq::avx512bf16 {
namespace {

// Records of a row group per chunk when more than four rows share it: what
// fits in 64 KiB, which stays in L2 while every four rows pass over it.
template <QuantFormat F>
constexpr int kChunkRecords = int(65536 / quant_record_bytes(F));
// L2 prefetch distance, in bytes ahead of the record being read.
constexpr int kAheadBytes = 4096;

// Quants of one set of 16 rows in a record, as unsigned bytes: u[g] holds
// quants 4g..4g+3 of each row; for q4_0, u[4..7] hold them times 16 (the
// high nibbles left in place, one op fewer than shifting them down; the sum
// of their products is shifted back, exactly, as all its terms are
// multiples of 16).
template <QuantFormat F>
inline void load_set(const uint8_t* q, __m512i u[8]) {
  if constexpr (F == QuantFormat::Q8_0) {
    #pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) u[g] = _mm512_loadu_si512(q + 64 * g);
  } else {
    const __m512i low = _mm512_set1_epi8(0x0f);
    #pragma GCC unroll 8
    for (int t = 0; t < 4; ++t) {
      const __m512i v = _mm512_loadu_si512(q + 64 * t);
      u[t] = _mm512_and_si512(v, low);
      u[t + 4] = _mm512_andnot_si512(low, v);
    }
  }
}

// A set's quants as plain unsigned values (q4_0's high nibbles shifted down).
template <QuantFormat F>
inline void load_set_values(const uint8_t* q, __m512i u[8]) {
  load_set<F>(q, u);
  if constexpr (F == QuantFormat::Q4_0)
#pragma GCC unroll 4
    for (int t = 4; t < 8; ++t) u[t] = _mm512_srli_epi16(u[t], 4);
}

inline __m512i broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return _mm512_set1_epi32(v);
}

// Rows [m0, m0 + R) of x against records [kb0, kb0 + n) of the row group at
// w (its record kb0). y: the group's first column of row m0.
template <QuantFormat F, int R>
void tile(const uint8_t* w, int kb0, int n, const QuantRows& x, int m0, float* y, size_t ldy, const __mmask16* mask,
          bool acc_in) {
  constexpr size_t rec = quant_record_bytes(F);
  constexpr size_t set_bytes = (rec - 2 * kMatvecBlock) / 4;
  const int kblocks = x.K / kQuantBlock;
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j)
      acc[r][j] = acc_in ? _mm512_maskz_loadu_ps(mask[j], y + r * ldy + 16 * j) : _mm512_setzero_ps();
  for (int i = 0; i < n; ++i) {
    const uint8_t* record = w + size_t(i) * rec;
    for (size_t b = 0; b < rec; b += 64) _mm_prefetch(reinterpret_cast<const char*>(record + kAheadBytes + b), _MM_HINT_T1);
    const int kb = kb0 + i;
    // One row: its 8 broadcasts serve all four sets.
    __m512i x1[8];
    if constexpr (R == 1)
      #pragma GCC unroll 8
      for (int g = 0; g < 8; ++g) x1[g] = broadcast4(&x.q[(size_t(m0) * kblocks + kb) * kQuantBlock + 4 * g]);
    #pragma GCC unroll 8
    for (int j = 0; j < 4; ++j) {
      __m512i u[8];
      load_set<F>(record + 2 * kMatvecBlock + j * set_bytes, u);
      const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(record + 32 * j)));
      #pragma GCC unroll 8
      for (int r = 0; r < R; ++r) {
        const size_t xb = size_t(m0 + r) * kblocks + kb;
        const int8_t* xq = &x.q[xb * kQuantBlock];
        auto xg = [&](int g) { return R == 1 ? x1[g] : broadcast4(xq + 4 * g); };
        __m512i s0 = _mm512_setzero_si512(), s1 = _mm512_setzero_si512();  // quants 0..15, 16..31
        #pragma GCC unroll 8
        for (int g = 0; g < 4; ++g) {
          s0 = _mm512_dpbusd_epi32(s0, u[g], xg(g));
          s1 = _mm512_dpbusd_epi32(s1, u[g + 4], xg(g + 4));
        }
        if constexpr (F == QuantFormat::Q4_0) s1 = _mm512_srai_epi32(s1, 4);
        const __m512i s = _mm512_sub_epi32(_mm512_add_epi32(s0, s1), _mm512_set1_epi32(x.off[xb]));
        const __m512 scale = _mm512_mul_ps(dw, _mm512_set1_ps(x.d[xb]));
        acc[r][j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(s), scale, acc[r][j]);
      }
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(y + r * ldy + 16 * j, mask[j], acc[r][j]);
}

template <QuantFormat F>
void rows(int R, const uint8_t* w, int kb0, int n, const QuantRows& x, int m0, float* y, size_t ldy,
          const __mmask16* mask, bool acc_in) {
  switch (R) {
    case 1: return tile<F, 1>(w, kb0, n, x, m0, y, ldy, mask, acc_in);
    case 2: return tile<F, 2>(w, kb0, n, x, m0, y, ldy, mask, acc_in);
    case 3: return tile<F, 3>(w, kb0, n, x, m0, y, ldy, mask, acc_in);
    default: return tile<F, 4>(w, kb0, n, x, m0, y, ldy, mask, acc_in);
  }
}

template <QuantFormat F>
void run(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  constexpr size_t rec = quant_record_bytes(F);
  const int kblocks = W.kblocks();
  for (int b = b0; b < b1; ++b) {
    const uint8_t* group = W.w + size_t(b) * W.group_bytes();
    const int n0 = b * kMatvecBlock, cols = std::min(kMatvecBlock, W.N - n0);
    __mmask16 mask[4];
    for (int j = 0; j < 4; ++j) mask[j] = first16(cols - 16 * j);
    if (x.M <= 4) {
      rows<F>(x.M, group, 0, kblocks, x, 0, y + n0, ldy, mask, false);
      continue;
    }
    for (int kb0 = 0; kb0 < kblocks; kb0 += kChunkRecords<F>) {
      const int n = std::min(kChunkRecords<F>, kblocks - kb0);
      for (int m0 = 0; m0 < x.M; m0 += 4)
        rows<F>(std::min(4, x.M - m0), group + size_t(kb0) * rec, kb0, n, x, m0, y + size_t(m0) * ldy + n0, ldy, mask,
                kb0 > 0);
    }
  }
}

}  // namespace

// The reference's arithmetic on 32 lanes: the same max, divisions and
// rounding (vcvtps2dq rounds to nearest even, as nearbyint does).
void quantize_blocks(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off) {
  for (size_t b = 0; b < n; ++b) {
    const __m512 x0 = _mm512_loadu_ps(x + b * kQuantBlock), x1 = _mm512_loadu_ps(x + b * kQuantBlock + 16);
    // QNaN, SNaN, +inf, -inf.
    const bool finite = (_mm512_fpclass_ps_mask(x0, 0x99) | _mm512_fpclass_ps_mask(x1, 0x99)) == 0;
    const float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(x0), _mm512_abs_ps(x1)));
    const float db = amax / 127, id = db != 0 ? 1 / db : 0;
    if (!finite || !std::isfinite(id)) {  // as the reference: quants 0, the scale NaN or (subnormals) 0
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(q + b * kQuantBlock), _mm256_setzero_si256());
      d[b] = finite ? 0.0f : NAN;
      off[b] = 0;
      continue;
    }
    const __m512 scale = _mm512_set1_ps(id);
    const __m512i q0 = _mm512_cvtps_epi32(_mm512_mul_ps(x0, scale)), q1 = _mm512_cvtps_epi32(_mm512_mul_ps(x1, scale));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kQuantBlock), _mm512_cvtepi32_epi8(q0));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(q + b * kQuantBlock + 16), _mm512_cvtepi32_epi8(q1));
    d[b] = db;
    off[b] = offset * _mm512_reduce_add_epi32(_mm512_add_epi32(q0, q1));
  }
}

// Rows 4P..4P+3 of a step of quants (16 bytes), less the offset, times their
// scales, as 16 bf16 (P an immediate: unoptimized builds cannot fold a loop's).
template <int P>
inline __m256i dequantize_rows(__m512i u, __m512i off, __m512 scale) {
  const __m512i q = _mm512_sub_epi32(_mm512_cvtepu8_epi32(_mm512_extracti32x4_epi32(u, P)), off);
  return __m256i(_mm512_cvtneps_pbh(_mm512_mul_ps(_mm512_cvtepi32_ps(q), scale)));
}

// One record's 64 x 32 quants into bf16 steps: each 64-byte step of a set (16
// rows x quants 4g..4g+3) becomes two output steps' 16-row slices, quants
// (4g, 4g+1) and (4g+2, 4g+3) of each row.
template <QuantFormat F>
void dequantize_record(const uint8_t* record, uint16_t* out, size_t step_elems) {
  constexpr size_t set_bytes = (quant_record_bytes(F) - 2 * kMatvecBlock) / 4;
  const __m512i off = _mm512_set1_epi32(quant_offset(F));
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_add_epi32(even, _mm512_set1_epi32(1));
#pragma GCC unroll 4
  for (int j = 0; j < 4; ++j) {
    __m512i u[8];
    load_set_values<F>(record + 2 * kMatvecBlock + j * set_bytes, u);
    const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(record + 32 * j)));
    __m512 scale[4];  // rows 4p..4p+3, each scale four times
#pragma GCC unroll 4
    for (int p = 0; p < 4; ++p)
      scale[p] = _mm512_permutexvar_ps(_mm512_srli_epi32(_mm512_add_epi32(_mm512_set1_epi32(16 * p),
                                                                          _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9,
                                                                                            10, 11, 12, 13, 14, 15)),
                                                         2),
                                       dw);
#pragma GCC unroll 8
    for (int g = 0; g < 8; ++g) {
      // Rows 4p..4p+3 as bf16: (q0, q1), (q2, q3) per row.
      const __m256i h[4] = {dequantize_rows<0>(u[g], off, scale[0]), dequantize_rows<1>(u[g], off, scale[1]),
                            dequantize_rows<2>(u[g], off, scale[2]), dequantize_rows<3>(u[g], off, scale[3])};
      const __m512i a = _mm512_inserti64x4(_mm512_castsi256_si512(h[0]), h[1], 1);
      const __m512i b = _mm512_inserti64x4(_mm512_castsi256_si512(h[2]), h[3], 1);
      uint16_t* o = out + size_t(2 * g) * step_elems + 32 * j;
      _mm512_storeu_si512(o, _mm512_permutex2var_epi32(a, even, b));
      _mm512_storeu_si512(o + step_elems, _mm512_permutex2var_epi32(a, odd, b));
    }
  }
}

void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  W.format == QuantFormat::Q8_0 ? run<QuantFormat::Q8_0>(W, x, y, ldy, b0, b1)
                                : run<QuantFormat::Q4_0>(W, x, y, ldy, b0, b1);
}

void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out) {
  for_each_record(W, b0, b1, out, [](QuantFormat f, const uint8_t* record, uint16_t* o, size_t step) {
    f == QuantFormat::Q8_0 ? dequantize_record<QuantFormat::Q8_0>(record, o, step)
                           : dequantize_record<QuantFormat::Q4_0>(record, o, step);
  });
}

}  // namespace sparq::avx512bf16
