// matvec_quant.h's kernels at the avx2 and avx512 tiers, which have no
// vpdpbusd: a block's integer dot products by vpmaddubsw (u8 x s8 pairs
// summed to s16, saturating) and vpmaddwd (pairs of s16 to s32), arranged
// so nothing can saturate, and so with the same exact integer sums and the
// same float steps as the reference (equal to it to the bit):
// - q8_0: the stored u = q + 128 meets int8 activations with pairs up to
//   2 * 255 * 127, past s16. So q = u ^ 0x80 (as int8), and |q| times the
//   activation with q's sign: pairs up to 2 * 128 * 127 = 32512 (128 only in
//   the zero rows past N). The sum is q's directly, no offset to take out.
// - q4_0: the nibbles u = q + 8 (<= 15) meet the activations as they are:
//   pairs up to 2 * 15 * 127, so a block's 8 products of a row add up in
//   s16 (<= 30480) before one vpmaddwd; the offset's share comes out after.
// An output register holds kLanes rows: a record's 64-byte step of a set
// (16 rows x 4 quants) is one AVX-512 register or two AVX2 ones, and each
// 32-bit lane sums its row's 4 quants against 4 broadcast activations.
// Up to four rows of activations share each load of the weights; more go four
// at a time over chunks of a row group small enough to stay in L2.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "sparq/kernels/matvec_quant.h"
#include "sparq/kernels/simd.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

constexpr int kRegs = kMatvecBlock / kLanes;  // output registers of a row group: 8 or 4
constexpr int kMaxRows = 4;
template <QuantFormat F>
constexpr int kChunkRecords = int(65536 / quant_record_bytes(F));  // 64 KiB of a row group
constexpr int kAheadBytes = 4096;                                  // L2 prefetch distance

// Byte lanes: the integer ops the kernels need beyond simd.h's.
#if SPARQ_SIMD_512
inline VI load_i(const void* p) { return _mm512_loadu_si512(p); }
inline void store_i(void* p, VI v) { _mm512_storeu_si512(p, v); }
inline VI set1_i8(char v) { return _mm512_set1_epi8(v); }
inline VI xor_i(VI a, VI b) { return _mm512_xor_si512(a, b); }
inline VI abs_i8(VI a) { return _mm512_abs_epi8(a); }
// a negated where b < 0 (where b is 0 the product with |b| is 0 anyway).
inline VI sign_i8(VI a, VI b) { return _mm512_mask_sub_epi8(a, _mm512_movepi8_mask(b), _mm512_setzero_si512(), a); }
inline VI maddubs(VI u, VI s) { return _mm512_maddubs_epi16(u, s); }
inline VI madd_pairs(VI a) { return _mm512_madd_epi16(a, _mm512_set1_epi16(1)); }
inline VI add_i16(VI a, VI b) { return _mm512_add_epi16(a, b); }
inline VI sub_i(VI a, VI b) { return _mm512_sub_epi32(a, b); }
inline VI srl_i16(VI a, int n) { return _mm512_srli_epi16(a, unsigned(n)); }
inline VF load_f16(const uint8_t* p) { return _mm512_cvtph_ps(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p))); }
#else
inline VI load_i(const void* p) { return _mm256_loadu_si256(static_cast<const __m256i*>(p)); }
inline void store_i(void* p, VI v) { _mm256_storeu_si256(static_cast<__m256i*>(p), v); }
inline VI set1_i8(char v) { return _mm256_set1_epi8(v); }
inline VI xor_i(VI a, VI b) { return _mm256_xor_si256(a, b); }
inline VI abs_i8(VI a) { return _mm256_abs_epi8(a); }
inline VI sign_i8(VI a, VI b) { return _mm256_sign_epi8(a, b); }
inline VI maddubs(VI u, VI s) { return _mm256_maddubs_epi16(u, s); }
inline VI madd_pairs(VI a) { return _mm256_madd_epi16(a, _mm256_set1_epi16(1)); }
inline VI add_i16(VI a, VI b) { return _mm256_add_epi16(a, b); }
inline VI sub_i(VI a, VI b) { return _mm256_sub_epi32(a, b); }
inline VI srl_i16(VI a, int n) { return _mm256_srli_epi16(a, n); }
inline VF load_f16(const uint8_t* p) { return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p))); }
#endif

inline VI broadcast4(const int8_t* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return set1_i(v);
}

// Where output register c's quants start in a record: its set of 16 rows,
// and its rows' place within each 64-byte step of the set.
template <QuantFormat F>
constexpr size_t quants_at(int c) {
  constexpr size_t set_bytes = (quant_record_bytes(F) - 2 * kMatvecBlock) / 4;
  return 2 * kMatvecBlock + size_t(c * kLanes / 16) * set_bytes + size_t(c * kLanes % 16) * 4;
}

// Rows [m0, m0 + R) of x against records [kb0, kb0 + n) of the row group at
// w (its record kb0). y: the group's first column of row m0.
template <QuantFormat F, int R>
void tile(const uint8_t* w, int kb0, int n, const QuantRows& x, int m0, float* y, size_t ldy, int cols, bool acc_in,
          bool prefetch) {
  constexpr size_t rec = quant_record_bytes(F);
  const int kblocks = x.K / kQuantBlock;
  VF acc[R][kRegs];
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < kRegs; ++c)
      acc[r][c] = acc_in ? load_first(y + r * ldy + kLanes * c, cols - kLanes * c) : zero();
  for (int i = 0; i < n; ++i) {
    const uint8_t* record = w + size_t(i) * rec;
    if (prefetch)
      for (size_t b = 0; b < rec; b += 64) _mm_prefetch(reinterpret_cast<const char*>(record + kAheadBytes + b), _MM_HINT_T1);
    const int kb = kb0 + i;
    const int8_t* xq[R];
    float dx[R];
    VI off[R];
#pragma GCC unroll 4
    for (int r = 0; r < R; ++r) {
      const size_t xb = size_t(m0 + r) * kblocks + kb;
      xq[r] = &x.q[xb * kQuantBlock];
      dx[r] = x.d[xb];
      off[r] = set1_i(x.off[xb]);
    }
#pragma GCC unroll 8
    for (int c = 0; c < kRegs; ++c) {
      const uint8_t* q = record + quants_at<F>(c);
      VI s[R];
      if constexpr (F == QuantFormat::Q8_0) {
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) s[r] = set1_i(0);
#pragma GCC unroll 8
        for (int g = 0; g < 8; ++g) {  // quants 4g..4g+3
          const VI qs = xor_i(load_i(q + 64 * g), set1_i8(char(0x80)));
          const VI qa = abs_i8(qs);
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r)
            s[r] = add_i(s[r], madd_pairs(maddubs(qa, sign_i8(broadcast4(xq[r] + 4 * g), qs))));
        }
      } else {
        VI s16[R];
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) s16[r] = set1_i(0);
#pragma GCC unroll 4
        for (int t = 0; t < 4; ++t) {  // quants 4t..4t+3 (low nibbles) and 16+4t.. (high)
          const VI v = load_i(q + 64 * t), low = set1_i8(0x0f);
          const VI lo = and_i(v, low), hi = and_i(srl_i16(v, 4), low);
#pragma GCC unroll 4
          for (int r = 0; r < R; ++r)
            s16[r] = add_i16(s16[r], add_i16(maddubs(lo, broadcast4(xq[r] + 4 * t)),
                                             maddubs(hi, broadcast4(xq[r] + 16 + 4 * t))));
        }
#pragma GCC unroll 4
        for (int r = 0; r < R; ++r) s[r] = sub_i(madd_pairs(s16[r]), off[r]);
      }
      const VF dw = load_f16(record + 2 * kLanes * c);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) acc[r][c] = fmadd(to_float(s[r]), mul(dw, set1(dx[r])), acc[r][c]);
    }
  }
#pragma GCC unroll 4
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int c = 0; c < kRegs; ++c) store_first(y + r * ldy + kLanes * c, acc[r][c], cols - kLanes * c);
}

template <QuantFormat F>
void rows(int R, const uint8_t* w, int kb0, int n, const QuantRows& x, int m0, float* y, size_t ldy, int cols,
          bool acc_in, bool prefetch) {
  switch (R) {
    case 1: return tile<F, 1>(w, kb0, n, x, m0, y, ldy, cols, acc_in, prefetch);
    case 2: return tile<F, 2>(w, kb0, n, x, m0, y, ldy, cols, acc_in, prefetch);
    case 3: return tile<F, 3>(w, kb0, n, x, m0, y, ldy, cols, acc_in, prefetch);
    default: return tile<F, 4>(w, kb0, n, x, m0, y, ldy, cols, acc_in, prefetch);
  }
}

template <QuantFormat F>
void run(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  constexpr size_t rec = quant_record_bytes(F);
  const int kblocks = W.kblocks();
  for (int b = b0; b < b1; ++b) {
    const uint8_t* group = W.w + size_t(b) * W.group_bytes();
    const int n0 = b * kMatvecBlock, cols = std::min(kMatvecBlock, W.N - n0);
    if (x.M <= kMaxRows) {
      rows<F>(x.M, group, 0, kblocks, x, 0, y + n0, ldy, cols, false, true);
      continue;
    }
    for (int kb0 = 0; kb0 < kblocks; kb0 += kChunkRecords<F>) {
      const int n = std::min(kChunkRecords<F>, kblocks - kb0);
      for (int m0 = 0; m0 < x.M; m0 += kMaxRows)
        rows<F>(std::min(kMaxRows, x.M - m0), group + size_t(kb0) * rec, kb0, n, x, m0, y + size_t(m0) * ldy + n0,
                ldy, cols, kb0 > 0, m0 == 0);
    }
  }
}

// Stores `half` rows' 4 quants each (4 * half bytes at p, as u - offset)
// times their scales as bf16 pairs: quants (0, 1) of each row at o0, (2, 3)
// at o1. scale: [d0 d0 d1 d1 ...].
inline void dequantize_rows(const uint8_t* p, VI off, VF scale, uint16_t* o0, uint16_t* o1) {
  // Within each 16 bytes (4 rows): every row's bytes 0, 1 first, then 2, 3.
  const __m128i order = _mm_setr_epi8(0, 1, 4, 5, 8, 9, 12, 13, 2, 3, 6, 7, 10, 11, 14, 15);
#if SPARQ_SIMD_512
  __m256i v = _mm256_shuffle_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                                  _mm256_broadcastsi128_si256(order));
  v = _mm256_permute4x64_epi64(v, 0xd8);  // the 8 rows' (0, 1), then their (2, 3)
  const VI a = _mm512_cvtepu8_epi32(_mm256_castsi256_si128(v)), b = _mm512_cvtepu8_epi32(_mm256_extracti128_si256(v, 1));
#else
  const __m128i v = _mm_shuffle_epi8(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)), order);
  const VI a = _mm256_cvtepu8_epi32(v), b = _mm256_cvtepu8_epi32(_mm_srli_si128(v, 8));
#endif
  store_bf16(o0, mul(to_float(sub_i(a, off)), scale));
  store_bf16(o1, mul(to_float(sub_i(b, off)), scale));
}

// One record's 64 x 32 quants into bf16 steps (matvec.h's layout, step_elems
// apart): a set's 4 quants 4g..4g+3 of 16 rows become two output steps' 16-row
// slices, quants (4g, 4g+1) and (4g+2, 4g+3) of each row.
template <QuantFormat F>
void dequantize_record(const uint8_t* record, uint16_t* out, size_t step_elems) {
  constexpr size_t set_bytes = (quant_record_bytes(F) - 2 * kMatvecBlock) / 4;
  constexpr int half = kLanes / 2;  // rows per output register
  const VI off = set1_i(quant_offset(F));
#if SPARQ_SIMD_512
  const VI twice = _mm512_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7);
#else
  const VI twice = _mm256_setr_epi32(0, 0, 1, 1, 2, 2, 3, 3);
#endif
  for (int j = 0; j < 4; ++j) {
    const uint8_t* qs = record + 2 * kMatvecBlock + size_t(j) * set_bytes;
    VF scale[16 / half];
    for (int h = 0; h < 16 / half; ++h) {
      const VF d = load_f16(record + 2 * (16 * j + half * h));  // lanes 0..half-1 used
#if SPARQ_SIMD_512
      scale[h] = _mm512_permutexvar_ps(twice, d);
#else
      scale[h] = _mm256_permutevar8x32_ps(d, twice);
#endif
    }
    // Quants 4g..4g+3 of the set's rows, 64 bytes (q4_0: split into nibbles).
    alignas(64) uint8_t bytes[8][64];
    if constexpr (F == QuantFormat::Q8_0) {
      std::memcpy(bytes, qs, sizeof bytes);
    } else {
      for (int t = 0; t < 4; ++t)
        for (int i = 0; i < 64; i += int(sizeof(VI))) {
          const VI v = load_i(qs + 64 * t + i), low = set1_i8(0x0f);
          store_i(&bytes[t][i], and_i(v, low));
          store_i(&bytes[t + 4][i], and_i(srl_i16(v, 4), low));
        }
    }
    for (int g = 0; g < 8; ++g)
      for (int h = 0; h < 16 / half; ++h) {
        uint16_t* o = out + size_t(2 * g) * step_elems + 32 * j + 2 * half * h;
        dequantize_rows(&bytes[g][4 * half * h], off, scale[h], o, o + step_elems);
      }
  }
}

}  // namespace

void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1) {
  W.format == QuantFormat::Q8_0 ? run<QuantFormat::Q8_0>(W, x, y, ldy, b0, b1)
                                : run<QuantFormat::Q4_0>(W, x, y, ldy, b0, b1);
}

// The reference's arithmetic on lanes: the same max, divisions and rounding
// (vcvtps2dq rounds to nearest even, as nearbyint does).
void quantize_blocks(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off) {
  constexpr int V = kQuantBlock / kLanes;
  for (size_t b = 0; b < n; ++b) {
    const float* xb = x + b * kQuantBlock;
    VF v[V], amax = zero();
    bool finite = true;
    for (int i = 0; i < V; ++i) {
      v[i] = load(xb + kLanes * i);
      const VF a = abs(v[i]);
      finite = finite && mask_bits(le(a, set1(3.40282347e38f))) == (1u << kLanes) - 1;  // NaN, inf: not <=
      amax = max(a, amax);
    }
    const float db = reduce_max(amax) / 127, id = db != 0 ? 1 / db : 0;
    int8_t* qb = q + b * kQuantBlock;
    if (!finite || !std::isfinite(id)) {  // as the reference: quants 0, the scale NaN or (subnormals) 0
      std::memset(qb, 0, kQuantBlock);
      d[b] = finite ? 0.0f : NAN;
      off[b] = 0;
      continue;
    }
    VI qi[V], sum = set1_i(0);
    for (int i = 0; i < V; ++i) {
      qi[i] = to_int(mul(v[i], set1(id)));
      sum = add_i(sum, qi[i]);
    }
#if SPARQ_SIMD_512
    for (int i = 0; i < V; ++i) _mm_storeu_si128(reinterpret_cast<__m128i*>(qb + 16 * i), _mm512_cvtepi32_epi8(qi[i]));
    const int total = _mm512_reduce_add_epi32(sum);
#else
    // Within [-127, 127]: the saturating packs keep every value; the
    // permutation undoes their interleaving of 128-bit halves.
    const __m256i packed = _mm256_permutevar8x32_epi32(
        _mm256_packs_epi16(_mm256_packs_epi32(qi[0], qi[1]), _mm256_packs_epi32(qi[2], qi[3])),
        _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb), packed);
    __m128i s = _mm_add_epi32(_mm256_castsi256_si128(sum), _mm256_extracti128_si256(sum, 1));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0x4e));
    s = _mm_add_epi32(s, _mm_shuffle_epi32(s, 0xb1));
    const int total = _mm_cvtsi128_si32(s);
#endif
    d[b] = db;
    off[b] = offset * total;
  }
}

void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out) {
  for_each_record(W, b0, b1, out, [](QuantFormat f, const uint8_t* record, uint16_t* o, size_t step) {
    f == QuantFormat::Q8_0 ? dequantize_record<QuantFormat::Q8_0>(record, o, step)
                           : dequantize_record<QuantFormat::Q4_0>(record, o, step);
  });
}

}  // namespace sparq::SPARQ_TIER_NS
