// Dense causal attention for prompt queries (prefill) for the avx2 and avx512
// tiers, written once over kernels/simd.h's lanes; the blocking of
// attention_prefill_avx512bf16.cpp with f32 FMAs throughout. A tile of up to
// kLanes * kMaxRegs query vectors of one KV head sits across registers (the
// queries in lanes), so each key or value element read is one broadcast
// multiplied into kLanes queries, and the online softmax runs down the lanes
// with no horizontal sums. Keys and values are read once per tile, kBlock
// rows at a time; the block's scores, then its weights, sit in a
// [position][query] buffer that stays in L1.
// bf16 and q8_0 caches: each block's keys and values become f32 once (exact)
// in scratch, and q is rounded to bf16 for bf16 as the reference has it;
// weights stay f32, so the results match the decode kernels'.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <type_traits>
#include <vector>

#include "sparq/kernels/attention_dense.h"
#include "sparq/kernels/prefill_tiles.h"
#include "sparq/kernels/simd.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

// Registers of kLanes query vectors in a tile, and accumulator registers of a
// register-blocked pass (of 16 or 32 registers in all).
constexpr int kMaxRegs = SPARQ_SIMD_512 ? 4 : 2;
constexpr int kAccRegs = SPARQ_SIMD_512 ? 24 : 12;
constexpr int kBlock = 64;  // key and value rows per block

// Rows (scores) or components (values) per pass over NV registers of queries.
template <int NV>
constexpr int kPass = kAccRegs / NV;

inline VF load_a(const float* p) {  // 64-byte aligned
#if SPARQ_SIMD_512
  return _mm512_load_ps(p);
#else
  return _mm256_load_ps(p);
#endif
}
inline void store_a(float* p, VF v) {
#if SPARQ_SIMD_512
  _mm512_store_ps(p, v);
#else
  _mm256_store_ps(p, v);
#endif
}

// st[u][i] = q_i . k_u for U f32 key rows from k; qp is [d][kLanes NV]. The
// scale is applied in the softmax, to the max-subtracted scores (the max then
// weighs exactly 1), so no register holds it here: at 16 registers (avx2) it
// would push a query vector out to the stack.
template <int NV, int U>
void score_rows(const float* k, size_t kstride, int d, const float* qp, float* st) {
  constexpr int W = kLanes * NV;
  VF acc[U][NV];
#pragma GCC unroll 24
  for (int u = 0; u < U; ++u)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[u][v] = zero();
  for (int j = 0; j < d; ++j) {
    VF qv[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) qv[v] = load_a(qp + size_t(j) * W + kLanes * v);
#pragma GCC unroll 24
    for (int u = 0; u < U; ++u) {
      const VF x = set1(k[u * kstride + size_t(j)]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[u][v] = fmadd(qv[v], x, acc[u][v]);
    }
  }
  for (int u = 0; u < U; ++u)
    for (int v = 0; v < NV; ++v) store_a(st + u * W + kLanes * v, acc[u][v]);
}

template <int NV>
void block_scores(const float* k, int n, int d, const float* qp, float* st) {
  constexpr int W = kLanes * NV, U = kPass<NV>;
  const size_t kstride = size_t(d);
  int u = 0;
  for (; u + U <= n; u += U) score_rows<NV, U>(k + u * kstride, kstride, d, qp, st + u * W);
  with_count<U - 1>(n - u, [&](auto r) {
    score_rows<NV, decltype(r)::value>(k + u * kstride, kstride, d, qp, st + u * W);
  });
}

// Online softmax over a block of n rows starting at position b0: the dot
// products in st become weights exp2(scale * (s - m)) (0 past a query's last
// position when masked), m (the max dot product) and l are updated and f gets
// the factor by which what was accumulated before this block shrinks. last
// holds the positions as floats.
template <int NV>
void block_softmax(float* st, int n, int b0, bool masked, const float* last, float scale, float* m, float* l,
                   VF (&f)[NV]) {
  const VF vs = set1(scale);
  constexpr int W = kLanes * NV;
  VF lastv[NV], mx[NV], mnew[NV], sum[NV];
  for (int v = 0; v < NV; ++v) {
    lastv[v] = load_a(last + kLanes * v);
    mx[v] = set1(-std::numeric_limits<float>::infinity());
    sum[v] = zero();
  }
  if (masked) {
    for (int u = 0; u < n; ++u) {
      const VF pos = set1(float(b0 + u));
      for (int v = 0; v < NV; ++v)
        mx[v] = select(lt(lastv[v], pos), mx[v], max(mx[v], load_a(st + u * W + kLanes * v)));
    }
  } else {
    for (int u = 0; u < n; ++u)
      for (int v = 0; v < NV; ++v) mx[v] = max(mx[v], load_a(st + u * W + kLanes * v));
  }
  for (int v = 0; v < NV; ++v) {
    const VF mold = load_a(m + kLanes * v);
    mnew[v] = max(mold, mx[v]);
    f[v] = exp2(mul(sub(mold, mnew[v]), vs));  // 0 while mold is -inf
    store_a(m + kLanes * v, mnew[v]);
  }
  for (int u = 0; u < n; ++u) {
    const VF pos = set1(float(b0 + u));
    for (int v = 0; v < NV; ++v) {
      float* s = st + u * W + kLanes * v;
      VF p = exp2(mul(sub(load_a(s), mnew[v]), vs));
      if (masked) p = select(lt(lastv[v], pos), zero(), p);
      store_a(s, p);
      sum[v] = add(sum[v], p);
    }
  }
  for (int v = 0; v < NV; ++v) store_a(l + kLanes * v, fmadd(load_a(l + kLanes * v), f[v], sum[v]));
}

// ot[c][i] = f_i * ot[c][i] + sum_j w[j][i] * val[j][c] for C components,
// val rows vstride floats apart; w is [steps][kLanes NV].
template <int NV, int C>
void value_cols(const float* val, size_t vstride, int steps, const float* w, const VF (&f)[NV], float* ot) {
  constexpr int W = kLanes * NV;
  VF acc[C][NV];
#pragma GCC unroll 24
  for (int c = 0; c < C; ++c)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[c][v] = mul(f[v], load_a(ot + c * W + kLanes * v));
  for (int j = 0; j < steps; ++j) {
    VF p[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) p[v] = load_a(w + j * W + kLanes * v);
#pragma GCC unroll 24
    for (int c = 0; c < C; ++c) {
      const VF x = set1(val[j * vstride + c]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[c][v] = fmadd(p[v], x, acc[c][v]);
    }
  }
  for (int c = 0; c < C; ++c)
    for (int v = 0; v < NV; ++v) store_a(ot + c * W + kLanes * v, acc[c][v]);
}

template <int NV>
void block_values(const float* val, int steps, int d, const float* w, const VF (&f)[NV], float* ot) {
  constexpr int W = kLanes * NV, C = kPass<NV>;
  int c = 0;
  for (; c + C <= d; c += C) value_cols<NV, C>(val + c, size_t(d), steps, w, f, ot + c * W);
  with_count<C - 1>(d - c, [&](auto r) { value_cols<NV, decltype(r)::value>(val + c, size_t(d), steps, w, f, ot + c * W); });
}

// n bf16 elements as f32 (exact).
void widen(const uint16_t* src, size_t n, float* dst) {
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store(dst + i, load_bf16(src + i));
  if (i < n) store_first(dst + i, load_bf16_first(src + i, int(n - i)), int(n - i));
}

// n q8_0 rows of d as f32 (exact).
void dequantize(const int8_t* rows, size_t n, int d, float* dst) {
  const size_t stride = kv_row_bytes(KVType::Q8_0, d);
  for (size_t r = 0; r < n; ++r)
    for (int c = 0; c < d; c += kLanes) store(dst + r * d + c, load_q8_row(rows + r * stride, c, d));
}

// Rows [b0, b0 + n) of a cache array of type T as f32: in place (f32), or
// made in buf.
template <KVType T>
const float* block_f32(const void* rows, int b0, int n, int d, float* buf) {
  const size_t row = size_t(b0) * kv_row_bytes(T, d);
  if constexpr (T == KVType::F32) return reinterpret_cast<const float*>(static_cast<const char*>(rows) + row);
  if constexpr (T == KVType::BF16)
    widen(reinterpret_cast<const uint16_t*>(static_cast<const char*>(rows) + row), size_t(n) * d, buf);
  if constexpr (T == KVType::Q8_0)
    dequantize(reinterpret_cast<const int8_t*>(static_cast<const char*>(rows) + row), size_t(n), d, buf);
  return buf;
}

// Query vectors [i0, i0 + n) of s, n <= kLanes * NV. Unused lanes get q = 0
// and the tile's largest last position, and their results are dropped.
template <KVType T, int NV>
void tile(const PrefillSpan& s, int i0, int n, int lo, int hi) {
  constexpr bool kConvert = T != KVType::F32;
  constexpr int W = kLanes * NV;
  const int d = s.d;
  thread_local std::vector<float> buf;
  buf.resize(size_t(W) * (size_t(d) * 2 + kBlock + 3) + (kConvert ? size_t(2) * kBlock * d : 0) + 16);
  float* qp = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) / 4 % 16) % 16;
  float* st = qp + size_t(d) * W;
  float* ot = st + size_t(kBlock) * W;
  float* m = ot + size_t(d) * W;
  float* l = m + W;
  float* last = l + W;
  float* kf = last + W;  // bf16, q8_0: the block's keys and values as f32
  float* vf = kf + size_t(kBlock) * d;

  for (int i = 0; i < W; ++i) {
    const float* q = i < n ? s.q[i0 + i] : nullptr;
    last[i] = float(i < n ? s.last[i0 + i] : hi);
    for (int j = 0; j < d; ++j) qp[size_t(j) * W + i] = q ? query_for(s.type, q[j]) : 0.0f;
  }
  std::fill(ot, ot + size_t(d) * W, 0.0f);
  std::fill(m, m + W, -std::numeric_limits<float>::infinity());
  std::fill(l, l + W, 0.0f);
  // Scores in log2 units, for exp2.
  const float scale = std::numbers::log2e_v<float> / std::sqrt(float(d));

  for (int b0 = 0; b0 <= hi; b0 += kBlock) {
    const int nb = std::min(kBlock, hi + 1 - b0);
    const float* kb = block_f32<T>(s.k, b0, nb, d, kf);
    const float* vb = block_f32<T>(s.v, b0, nb, d, vf);
    block_scores<NV>(kb, nb, d, qp, st);
    VF f[NV];
    block_softmax<NV>(st, nb, b0, b0 + nb - 1 > lo, last, scale, m, l, f);
    block_values<NV>(vb, nb, d, st, f, ot);
  }
  for (int i = 0; i < n; ++i)
    for (int c = 0; c < d; ++c) s.out[i0 + i][c] = ot[size_t(c) * W + i] / l[i];
}

}  // namespace

void prefill_attention(const PrefillSpan& s) {
  prefill_tiles<kLanes, kMaxRegs>(s, [&](auto type, auto nv, int i0, int n, int lo, int hi) {
    tile<decltype(type)::value, decltype(nv)::value>(s, i0, n, lo, hi);
  });
}

}  // namespace sparq::SPARQ_TIER_NS
