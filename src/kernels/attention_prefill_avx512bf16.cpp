// AVX-512 dense causal attention for prompt queries (prefill), blocked like a
// matrix product: up to 64 query vectors of one KV head at a time, their
// lanes across registers, so each key or value element read is one broadcast
// multiplied into 16 queries, and the online softmax runs down the lanes with
// no horizontal sums. Keys and values are read once per tile, kBlock rows at
// a time; the block's scores, then its weights, sit in a [position][query]
// buffer that stays in L1. (The decode kernel, run once per prompt row,
// rereads every key and value for each row.)
// bf16 caches: scores are bf16 dot products over component pairs with q
// rounded to bf16, as in the decode kernel, and the weights are rounded to
// bf16 too, so the weighted sum of values is also vdpbf16ps over pairs of
// rows: half the instructions of f32 FMAs, which bound this kernel (1.5x
// faster at S = 16k). A weight is then off by at most 2^-8 relative, an
// output by 2^-8 of the weighted mean of |v|; sums are f32. f32 caches: f32
// throughout.
// The pragmas silence GCC 12.2 false positives from immintrin.h (PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <type_traits>
#include <vector>

#include "sparq/kernels/attention_dense.h"
#include "sparq/kernels/prefill_tiles.h"
#include "sparq/kernels/avx512bf16_lanes.h"

namespace sparq::avx512bf16 {
namespace {

constexpr int kMaxRegs = 4;  // registers of 16 query vectors in a tile
constexpr int kBlock = 64;   // key and value rows per block

// Rows (scores) or components (values) per register-blocked pass over NV
// registers of queries: NV times this many accumulators, 24 of the 32.
template <int NV>
constexpr int kPass = 24 / NV;

template <int A, int B>
inline void zero(__m512 (&a)[A][B]) {
  for (int i = 0; i < A; ++i)
    for (int j = 0; j < B; ++j) a[i][j] = _mm512_setzero_ps();
}

// The 4 bytes at p as a T (no alignment needed).
template <class T>
inline T load_as(const uint8_t* p) {
  T x;
  std::memcpy(&x, p, 4);
  return x;
}

// One multiply-add step of both products: acc + w * broadcast(x), in f32, or
// over bf16 pairs (two products per lane) by vdpbf16ps.
inline __m512 lanes(const float* p) { return _mm512_load_ps(p); }
inline __m512i lanes(const uint32_t* p) { return _mm512_load_si512(p); }
inline __m512 madd(__m512 acc, __m512 w, float x) { return _mm512_fmadd_ps(w, _mm512_set1_ps(x), acc); }
inline __m512 madd(__m512 acc, __m512i w, uint32_t x) {
  return _mm512_dpbf16_ps(acc, __m512bh(w), __m512bh(_mm512_set1_epi32(int(x))));
}

// st[u][i] = scale * q_i . k_u for U key rows from k (scaled here: fused
// into the softmax's subtraction, the product's rounding would keep the max
// from weighing exactly 1). bf16: qp is [d / 2 (+1)][16 NV] component pairs;
// an odd last component pairs with 0 and is read alone, as the next row
// follows it. f32: qp is [d][16 NV].
template <bool BF16, int NV, int U>
void score_rows(const uint8_t* k, size_t row_bytes, int d, const void* qp, float scale, float* st) {
  using E = std::conditional_t<BF16, uint32_t, float>;  // a component (pair) of q and of a key
  constexpr int W = 16 * NV;
  const auto* q = static_cast<const E*>(qp);
  __m512 acc[U][NV];
  zero(acc);
  auto step = [&](int j, auto key) {
    decltype(lanes(q)) qv[NV];
    for (int v = 0; v < NV; ++v) qv[v] = lanes(q + size_t(j) * W + 16 * v);
    for (int u = 0; u < U; ++u) {
      const E x = key(k + u * row_bytes + 4 * size_t(j));
      for (int v = 0; v < NV; ++v) acc[u][v] = madd(acc[u][v], qv[v], x);
    }
  };
  for (int j = 0; j < (BF16 ? d / 2 : d); ++j) step(j, load_as<E>);
  if constexpr (BF16)
    if (d % 2)
      step(d / 2, [](const uint8_t* p) {
        uint16_t h;
        std::memcpy(&h, p, 2);
        return uint32_t(h);
      });
  const __m512 vs = _mm512_set1_ps(scale);
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(st + u * W + 16 * v, _mm512_mul_ps(vs, acc[u][v]));
}

template <bool BF16, int NV>
void block_scores(const uint8_t* k, size_t row_bytes, int n, int d, const void* qp, float scale, float* st) {
  constexpr int W = 16 * NV, U = kPass<NV>;
  int u = 0;
  for (; u + U <= n; u += U) score_rows<BF16, NV, U>(k + u * row_bytes, row_bytes, d, qp, scale, st + u * W);
  with_count<U - 1>(n - u, [&](auto r) {
    score_rows<BF16, NV, decltype(r)::value>(k + u * row_bytes, row_bytes, d, qp, scale, st + u * W);
  });
}

// Online softmax over a block of n rows starting at position b0: the scores
// in st become weights exp2(s - m) (0 past a query's last position when
// masked), m and l are updated and f gets the factor by which what was
// accumulated before this block shrinks.
template <int NV>
void block_softmax(float* st, int n, int b0, bool masked, const int* last, float* m, float* l, __m512 (&f)[NV]) {
  constexpr int W = 16 * NV;
  __m512i lastv[NV];
  __m512 mx[NV], mnew[NV], sum[NV];
  for (int v = 0; v < NV; ++v) {
    lastv[v] = _mm512_load_si512(last + 16 * v);
    mx[v] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    sum[v] = _mm512_setzero_ps();
  }
  auto visible = [&](int u, int v) {
    return masked ? _mm512_cmple_epi32_mask(_mm512_set1_epi32(b0 + u), lastv[v]) : __mmask16(0xffff);
  };
  for (int u = 0; u < n; ++u)
    for (int v = 0; v < NV; ++v) mx[v] = _mm512_mask_max_ps(mx[v], visible(u, v), mx[v], _mm512_load_ps(st + u * W + 16 * v));
  for (int v = 0; v < NV; ++v) {
    const __m512 mold = _mm512_load_ps(m + 16 * v);
    mnew[v] = _mm512_max_ps(mold, mx[v]);
    f[v] = exp2(_mm512_sub_ps(mold, mnew[v]));
    _mm512_store_ps(m + 16 * v, mnew[v]);
  }
  for (int u = 0; u < n; ++u)
    for (int v = 0; v < NV; ++v) {
      float* s = st + u * W + 16 * v;
      const __m512 p = _mm512_maskz_mov_ps(visible(u, v), exp2(_mm512_sub_ps(_mm512_load_ps(s), mnew[v])));
      _mm512_store_ps(s, p);
      sum[v] = _mm512_add_ps(sum[v], p);
    }
  for (int v = 0; v < NV; ++v)
    _mm512_store_ps(l + 16 * v, _mm512_fmadd_ps(_mm512_load_ps(l + 16 * v), f[v], sum[v]));
}

// ot[c][i] = f_i * ot[c][i] + sum_j w[j][i] * val[j][c] for C components,
// val rows vstride elements apart. E = float: w is [n][16 NV] weights, val
// f32 rows. E = uint32_t: each j is a pair of rows, w [pairs][16 NV] bf16
// weight pairs and val [pairs][vstride] value pairs (rows 2j and 2j + 1 of
// component c in word c of pair row j).
template <class E, int NV, int C>
void value_cols(const E* val, size_t vstride, int steps, const E* w, const __m512 (&f)[NV], float* ot) {
  constexpr int W = 16 * NV;
  __m512 acc[C][NV];
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < NV; ++v) acc[c][v] = _mm512_mul_ps(f[v], _mm512_load_ps(ot + c * W + 16 * v));
  for (int j = 0; j < steps; ++j) {
    decltype(lanes(w)) p[NV];
    for (int v = 0; v < NV; ++v) p[v] = lanes(w + j * W + 16 * v);
    for (int c = 0; c < C; ++c)
      for (int v = 0; v < NV; ++v) acc[c][v] = madd(acc[c][v], p[v], val[j * vstride + c]);
  }
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < NV; ++v) _mm512_store_ps(ot + c * W + 16 * v, acc[c][v]);
}

template <class E, int NV>
void block_values(const E* val, int steps, int d, const E* w, const __m512 (&f)[NV], float* ot) {
  constexpr int W = 16 * NV, C = kPass<NV>;
  int c = 0;
  for (; c + C <= d; c += C) value_cols<E, NV, C>(val + c, size_t(d), steps, w, f, ot + c * W);
  with_count<C - 1>(d - c, [&](auto r) { value_cols<E, NV, decltype(r)::value>(val + c, size_t(d), steps, w, f, ot + c * W); });
}

// A vpermw index: words first + i and first + i + apart, for i < 16, in turn.
inline __m512i interleaved_words(int first, int apart) {
  alignas(64) int16_t idx[32];
  for (int i = 0; i < 16; ++i) {
    idx[2 * i] = int16_t(first + i);
    idx[2 * i + 1] = int16_t(first + i + apart);
  }
  return _mm512_load_si512(idx);
}

// The n rows of weights in st ([n][16 NV] f32) as bf16 pairs of rows, an odd
// last row paired with 0.
template <int NV>
void weight_pairs(const float* st, int n, uint32_t* wp) {
  constexpr int W = 16 * NV;
  const __m512i mix = interleaved_words(0, 16);
  for (int j = 0; 2 * j < n; ++j)
    for (int v = 0; v < NV; ++v) {
      const __m512 a = _mm512_load_ps(st + 2 * j * W + 16 * v);
      const __m512 b = 2 * j + 1 < n ? _mm512_load_ps(st + (2 * j + 1) * W + 16 * v) : _mm512_setzero_ps();
      const __m512i ab = __m512i(_mm512_cvtne2ps_pbh(b, a));  // a in words 0..15, b in 16..31
      _mm512_store_si512(wp + j * W + 16 * v, _mm512_permutexvar_epi16(mix, ab));
    }
}

// Rows 2j and 2j + 1 of n bf16 value rows, interleaved component by
// component into row j of vp; an odd last row is paired with 0.
void value_rows_paired(const uint16_t* src, int n, int d, uint32_t* vp) {
  const __m512i lo = interleaved_words(0, 32), hi = interleaved_words(16, 32);
  for (int j = 0; 2 * j < n; ++j) {
    const uint16_t* a = src + size_t(2 * j) * d;
    const bool two = 2 * j + 1 < n;
    for (int c = 0; c < d; c += 32) {
      const __mmask32 k = first32(d - c);
      const __m512i x = _mm512_maskz_loadu_epi16(k, a + c);
      const __m512i y = two ? _mm512_maskz_loadu_epi16(k, a + d + c) : _mm512_setzero_si512();
      uint32_t* out = vp + size_t(j) * d + c;
      _mm512_mask_storeu_epi32(out, first16(d - c), _mm512_permutex2var_epi16(x, lo, y));
      _mm512_mask_storeu_epi32(out + 16, first16(d - c - 16), _mm512_permutex2var_epi16(x, hi, y));
    }
  }
}

// Query vectors [i0, i0 + n) of s, n <= 16 * NV. Unused lanes get q = 0 and
// the tile's largest last position, and their results are dropped.
template <bool BF16, int NV>
void tile(const PrefillSpan& s, int i0, int n, int lo, int hi) {
  constexpr int W = 16 * NV;
  constexpr size_t E = BF16 ? 2 : 4;
  const int d = s.d, steps = BF16 ? (d + 1) / 2 : d;  // rows of qp
  thread_local std::vector<float> buf;
  buf.resize(size_t(W) * (steps + kBlock * 3 / 2 + d + 2) + size_t(kBlock) * d / 2 + 16);
  float* qp = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) / 4 % 16) % 16;
  float* st = qp + size_t(steps) * W;
  float* ot = st + size_t(kBlock) * W;
  float* m = ot + size_t(d) * W;
  float* l = m + W;
  auto* wp = reinterpret_cast<uint32_t*>(l + W);      // weight pairs (bf16)
  auto* vp = wp + size_t(kBlock / 2) * W;             // value pairs (bf16)
  alignas(64) int last[W];

  for (int i = 0; i < W; ++i) {
    const float* q = i < n ? s.q[i0 + i] : nullptr;
    last[i] = i < n ? s.last[i0 + i] : hi;
    for (int j = 0; j < steps; ++j) {
      if constexpr (BF16)
        reinterpret_cast<uint32_t*>(qp)[size_t(j) * W + i] = q ? bf16_pair(q + 2 * j, 2 * j + 1 < d) : 0;
      else
        qp[size_t(j) * W + i] = q ? q[j] : 0.0f;
    }
  }
  std::fill(ot, ot + size_t(d) * W, 0.0f);
  std::fill(m, m + W, -std::numeric_limits<float>::infinity());
  std::fill(l, l + W, 0.0f);
  // Scores in log2 units, for exp2.
  const float scale = std::numbers::log2e_v<float> / std::sqrt(float(d));

  const auto* K = static_cast<const uint8_t*>(s.k);
  const size_t row_bytes = size_t(d) * E;
  for (int b0 = 0; b0 <= hi; b0 += kBlock) {
    const int nb = std::min(kBlock, hi + 1 - b0);
    block_scores<BF16, NV>(K + size_t(b0) * row_bytes, row_bytes, nb, d, qp, scale, st);
    __m512 f[NV];
    block_softmax<NV>(st, nb, b0, b0 + nb - 1 > lo, last, m, l, f);
    if constexpr (BF16) {
      weight_pairs<NV>(st, nb, wp);
      value_rows_paired(static_cast<const uint16_t*>(s.v) + size_t(b0) * d, nb, d, vp);
      block_values<uint32_t, NV>(vp, (nb + 1) / 2, d, wp, f, ot);
    } else {
      block_values<float, NV>(static_cast<const float*>(s.v) + size_t(b0) * d, nb, d, st, f, ot);
    }
  }
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < d; ++c) s.out[i0 + i][c] = ot[size_t(c) * W + i] / l[i];
}

}  // namespace

void prefill_attention(const PrefillSpan& s) {
  // q8_0 blocks are dequantized to f32 either way: the avx512 build does that.
  if (s.type == KVType::Q8_0) return avx512::prefill_attention(s);
  prefill_tiles<16, kMaxRegs>(s, [&](auto type, auto nv, int i0, int n, int lo, int hi) {
    constexpr KVType t = decltype(type)::value;
    if constexpr (t != KVType::Q8_0) tile<t == KVType::BF16, decltype(nv)::value>(s, i0, n, lo, hi);
  });
}

}  // namespace sparq::avx512bf16
