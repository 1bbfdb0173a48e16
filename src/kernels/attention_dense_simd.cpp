// Dense decode attention at the avx2 and avx512 tiers, written once over
// kernels/simd.h. As the avx512bf16 kernel: scores from the transposed key
// copy (positions contiguous per component, so a broadcast q component
// multiplies kLanes positions and no horizontal sums are needed), an online
// softmax chunk by chunk, and the weighted sum over the value rows; each
// chunk of keys and values is read once for all query heads of the group
// (groups wider than a pass's registers take several passes over the chunk,
// the later ones from cache). Keys and values are prefetched ahead.
// bf16 caches widen to f32 exactly (the scores and sums are f32 FMAs, with q
// rounded to bf16 as ref::dense_partial does): 2*kLanes elements come in one
// load as the even ones (a shift) and the odd ones (a mask), so the score
// vectors are put back in position order once per chunk and the value sums
// are kept in even/odd order until the end.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <vector>

#include "sparq/kernels/attention_dense.h"
#include "sparq/kernels/kv_cache.h"
#include "sparq/kernels/simd.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

constexpr int kB = KVCache::kBlock;  // positions per k_t block
constexpr int kPair = 2 * kLanes;    // elements of one load_pair
// Heads per pass: a score pass holds 2 * (positions / kPair) * heads = 2 *
// kMaxHeads accumulators and a value pass as many: half the registers, the
// rest for q broadcasts, loads and the widening.
#if SPARQ_SIMD_512
constexpr int kMaxHeads = 8;
#else
constexpr int kMaxHeads = 4;
#endif
constexpr int kChunk = 256;  // positions per softmax chunk; divides kB and is a multiple of every pass
constexpr int kTile = 16;    // value rows per tile (their column slices stay in L1 across a tile)
// Prefetch distances: key positions and value rows ahead of the loads.
constexpr int kKeysAhead = 128;
constexpr int kValuesAhead = 64;

const float kNegInf = -std::numeric_limits<float>::infinity();

// Into L2: an L1 prefetch holds one of L1's few miss buffers until its line
// arrives, which stalls the demand loads behind it (as in the avx512bf16
// kernel).
#ifndef HINT
#define HINT _MM_HINT_T1
#endif
inline void prefetch(const void* p, size_t bytes) {
  for (size_t i = 0; i < bytes; i += 64) _mm_prefetch(static_cast<const char*>(p) + i, HINT);
}

// kPair consecutive elements as two vectors: f32 the first and last kLanes,
// bf16 the even and the odd elements (one load, a shift and a mask).
inline void load_pair(const float* p, VF& a, VF& b) {
  a = load(p);
  b = load(p + kLanes);
}
#if SPARQ_SIMD_512
inline void split_bf16(__m512i x, VF& a, VF& b) {
  a = as_float(_mm512_slli_epi32(x, 16));
  b = as_float(_mm512_and_si512(x, _mm512_set1_epi32(int(0xffff0000u))));
}
inline void load_pair(const uint16_t* p, VF& a, VF& b) { split_bf16(_mm512_loadu_si512(p), a, b); }
#else
inline void split_bf16(__m256i x, VF& a, VF& b) {
  a = as_float(_mm256_slli_epi32(x, 16));
  b = as_float(_mm256_and_si256(x, _mm256_set1_epi32(int(0xffff0000u))));
}
inline void load_pair(const uint16_t* p, VF& a, VF& b) {
  split_bf16(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), a, b);
}
#endif

// The first n (0 < n < kPair) elements as load_pair gives them, the others
// 0; reads nothing past them.
inline void load_pair_first(const float* p, int n, VF& a, VF& b) {
  a = load_first(p, n);
  b = load_first(p + kLanes, n - kLanes);
}
inline void load_pair_first(const uint16_t* p, int n, VF& a, VF& b) {
#if SPARQ_SIMD_512
  split_bf16(_mm512_maskz_loadu_epi16(n >= 32 ? ~__mmask32(0) : __mmask32((1u << n) - 1u), p), a, b);
#else
  if (n % 2 == 0) {  // whole pairs of elements: a masked load of 32-bit words
    split_bf16(_mm256_maskload_epi32(reinterpret_cast<const int*>(p), first_mask_i(n / 2)), a, b);
  } else {  // odd head sizes only (rare): through a buffer
    alignas(32) uint16_t buf[kPair] = {};
    std::memcpy(buf, p, sizeof(uint16_t) * size_t(n));
    load_pair(buf, a, b);
  }
#endif
}

// Index in the load_pair order of element c.
template <class E>
inline int pair_index(int c) {
  if constexpr (sizeof(E) == 2) {
    const int j = c / kPair, i = c % kPair;
    return j * kPair + (i % 2) * kLanes + i / 2;
  } else {
    return c;
  }
}

// bf16 load_pair's (even, odd) back in element order: 0..kLanes-1 in a, the
// rest in b.
inline void in_order(VF& a, VF& b) {
#if SPARQ_SIMD_512
  const VF lo = _mm512_unpacklo_ps(a, b), hi = _mm512_unpackhi_ps(a, b);
  // lo holds elements {0-3, 8-11, 16-19, 24-27}, hi the other quads.
  const __m512i first = _mm512_setr_epi32(0, 1, 2, 3, 16, 17, 18, 19, 4, 5, 6, 7, 20, 21, 22, 23);
  const __m512i second = _mm512_setr_epi32(8, 9, 10, 11, 24, 25, 26, 27, 12, 13, 14, 15, 28, 29, 30, 31);
  a = _mm512_permutex2var_ps(lo, first, hi);
  b = _mm512_permutex2var_ps(lo, second, hi);
#else
  const VF lo = _mm256_unpacklo_ps(a, b), hi = _mm256_unpackhi_ps(a, b);
  // lo holds elements {0-3, 8-11}, hi {4-7, 12-15}.
  a = _mm256_permute2f128_ps(lo, hi, 0x20);
  b = _mm256_permute2f128_ps(lo, hi, 0x31);
#endif
}

// Lanes whose position (p0 + lane) lies in [lo, hi).
inline Mask in_range(int p0, int lo, int hi) {
#if SPARQ_SIMD_512
  const VI pos = _mm512_add_epi32(_mm512_set1_epi32(p0), _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  return Mask(gt_i(pos, set1_i(lo - 1)) & gt_i(set1_i(hi), pos));
#else
  const VI pos = _mm256_add_epi32(_mm256_set1_epi32(p0), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  return _mm256_and_ps(gt_i(pos, set1_i(lo - 1)), gt_i(set1_i(hi), pos));
#endif
}

template <int A, int B>
inline void zero_all(VF (&a)[A][B]) {
#pragma GCC unroll 16
  for (int i = 0; i < A; ++i)
#pragma GCC unroll 16
    for (int j = 0; j < B; ++j) a[i][j] = zero();
}

// Scratch and running state of one call: q [group][d] (bf16-rounded for bf16
// caches), acc [group][width] (load_pair order), scores then weights
// [group][kChunk] (index: position - chunk base), m and l per head (m in log2
// units: log2(e) is folded into the scale, for exp2).
struct State {
  int d, group, width;
  float scale;
  float *q, *acc, *sc, *m, *l;
};

// Scores of the positions [base + i0, base + i0 + SP) for the G heads from
// h0, from the k_t columns col (the block's row 0 at base + i0). Lanes
// outside [lo, hi) get -inf. While the keys are read, SP columns from pf (if
// given) are fetched in every row. mx[h] keeps the max.
template <class E, int G, bool Full>
void score_pass(const E* col, const E* pf, int i0, int base, int lo, int hi, int h0, const State& st, VF (&mx)[G]) {
  constexpr int NV = kMaxHeads / G, SP = NV * kPair;
  const int d = st.d;
  const float* q = st.q + size_t(h0) * d;
  VF a[NV][G], b[NV][G];
  zero_all(a);
  zero_all(b);
  for (int c = 0; c < d; ++c, col += kB) {
#ifdef SEQ
    if (pf) prefetch(pf + size_t(c) * SP, SP * sizeof(E));
#else
    if (pf) prefetch(pf + size_t(c) * kB, SP * sizeof(E));
#endif
    VF qc[G];
#pragma GCC unroll 8
    for (int h = 0; h < G; ++h) qc[h] = set1(q[size_t(h) * d + c]);
#pragma GCC unroll 8
    for (int v = 0; v < NV; ++v) {
      VF x0, x1;
      load_pair(col + v * kPair, x0, x1);
#pragma GCC unroll 8
      for (int h = 0; h < G; ++h) {
        a[v][h] = fmadd(qc[h], x0, a[v][h]);
        b[v][h] = fmadd(qc[h], x1, b[v][h]);
      }
    }
  }
  const VF vs = set1(st.scale), ninf = set1(kNegInf);
#pragma GCC unroll 8
  for (int v = 0; v < NV; ++v) {
    const int p = base + i0 + v * kPair;
    const Mask m0 = Full ? Mask{} : in_range(p, lo, hi), m1 = Full ? Mask{} : in_range(p + kLanes, lo, hi);
#pragma GCC unroll 8
    for (int h = 0; h < G; ++h) {
      if constexpr (sizeof(E) == 2) in_order(a[v][h], b[v][h]);
      VF x = mul(vs, a[v][h]), y = mul(vs, b[v][h]);
      if constexpr (!Full) {
        x = select(m0, x, ninf);
        y = select(m1, y, ninf);
      }
      mx[h] = max(mx[h], max(x, y));
      float* out = st.sc + size_t(h0 + h) * kChunk + i0 + v * kPair;
      store(out, x);
      store(out + kLanes, y);
    }
  }
}

// Positions [lo, hi) of the chunk at base (kChunk-aligned), G heads from h0:
// their scores into st.sc. pf: whether this pass fetches keys ahead.
template <class E, int G>
void chunk_scores(const E* KT, int base, int lo, int hi, int p1, int h0, bool pf, const State& st, VF (&mx)[G]) {
  constexpr int SP = kMaxHeads / G * kPair;
  const size_t block = size_t(st.d) * kB;
  auto kt_col = [&](int p) { return KT + size_t(p / kB) * block + p % kB; };
  for (int i = (lo - base) / SP * SP; base + i < hi; i += SP) {
    const int p = base + i, pk = p + kKeysAhead;
#ifdef SEQ
    (void)pk;
    const int nb = p / kB + 1;
    const E* next = pf && nb * kB < p1 ? KT + size_t(nb) * block + size_t(p % kB) * st.d : nullptr;
#else
    const E* next = pf && pk < p1 ? kt_col(pk - pk % SP) : nullptr;
#endif
    if (p >= lo && p + SP <= hi)
      score_pass<E, G, true>(kt_col(p), next, i, base, lo, hi, h0, st, mx);
    else
      score_pass<E, G, false>(kt_col(p), next, i, base, lo, hi, h0, st, mx);
  }
}

// Weights w[h * kChunk + r] (st.sc, from row r0's) times n <= kTile value
// rows from rows, added to st.acc for the G heads from h0; rows pf.. are
// fetched along the way (if given).
template <class E, int G, bool Tail>
inline void value_cols(const E* rows, int n, int r0, int j, int cols, int h0, const State& st) {
  constexpr int U = kMaxHeads / G;  // rows in flight: 2 * U * G independent FMA chains
  const int d = st.d;
  VF a0[U][G], a1[U][G];
  zero_all(a0);
  zero_all(a1);
  const float* w = st.sc + size_t(h0) * kChunk + r0;
  int r = 0;
  for (; r + U <= n; r += U)
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      VF x0, x1;
      if constexpr (Tail)
        load_pair_first(rows + size_t(r + u) * d + j, cols, x0, x1);
      else
        load_pair(rows + size_t(r + u) * d + j, x0, x1);
#pragma GCC unroll 8
      for (int h = 0; h < G; ++h) {
        const VF p = set1(w[h * kChunk + r + u]);
        a0[u][h] = fmadd(p, x0, a0[u][h]);
        a1[u][h] = fmadd(p, x1, a1[u][h]);
      }
    }
  for (; r < n; ++r) {
    VF x0, x1;
    if constexpr (Tail)
      load_pair_first(rows + size_t(r) * d + j, cols, x0, x1);
    else
      load_pair(rows + size_t(r) * d + j, x0, x1);
#pragma GCC unroll 8
    for (int h = 0; h < G; ++h) {
      const VF p = set1(w[h * kChunk + r]);
      a0[0][h] = fmadd(p, x0, a0[0][h]);
      a1[0][h] = fmadd(p, x1, a1[0][h]);
    }
  }
#pragma GCC unroll 8
  for (int h = 0; h < G; ++h) {
    float* ah = st.acc + size_t(h0 + h) * st.width + j;
    VF s0 = load(ah), s1 = load(ah + kLanes);
#pragma GCC unroll 8
    for (int u = 0; u < U; ++u) {
      s0 = add(s0, a0[u][h]);
      s1 = add(s1, a1[u][h]);
    }
    store(ah, s0);
    store(ah + kLanes, s1);
  }
}

// Value rows [lo, hi) of the chunk at base into the G heads from h0, tile by
// tile; pf: whether this pass fetches the rows ahead.
template <class E, int G>
void chunk_values(const E* V, int base, int lo, int hi, int p1, int h0, bool pf, const State& st) {
  const int d = st.d, full = d / kPair * kPair;
  const size_t row_bytes = size_t(d) * sizeof(E);
  for (int r = lo; r < hi; r += kTile) {
    const int n = std::min(kTile, hi - r);
    const E* rows = V + size_t(r) * d;
    if (pf) {
      const int ahead = std::min(r + kValuesAhead, p1), end = std::min(ahead + n, p1);
      if (ahead < end) prefetch(V + size_t(ahead) * d, size_t(end - ahead) * row_bytes);
    }
    for (int j = 0; j < full; j += kPair) value_cols<E, G, false>(rows, n, r - base, j, kPair, h0, st);
    if (full < d) value_cols<E, G, true>(rows, n, r - base, full, d - full, h0, st);
  }
}

// The passes over the group's heads: as many of kMaxHeads, then of fewer.
template <class F>
void passes(int group, F&& f) {
  for (int h0 = 0; h0 < group;) {
    const int left = group - h0;
    const int g = left >= 8 && kMaxHeads >= 8 ? 8 : left >= 4 ? 4 : left >= 2 ? 2 : 1;
    f(h0, g);
    h0 += g;
  }
}

template <class E>
void run(const DenseSpan& s, const DensePartial& out) {
  const int d = s.d, group = s.group, width = (d + kPair - 1) / kPair * kPair;
  // q, acc and sc each 64-byte aligned so no load splits across cache lines.
  const size_t qn = (size_t(group) * d + 15) / 16 * 16, an = size_t(group) * width, sn = size_t(group) * kChunk;
  thread_local std::vector<float> buf;
  buf.resize(qn + an + sn + 2 * size_t(group) + 16);
  float* base_ptr = buf.data() + (16 - reinterpret_cast<uintptr_t>(buf.data()) / 4 % 16) % 16;
  State st{d, group, width, std::numbers::log2e_v<float> / std::sqrt(float(d)), base_ptr, base_ptr + qn,
           base_ptr + qn + an, base_ptr + qn + an + sn, base_ptr + qn + an + sn + group};
  for (size_t i = 0; i < size_t(group) * d; ++i) st.q[i] = query_for(s.type, s.q[i]);
  std::fill(st.acc, st.acc + an, 0.0f);
  std::fill(st.m, st.m + group, kNegInf);
  std::fill(st.l, st.l + group, 0.0f);

  const auto* KT = static_cast<const E*>(s.kt);
  const auto* V = static_cast<const E*>(s.v);
  for (int base = s.p0 - s.p0 % kChunk; base < s.p1; base += kChunk) {
    const int lo = std::max(base, s.p0), hi = std::min(base + kChunk, s.p1);
    // Scores and their max per head; the first pass fetches ahead for all.
    passes(group, [&](int h0, int g) {
      auto one = [&]<int G>() {
        VF mx[G];
        for (int h = 0; h < G; ++h) mx[h] = set1(kNegInf);
        chunk_scores<E, G>(KT, base, lo, hi, s.p1, h0, h0 == 0, st, mx);
        for (int h = 0; h < G; ++h) {
          // The online softmax: what was accumulated shrinks when the max grows.
          float& m = st.m[h0 + h];
          const float mnew = std::max(m, reduce_max(mx[h]));
          if (mnew > m) {
            const float f = std::exp2(m - mnew);
            const VF c = set1(f);
            st.l[h0 + h] *= f;
            float* a = st.acc + size_t(h0 + h) * width;
            for (int i = 0; i < width; i += kLanes) store(a + i, mul(c, load(a + i)));
            m = mnew;
          }
        }
      };
      switch (g) {
        case 8: if constexpr (kMaxHeads >= 8) one.template operator()<8>(); break;
        case 4: one.template operator()<4>(); break;
        case 2: one.template operator()<2>(); break;
        default: one.template operator()<1>(); break;
      }
    });
    // Weights exp2(score - m) over the passes' whole vectors (-inf: 0).
    const int v0 = (lo - base) / kLanes * kLanes, v1 = (hi - base + kLanes - 1) / kLanes * kLanes;
    for (int h = 0; h < group; ++h) {
      float* sh = st.sc + size_t(h) * kChunk;
      const VF vm = set1(st.m[h]);
      VF sum = zero();
      for (int i = v0; i < v1; i += kLanes) {
        const VF p = exp2(sub(load(sh + i), vm));
        store(sh + i, p);
        sum = add(sum, p);
      }
      st.l[h] += reduce_add(sum);
    }
    passes(group, [&](int h0, int g) {
      switch (g) {
        case 8: if constexpr (kMaxHeads >= 8) chunk_values<E, 8>(V, base, lo, hi, s.p1, h0, h0 == 0, st); break;
        case 4: chunk_values<E, 4>(V, base, lo, hi, s.p1, h0, h0 == 0, st); break;
        case 2: chunk_values<E, 2>(V, base, lo, hi, s.p1, h0, h0 == 0, st); break;
        default: chunk_values<E, 1>(V, base, lo, hi, s.p1, h0, h0 == 0, st); break;
      }
    });
  }

  for (int h = 0; h < group; ++h) {
    out.m[h] = st.m[h] * std::numbers::ln2_v<float>;
    out.l[h] = st.l[h];
    for (int c = 0; c < d; ++c) out.acc[size_t(h) * d + c] = st.acc[size_t(h) * width + pair_index<E>(c)];
  }
}

}  // namespace

void dense_partial(const DenseSpan& s, const DensePartial& out) {
  if (s.type == KVType::BF16)
    run<uint16_t>(s, out);
  else
    run<float>(s, out);
}

}  // namespace sparq::SPARQ_TIER_NS
