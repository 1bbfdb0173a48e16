// AVX-512 dense decode kernel. Scores come from the transposed key copy
// (positions contiguous per component), so one instruction multiplies a
// broadcast q component into 16 positions and no horizontal sums are needed;
// the weighted sum runs over the value rows. Every byte is read once for all
// query heads of the group.
// For bf16 caches the scores are bf16 dot products (vdpbf16ps, two products
// per lane and instruction: half the FMAs, which bound groups of 4), so q is
// rounded to bf16 as the keys already are; llama.cpp does the same with a
// bf16 K cache. Products are exact and sums f32. The weights and the value
// sums stay f32: bf16 values become f32 by a shift (even elements) and a mask
// (odd elements); the value accumulators are kept in that even/odd order and
// put back in natural order at the end.
// The pragmas silence GCC 12.2 false positives from immintrin.h (PR 105593).
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <vector>

#include "sparq/kernels/attention_dense.h"
#include "sparq/kernels/avx512bf16_lanes.h"
#include "sparq/kernels/kv_cache.h"

namespace sparq::avx512bf16 {
namespace {

constexpr int kB = KVCache::kBlock;  // positions per k_t block
constexpr int kTile = 16;            // value rows per tile
// Prefetch distances: key blocks of score_positions<G>() ahead, value rows
// ahead. Measured best at S = 32k; fetches are spread over the loops that
// compute, as bursts of them stall the core.
constexpr int kKeysAhead = 2;
constexpr int kValuesAhead = 64;

// 32 consecutive elements as two f32 vectors: bf16 gives (even, odd)
// elements, f32 gives (first 16, last 16). Masked-off elements are 0.
template <bool BF16>
inline void load32(const uint8_t* p, __mmask32 mask, __m512& a, __m512& b) {
  if constexpr (BF16)
    avx512bf16::load32(reinterpret_cast<const uint16_t*>(p), mask, a, b);
  else
    avx512bf16::load32(reinterpret_cast<const float*>(p), mask, a, b);
}

// Index in load32's order of natural element c.
template <bool BF16>
inline int split_index(int c) {
  const int j = c / 32, i = c % 32;
  return BF16 ? j * 32 + (i % 2) * 16 + i / 2 : c;
}


template <int A, int B>
inline void zero(__m512 (&a)[A][B]) {
#pragma GCC unroll 8
  for (int i = 0; i < A; ++i)
#pragma GCC unroll 8
    for (int j = 0; j < B; ++j) a[i][j] = _mm512_setzero_ps();
}

// Into L2: an L1 prefetch holds one of L1's few miss buffers until its line
// arrives, and a stream of them stalled the loads behind (into L2: 58-64% ->
// 84-99% of the same-run read at S = 32k, d = 64, group 1; 49-62% -> 84-101%
// at group 4).
inline void prefetch(const uint8_t* p, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 64) _mm_prefetch(reinterpret_cast<const char*>(p + i), _MM_HINT_T1);
}

// Positions whose scores are computed together for G heads: 2*(n/32)*G
// accumulators, 16 of the 32 registers.
template <int G>
constexpr int score_positions() { return 32 * (8 / G); }

// Positions per softmax chunk: the max, the exponentials and the rescaling
// of the sums run once per chunk for every group size, over independent
// heads, so their latency chains overlap. Divides kB: no chunk crosses a k_t
// block.
constexpr int kChunk = 256;

// The score vectors lo/hi[v][h] (16 positions each, in order once permuted
// for bf16) go to sc[h * kChunk + 32 * v ..], scaled, and mx[h] keeps their max
// over the first n positions.
template <int NV, int G>
inline void store_scores(__m512 (&lo)[NV][G], __m512 (&hi)[NV][G], int n, float scale, float* sc, __m512 (&mx)[G]) {
  const __m512 vs = _mm512_set1_ps(scale);
  for (int v = 0; v < NV; ++v) {
    const __mmask16 m0 = first16(n - 32 * v), m1 = first16(n - 32 * v - 16);
    for (int h = 0; h < G; ++h) {
      const __m512 a = _mm512_mul_ps(vs, lo[v][h]), b = _mm512_mul_ps(vs, hi[v][h]);
      mx[h] = _mm512_mask_max_ps(mx[h], m0, mx[h], a);
      mx[h] = _mm512_mask_max_ps(mx[h], m1, mx[h], b);
      float* out = sc + h * kChunk + 32 * v;
      _mm512_storeu_ps(out, a);
      _mm512_storeu_ps(out + 16, b);
    }
  }
}

// Lanes of a score block's 32-position vectors that hold one of its n
// positions; all of them in a full block, whose loads then need no mask.
template <bool Full, int NV>
inline void block_masks(int n, __mmask32 (&mask)[NV]) {
  for (int v = 0; v < NV; ++v) mask[v] = Full ? ~__mmask32(0) : first32(n - 32 * v);
}

// Scores of n <= score_positions<G>() positions whose keys start at column o
// of a f32 k_t block ([d][kB]), as store_scores leaves them. q is [G][d].
// While the block is read, the keys from column pf on (or none if null) are
// fetched.
template <int G, bool Full>
void chunk_scores(const uint8_t* blk, int o, int n, const uint8_t* pf, int d, const float* q, float scale, float* sc,
                  __m512 (&mx)[G]) {
  constexpr int NV = score_positions<G>() / 32;
  const size_t stride = size_t(kB) * 4;  // bytes from one component's row to the next
  __mmask32 mask[NV];
  block_masks<Full>(n, mask);
  __m512 a[NV][G], b[NV][G];
  zero(a);
  zero(b);
  const uint8_t* col = blk + size_t(o) * 4;
  for (int c = 0; c < d; ++c, col += stride) {
    if (pf) prefetch(pf + size_t(c) * stride, NV * 32 * 4);
    __m512 qc[G];
#pragma GCC unroll 8
    for (int h = 0; h < G; ++h) qc[h] = _mm512_set1_ps(q[size_t(h) * d + c]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      __m512 x0, x1;
      avx512bf16::load32(reinterpret_cast<const float*>(col) + v * 32, mask[v], x0, x1);
#pragma GCC unroll 8
      for (int h = 0; h < G; ++h) {
        a[v][h] = _mm512_fmadd_ps(qc[h], x0, a[v][h]);
        b[v][h] = _mm512_fmadd_ps(qc[h], x1, b[v][h]);
      }
    }
  }
  store_scores(a, b, n, scale, sc, mx);
}

// The same for a bf16 k_t block. q2 is [G][(d + 1) / 2] pairs of bf16
// components (2c low, 2c + 1 high). Rows 2c and 2c + 1, interleaved word by
// word, pair each position's two components for vdpbf16ps; unpacked_in_order
// puts the results back in position order.
template <int G, bool Full>
void chunk_scores(const uint8_t* blk, int o, int n, const uint8_t* pf, int d, const uint32_t* q2, float scale,
                  float* sc, __m512 (&mx)[G]) {
  constexpr int NV = score_positions<G>() / 32;
  const size_t stride = size_t(kB) * 2;
  const int pairs = (d + 1) / 2;
  __mmask32 mask[NV];
  block_masks<Full>(n, mask);
  __m512 lo[NV][G], hi[NV][G];
  zero(lo);
  zero(hi);
  const uint8_t* col = blk + size_t(o) * 2;
  for (int c = 0; c < pairs; ++c, col += 2 * stride) {
    const bool odd_tail = 2 * c + 1 == d;  // the last component has no partner: pair it with 0
    if (pf) {
      prefetch(pf + size_t(2 * c) * stride, NV * 64);
      if (!odd_tail) prefetch(pf + size_t(2 * c + 1) * stride, NV * 64);
    }
    __m512i qc[G];
#pragma GCC unroll 8
    for (int h = 0; h < G; ++h) qc[h] = _mm512_set1_epi32(int(q2[size_t(h) * pairs + c]));
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      const __m512i x0 = Full ? _mm512_loadu_si512(col + v * 64) : _mm512_maskz_loadu_epi16(mask[v], col + v * 64);
      const __m512i x1 = odd_tail ? _mm512_setzero_si512()
                         : Full   ? _mm512_loadu_si512(col + stride + v * 64)
                                  : _mm512_maskz_loadu_epi16(mask[v], col + stride + v * 64);
      const __m512bh l = __m512bh(_mm512_unpacklo_epi16(x0, x1)), u = __m512bh(_mm512_unpackhi_epi16(x0, x1));
#pragma GCC unroll 8
      for (int h = 0; h < G; ++h) {
        lo[v][h] = _mm512_dpbf16_ps(lo[v][h], l, __m512bh(qc[h]));
        hi[v][h] = _mm512_dpbf16_ps(hi[v][h], u, __m512bh(qc[h]));
      }
    }
  }
  for (int v = 0; v < NV; ++v)
    for (int h = 0; h < G; ++h) unpacked_in_order(lo[v][h], hi[v][h]);
  store_scores(lo, hi, n, scale, sc, mx);
}

// Weights w[h * kChunk + r] times value rows base + r * row_bytes, r < kTile,
// added to acc [G][32 * nc] (load32 order). Past row last (a chunk's short
// end) the last row is reread, with weight 0. Rows pf + r * row_bytes (if
// pf) are fetched along the way.
template <bool BF16, int G, bool Full>
void value_tile(const uint8_t* base, size_t row_bytes, int last, const uint8_t* pf, const float* w, int d, float* acc) {
  constexpr size_t E = BF16 ? 2 : 4;
  // Rows handled together so that 2*U*G independent FMA chains hide the latency.
  constexpr int U = 8 / G;
  const int nc = (d + 31) / 32;
  for (int j = 0; j < nc; ++j) {
    const __mmask32 mask = first32(d - 32 * j);
    __m512 a0[U][G], a1[U][G];
    zero(a0);
    zero(a1);
#pragma GCC unroll 4
    for (int r = 0; r < kTile; r += U)
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        const int row = Full ? r + u : std::min(r + u, last);
        if (pf && j == 0) prefetch(pf + size_t(r + u) * row_bytes, row_bytes);
        __m512 x0, x1;
        load32<BF16>(base + size_t(row) * row_bytes + size_t(j) * 32 * E, mask, x0, x1);
#pragma GCC unroll 8
        for (int h = 0; h < G; ++h) {
          const __m512 p = _mm512_set1_ps(w[h * kChunk + r + u]);
          a0[u][h] = _mm512_fmadd_ps(p, x0, a0[u][h]);
          a1[u][h] = _mm512_fmadd_ps(p, x1, a1[u][h]);
        }
      }
    const int width = nc * 32;
#pragma GCC unroll 8
    for (int h = 0; h < G; ++h) {
      float* ah = acc + size_t(h) * width + j * 32;
      __m512 s0 = _mm512_loadu_ps(ah), s1 = _mm512_loadu_ps(ah + 16);
#pragma GCC unroll 8
      for (int u = 0; u < U; ++u) {
        s0 = _mm512_add_ps(s0, a0[u][h]);
        s1 = _mm512_add_ps(s1, a1[u][h]);
      }
      _mm512_storeu_ps(ah, s0);
      _mm512_storeu_ps(ah + 16, s1);
    }
  }
}

// Chunk by chunk: scores from k_t, online softmax (what was accumulated is
// rescaled when the max grows), weights times the value rows. Keys and
// values are fetched ahead (kKeysAhead, kValuesAhead), so both streams stay
// ahead of the loads.
template <bool BF16, int G>
void run(const DenseSpan& s, int h0, const DensePartial& out) {
  constexpr size_t E = BF16 ? 2 : 4;
  constexpr int SP = score_positions<G>();
  const int d = s.d, nc = (d + 31) / 32, w = nc * 32;
  const size_t row_bytes = size_t(d) * E;
  const size_t block_bytes = size_t(d) * kB * E;

  // q [G][d] (f32) or [G][pairs] (bf16 pairs), acc [G][w] in load32 order,
  // scores then weights [G][kChunk]; each 64-byte aligned so no load splits
  // across cache lines.
  const size_t q_floats = (size_t(G) * d + 15) / 16 * 16;
  thread_local std::vector<float> buf;
  buf.resize(q_floats + size_t(G) * (w + kChunk) + 16);
  float* q = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) / 4 % 16) % 16;
  auto* q2 = reinterpret_cast<uint32_t*>(q);
  const auto* qs = [&] {  // what chunk_scores takes
    if constexpr (BF16) return q2; else return q;
  }();
  float* acc = q + q_floats;
  float* sc = acc + size_t(G) * w;
  // Scores in log2 units (log2(e) folded into the scale), for exp2; m goes
  // out in natural units, as DensePartial has it.
  const float scale = std::numbers::log2e_v<float> / std::sqrt(float(d));
  const int pairs = (d + 1) / 2;
  for (int h = 0; h < G; ++h) {
    const float* qh = s.q + size_t(h0 + h) * d;
    if constexpr (BF16)
      for (int c = 0; c < pairs; ++c) q2[h * pairs + c] = bf16_pair(qh + 2 * c, 2 * c + 1 < d);
    else
      std::copy(qh, qh + d, q + size_t(h) * d);
  }
  std::fill(acc, acc + size_t(G) * w, 0.0f);
  float m[G], l[G];
  std::fill_n(m, G, -std::numeric_limits<float>::infinity());
  std::fill_n(l, G, 0.0f);

  const auto* KT = static_cast<const uint8_t*>(s.kt);
  const auto* V = static_cast<const uint8_t*>(s.v);
  auto kt_col = [&](int p) { return KT + size_t(p / kB) * block_bytes + size_t(p % kB) * E; };
  for (int c0 = s.p0; c0 < s.p1;) {
    // Chunks are aligned to kChunk, the first may be shorter.
    const int c1 = std::min(c0 - c0 % kChunk + kChunk, s.p1), n = c1 - c0;
    __m512 mx[G];
    for (int h = 0; h < G; ++h) mx[h] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int i = 0; i < n; i += SP) {
      const int p = c0 + i, ni = std::min(SP, n - i);
      const int pk = p + ni + (kKeysAhead - 1) * SP;
      const uint8_t* next_k = pk < s.p1 ? kt_col(pk) : nullptr;
      const uint8_t* blk = kt_col(p) - size_t(p % kB) * E;
      if (ni == SP)
        chunk_scores<G, true>(blk, p % kB, ni, next_k, d, qs, scale, sc + i, mx);
      else
        chunk_scores<G, false>(blk, p % kB, ni, next_k, d, qs, scale, sc + i, mx);
    }

    __m512 vm[G], sum[G];
    for (int h = 0; h < G; ++h) {
      const float mnew = std::max(m[h], _mm512_reduce_max_ps(mx[h]));
      if (mnew > m[h]) {
        const float c = std::exp2(m[h] - mnew);
        l[h] *= c;
        for (int i = 0; i < w; ++i) acc[size_t(h) * w + i] *= c;
        m[h] = mnew;
      }
      vm[h] = _mm512_set1_ps(m[h]);
      sum[h] = _mm512_setzero_ps();
    }
    const int ntiles = (n + kTile - 1) / kTile;
    for (int i = 0; i < ntiles * kTile; i += 16) {  // weights past the chunk's end are 0
      const __mmask16 k = first16(n - i);
#pragma GCC unroll 8
      for (int h = 0; h < G; ++h) {
        float* sh = sc + h * kChunk + i;
        const __m512 p = _mm512_maskz_mov_ps(k, exp2(_mm512_sub_ps(_mm512_loadu_ps(sh), vm[h])));
        _mm512_storeu_ps(sh, p);
        sum[h] = _mm512_add_ps(sum[h], p);
      }
    }
    for (int h = 0; h < G; ++h) l[h] += _mm512_reduce_add_ps(sum[h]);

    for (int t = 0; t < ntiles; ++t) {
      const int pv = c0 + t * kTile + kValuesAhead;
      const uint8_t* pf = pv + kTile <= s.p1 ? V + size_t(pv) * row_bytes : nullptr;
      const uint8_t* base = V + size_t(c0 + t * kTile) * row_bytes;
      const int last = n - 1 - t * kTile;
      if (last >= kTile - 1)
        value_tile<BF16, G, true>(base, row_bytes, last, pf, sc + t * kTile, d, acc);
      else
        value_tile<BF16, G, false>(base, row_bytes, last, pf, sc + t * kTile, d, acc);
    }
    c0 = c1;
  }

  for (int h = 0; h < G; ++h) {
    out.m[h0 + h] = m[h] * std::numbers::ln2_v<float>;
    out.l[h0 + h] = l[h];
    for (int c = 0; c < d; ++c) out.acc[size_t(h0 + h) * d + c] = acc[size_t(h) * w + split_index<BF16>(c)];
  }
}

// Groups of up to 8 heads per pass (the register budget); larger or odd
// groups take several passes.
template <bool BF16>
void run_groups(const DenseSpan& s, const DensePartial& out) {
  for (int h0 = 0; h0 < s.group;) {
    const int left = s.group - h0;
    const int g = left >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    switch (g) {
      case 8: run<BF16, 8>(s, h0, out); break;
      case 4: run<BF16, 4>(s, h0, out); break;
      case 2: run<BF16, 2>(s, h0, out); break;
      default: run<BF16, 1>(s, h0, out); break;
    }
    h0 += g;
  }
}

}  // namespace

void dense_partial(const DenseSpan& s, const DensePartial& out) {
  if (s.type == KVType::BF16)
    run_groups<true>(s, out);
  else
    run_groups<false>(s, out);
}

}  // namespace sparq::avx512bf16
