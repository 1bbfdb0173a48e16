// AVX-512 BF16 SparQ kernels (the avx512bf16 tier; compiled with its flags). bf16 keys meet bf16 query values in vdpbf16ps, whose
// products are exact, so the results match the scalar reference up to
// summation order (f32 keys: f32 FMAs); step 2 computes its scores with the
// reference's exact operation order, so both select the same positions from
// the same step-1 output.
// GCC 12.2 warns about the _mm512_undefined_* self-initialisation inside
// immintrin.h (GCC PR 105593, fixed in 12.3); these are false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>

#include "sparq/kernels/avx512bf16_lanes.h"
#include "sparq/kernels/sparq_kernels.h"

namespace sparq::avx512bf16 {
namespace {

constexpr int B = kSparqBlock;
static_assert(B % 128 == 0, "step 1 works in groups of up to 128 positions");

// For counts that vary at random (how many lanes a compress kept): branches
// there mispredict and cost more than the vector work (measured 1.8x on step 2).
__mmask16 first16_nb(int n) { return __mmask16((1u << std::clamp(n, 0, 16)) - 1u); }

// load32's (a, b) back in element order: elements 0..15 and 16..31.
template <class T>
void in_order(__m512& a, __m512& b) {
  if constexpr (sizeof(T) == 2) even_odd_in_order(a, b);
}

// Into L2, as the dense kernel: step 1 ran 15-25% faster than with L1 prefetches.
void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }

// The bits of x as vdpbf16ps's operand type. Through memcpy: GCC 12 sends a
// vector cast of a masked load through the stack.
[[gnu::always_inline]] inline __m512bh as_bh(__m512i x) {
  __m512bh r;
  std::memcpy(&r, &x, sizeof r);
  return r;
}

// Lane i of the result is the sum of the 16 lanes of a[i].
// Inlined: as a call, the 16 inputs go through memory.
[[gnu::always_inline]] inline __m512 hsum16(const __m512 (&a)[16]) {
  __m512 t[8], u[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0 b0 a1 b1] + [a2 b2 a3 b3]
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]),
                         _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: one partial sum of each of 4 inputs
    const __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  // 128-bit lane q of u[k] holds inputs 4k..4k+3's partials of quarter q: add the quarters.
  const __m512 w01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
  const __m512 w23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xdd));
}

// ---- step 1 ----

// bf16 keys meet the query pairwise: runs j and j+1 interleaved by unpack
// are the pairs vdpbf16ps multiplies by (qs_j, qs_{j+1}), half the
// instructions of converting and FMA-ing each run; unpacked_in_order puts
// the results back in position order.

// 2^(x - max) in place over a block's n scores of one head; returns their sum.
template <bool Full>
float block_exp(float* x, int n, __m512 vm) {
  __m512 vs = _mm512_setzero_ps();
  for (int i = 0; i < B; i += 16) {
    __m512 y = exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    if (!Full) y = _mm512_maskz_mov_ps(first16(n - i), y);
    _mm512_storeu_ps(x + i, y);
    vs = _mm512_add_ps(vs, y);
  }
  return _mm512_reduce_add_ps(vs);
}

// One block for NH heads starting at h0, P units of 32 positions at a time so
// each loaded key vector feeds NH accumulators. qp: for bf16, the heads'
// (qs_j, qs_{j+1}) bf16 pairs, [n_h][(r + 1) / 2]. pf: the block whose runs to
// prefetch, a slice per group (null: none).
template <class T, int NH, int P>
void step1_block(const SparqStep1Args& a, const uint32_t* qp, int nb, int h0, int b, const T* pf, float* e, float* mx,
                 float* sum) {
  constexpr int kGroups = B / (32 * P);
  constexpr int kLinesPerGroup = int(B * sizeof(T)) / 64 / kGroups;
  const T* blk = static_cast<const T*>(a.k_t) + size_t(b) * a.d * B;
  const int valid = std::min(B, a.S - b * B);
  const int r = a.r, np = (r + 1) / 2;
  const float* qs = a.qs + size_t(h0) * r;
  float* eb = e + (size_t(b) * a.n_h + h0) * B;
  const auto prefetch_run = [&](int j, int g) {
    if (pf)
      for (int l = 0; l < kLinesPerGroup; ++l)
        prefetch(reinterpret_cast<const char*>(pf + size_t(a.i1[j]) * B) + (g * kLinesPerGroup + l) * 64);
  };
  __m512 vmax[NH];
  for (int h = 0; h < NH; ++h) vmax[h] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int g = 0; g < kGroups && g * 32 * P < valid; ++g) {
    const int p0 = g * 32 * P;
    __m512 lo[NH][P], hi[NH][P];
    __mmask32 part[P];
    for (int v = 0; v < P; ++v) part[v] = first32(valid - p0 - 32 * v);
    for (int h = 0; h < NH; ++h)
      for (int v = 0; v < P; ++v) lo[h][v] = hi[h][v] = _mm512_setzero_ps();
    if constexpr (sizeof(T) == 2) {
      for (int jp = 0; jp < np; ++jp) {
        const int j = 2 * jp;
        const bool pair = j + 1 < r;
        prefetch_run(j, g);
        if (pair) prefetch_run(j + 1, g);
        const T* run0 = blk + size_t(a.i1[j]) * B + p0;
        const T* run1 = blk + size_t(a.i1[pair ? j + 1 : j]) * B + p0;
        for (int v = 0; v < P; ++v) {
          const __m512i x0 = _mm512_maskz_loadu_epi16(part[v], run0 + 32 * v);
          const __m512i x1 = pair ? _mm512_maskz_loadu_epi16(part[v], run1 + 32 * v) : _mm512_setzero_si512();
          const __m512bh l = as_bh(_mm512_unpacklo_epi16(x0, x1)), u = as_bh(_mm512_unpackhi_epi16(x0, x1));
          for (int h = 0; h < NH; ++h) {
            const __m512bh q = as_bh(_mm512_set1_epi32(int(qp[size_t(h0 + h) * np + jp])));
            lo[h][v] = _mm512_dpbf16_ps(lo[h][v], l, q);
            hi[h][v] = _mm512_dpbf16_ps(hi[h][v], u, q);
          }
        }
      }
    } else {
      for (int j = 0; j < r; ++j) {
        prefetch_run(j, g);
        for (int v = 0; v < P; ++v) {
          __m512 x0, x1;
          load32(blk + size_t(a.i1[j]) * B + p0 + 32 * v, part[v], x0, x1);
          for (int h = 0; h < NH; ++h) {
            const __m512 q = _mm512_set1_ps(qs[h * r + j]);
            lo[h][v] = _mm512_fmadd_ps(x0, q, lo[h][v]);
            hi[h][v] = _mm512_fmadd_ps(x1, q, hi[h][v]);
          }
        }
      }
    }
    for (int h = 0; h < NH; ++h)
      for (int v = 0; v < P; ++v) {
        if constexpr (sizeof(T) == 2) unpacked_in_order(lo[h][v], hi[h][v]);
        const int p = p0 + 32 * v;
        _mm512_storeu_ps(eb + h * B + p, lo[h][v]);
        _mm512_storeu_ps(eb + h * B + p + 16, hi[h][v]);
        vmax[h] = _mm512_mask_max_ps(vmax[h], first16(valid - p), vmax[h], lo[h][v]);
        vmax[h] = _mm512_mask_max_ps(vmax[h], first16(valid - p - 16), vmax[h], hi[h][v]);
      }
  }
  for (int h = 0; h < NH; ++h) {
    const float m = _mm512_reduce_max_ps(vmax[h]);
    float* eh = eb + h * B;
    mx[(h0 + h) * nb + b] = m;
    sum[(h0 + h) * nb + b] = valid == B ? block_exp<true>(eh, valid, _mm512_set1_ps(m))
                                        : block_exp<false>(eh, valid, _mm512_set1_ps(m));
  }
}

template <class T>
void step1(const SparqStep1Args& a, int b0, int b1, float* e, float* mx, float* sum) {
  const int nb = (a.S + B - 1) / B;
  // Prefetch about 8 KiB ahead: enough in flight to cover DRAM latency.
  const int run_bytes = B * int(sizeof(T));
  const int dist = std::clamp(8192 / std::max(1, a.r * run_bytes) + 1, 1, 8);
  const T* kt = static_cast<const T*>(a.k_t);
  thread_local std::vector<uint32_t> qp;
  if constexpr (sizeof(T) == 2) {
    const int np = (a.r + 1) / 2;
    qp.resize(size_t(a.n_h) * np);
    for (int h = 0; h < a.n_h; ++h)  // exact: qs holds bf16 values for bf16 keys
      for (int jp = 0; jp < np; ++jp) qp[size_t(h) * np + jp] = bf16_pair(a.qs + size_t(h) * a.r + 2 * jp, 2 * jp + 1 < a.r);
  }
  for (int b = b0; b < b1; ++b) {
    const T* pf = b + dist < nb ? kt + size_t(b + dist) * a.d * B : nullptr;
    for (int h0 = 0; h0 < a.n_h; h0 += 8) {
      const T* p = h0 == 0 ? pf : nullptr;  // later head chunks find the block in cache
      const uint32_t* q = qp.data();
      switch (std::min(8, a.n_h - h0)) {
        case 1: step1_block<T, 1, 4>(a, q, nb, h0, b, p, e, mx, sum); break;
        case 2: step1_block<T, 2, 4>(a, q, nb, h0, b, p, e, mx, sum); break;
        case 3: step1_block<T, 3, 2>(a, q, nb, h0, b, p, e, mx, sum); break;
        case 4: step1_block<T, 4, 2>(a, q, nb, h0, b, p, e, mx, sum); break;
        case 5: step1_block<T, 5, 1>(a, q, nb, h0, b, p, e, mx, sum); break;
        case 6: step1_block<T, 6, 1>(a, q, nb, h0, b, p, e, mx, sum); break;
        case 7: step1_block<T, 7, 1>(a, q, nb, h0, b, p, e, mx, sum); break;
        default: step1_block<T, 8, 1>(a, q, nb, h0, b, p, e, mx, sum); break;
      }
    }
  }
}

// ---- step 2 ----

// Step 2's scores of the 16 positions from p (a multiple of 16), summed in the
// reference's order; with mass, also adds e_h w_h of the lanes in sel to mass[h].
struct Scores {
  const float* e;
  const float* w;
  int n_h, nb;
  const float* sum = nullptr;  // the scores, when already summed over heads

  // Lanes outside k are not read (past the end of the arrays at the tail).
  __m512 at16(int p, __mmask16 k) const {
    if (sum) return _mm512_maskz_loadu_ps(k, sum + p);
    const int b = p / B;
    const float* eb = e + size_t(b) * n_h * B + p % B;
    __m512 s = _mm512_setzero_ps();
    for (int h = 0; h < n_h; ++h) s = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(k, eb + h * B), _mm512_set1_ps(w[h * nb + b]), s);
    return s;
  }
  uint32_t key(int p) const {
    const int b = p / B;
    float s = 0;
    if (sum)
      s = sum[p];
    else
      for (int h = 0; h < n_h; ++h) s = std::fma(e[(size_t(b) * n_h + h) * B + p % B], w[h * nb + b], s);
    uint32_t u;
    std::memcpy(&u, &s, 4);
    return u;
  }
  // NH = n_h, known at compile time so mass stays in registers.
  template <int NH>
  void add_mass(int p, __mmask16 sel, __m512 (&mass)[NH]) const {
    const int b = p / B;
    const float* eb = e + size_t(b) * NH * B + p % B;
    for (int h = 0; h < NH; ++h)
      mass[h] = _mm512_mask3_fmadd_ps(_mm512_maskz_loadu_ps(sel, eb + h * B), _mm512_set1_ps(w[h * nb + b]), mass[h], sel);
  }
};

// The rank-th largest (1-based, 1 <= rank <= n) of a[0, n), and in *greater
// how many of them are strictly larger. Quickselect with three-way
// partitions made by compress: branch-free, where std::nth_element's
// compares mispredict about half the time (measured 3-4x slower here).
// Reorders a; tmp: n + 16 words.
uint32_t kth_largest(uint32_t* a, int n, int rank, uint32_t* tmp, int* greater) {
  int above = 0;
  while (n > 16) {
    const uint32_t x = a[0], y = a[n / 2], z = a[n - 1];  // median of three
    const uint32_t pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));
    const __m512i vp = _mm512_set1_epi32(int(pivot));
    int gt = 0, eq = 0;
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = first16(n - i);
      const __m512i v = _mm512_maskz_loadu_epi32(k, a + i);
      gt += __builtin_popcount(_mm512_mask_cmpgt_epu32_mask(k, v, vp));
      eq += __builtin_popcount(_mm512_mask_cmpeq_epu32_mask(k, v, vp));
    }
    if (rank > gt && rank <= gt + eq) {
      *greater = above + gt;
      return pivot;
    }
    const bool high = rank <= gt;  // the wanted key is above the pivot
    if (!high) {
      rank -= gt + eq;
      above += gt + eq;
    }
    int kept = 0;
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = first16(n - i);
      const __m512i v = _mm512_maskz_loadu_epi32(k, a + i);
      const __mmask16 keep = high ? _mm512_mask_cmpgt_epu32_mask(k, v, vp) : _mm512_mask_cmplt_epu32_mask(k, v, vp);
      const int c = __builtin_popcount(keep);
      _mm512_mask_storeu_epi32(tmp + kept, first16_nb(c), _mm512_maskz_compress_epi32(keep, v));
      kept += c;
    }
    std::swap(a, tmp);
    n = kept;
  }
  std::sort(a, a + n, std::greater<uint32_t>());
  const uint32_t t = a[rank - 1];
  *greater = above + int(std::count_if(a, a + n, [t](uint32_t v) { return v > t; }));
  return t;
}

// The m-th largest key (1 <= m <= n) and how many keys equal to it the
// selection takes. Estimates a band around it from a strided sample, gathers
// the keys inside the band in one vector pass and finds the exact threshold
// among those; falls back to all keys when the band misses it.
// scratch: the keys (n + 16 words), then kth_largest's tmp (n + 16).
void find_threshold(const Scores& sc, int n, int m, uint32_t* scratch, uint32_t* thr, int* take_eq) {
  int above = 0;  // keys known to be above the band
  int nband = 0;  // keys in the band, copied to scratch
  bool banded = false;
  uint32_t* tmp = scratch + n + 16;
  const int ns = std::min(1024, n / 4);
  if (ns >= 256) {
    const int stride = n / ns;
    // Rank of the threshold in the sample, and a margin of ~4 sigma on each side.
    const double f = double(m) / n;
    const int j = int(f * ns);
    const int delta = int(4.0 * std::sqrt(ns * f * (1.0 - f))) + 4;
    const int jh = j - delta, jl = j + delta;
    uint32_t hi = std::numeric_limits<uint32_t>::max(), lo = 0;
    // The sample, and a copy for the second search (kth_largest reorders its
    // input); both fit before tmp since ns <= n / 4.
    uint32_t* copy = scratch + ns;
    for (int i = 0; i < ns; ++i) copy[i] = scratch[i] = sc.key(i * stride);
    int unused;
    if (jh >= 0) hi = kth_largest(scratch, ns, jh + 1, tmp, &unused);
    if (jl < ns) lo = kth_largest(copy, ns, jl + 1, tmp, &unused);
    const __m512i vhi = _mm512_set1_epi32(int(hi)), vlo = _mm512_set1_epi32(int(lo));
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = first16(n - i);
      const __m512i x = _mm512_castps_si512(sc.at16(i, k));
      const __mmask16 in = _mm512_mask_cmple_epu32_mask(_mm512_mask_cmpge_epu32_mask(k, x, vlo), x, vhi);
      above += __builtin_popcount(_mm512_mask_cmpgt_epu32_mask(k, x, vhi));
      const int c = __builtin_popcount(in);
      _mm512_mask_storeu_epi32(scratch + nband, first16_nb(c), _mm512_maskz_compress_epi32(in, x));
      nband += c;
    }
    banded = above < m && m <= above + nband;
  }
  if (!banded) {
    above = 0;
    nband = n;
    for (int i = 0; i < n; i += 16)
      _mm512_mask_storeu_epi32(scratch + i, first16(n - i), _mm512_castps_si512(sc.at16(i, first16(n - i))));
  }
  int greater;
  const uint32_t t = kth_largest(scratch, nband, m - above, tmp, &greater);
  *thr = t;
  *take_eq = m - above - greater;
}

// Writes to out, in index order, the positions whose key is above t and the
// first take_eq equal to it; with NH > 0 (the group size), adds their mass
// per head to mass.
template <int NH>
void emit(const Scores& sc, int n, uint32_t t, int take_eq, int* out, float* mass) {
  const __m512i vt = _mm512_set1_epi32(int(t));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  __m512 ms[NH > 0 ? NH : 1];
  for (__m512& x : ms) x = _mm512_setzero_ps();
  int pos = 0;
  for (int i = 0; i < n; i += 16) {
    const __mmask16 k = first16(n - i);
    const __m512i x = _mm512_castps_si512(sc.at16(i, k));
    __mmask16 sel = _mm512_mask_cmpgt_epu32_mask(k, x, vt);
    unsigned eq = _mm512_mask_cmpeq_epu32_mask(k, x, vt);
    for (; eq && take_eq > 0; --take_eq) {  // ties at the threshold: lowest indices first
      sel |= __mmask16(eq & -eq);
      eq &= eq - 1;
    }
    // Compress in a register, then a masked store: compress-to-memory is slow on some cores.
    const int c = __builtin_popcount(sel);
    _mm512_mask_storeu_epi32(out + pos, first16_nb(c), _mm512_maskz_compress_epi32(sel, _mm512_add_epi32(iota, _mm512_set1_epi32(i))));
    pos += c;
    if constexpr (NH > 0) sc.add_mass(i, sel, ms);
  }
  if constexpr (NH > 0)
    for (int h = 0; h < NH; ++h) mass[h] += _mm512_reduce_add_ps(ms[h]);
}

// ---- step 3 ----

// Rows this many ahead of the ones being read are prefetched, into L2: an
// L1 prefetch holds one of L1's few miss buffers until its line arrives, so
// 32 rows of them (128 lines at d = 64) stalled the loads and the arithmetic
// behind them. Into L2, the fetches overlap the arithmetic: 2.8x faster at
// S = 32k, d = 64, group 4 from DRAM (16, 32 and 64 rows ahead measured alike
// into L1).
constexpr int kRowsAhead = 32;
// The largest group one pass takes; larger ones run in slices.
constexpr int kMaxStep3Group = 8;

template <class T>
void prefetch_row(const T* row, int d) {
  const uintptr_t end = reinterpret_cast<uintptr_t>(row + d);
  for (uintptr_t l = reinterpret_cast<uintptr_t>(row) & ~uintptr_t(63); l < end; l += 64)
    prefetch(reinterpret_cast<const void*>(l));
}

// 32 bf16 values (lanes outside m: 0), unmasked where it can.
[[gnu::always_inline]] inline __m512bh load_bh(const uint16_t* p, __mmask32 m) {
  return as_bh(m == ~__mmask32(0) ? _mm512_loadu_si512(p) : _mm512_maskz_loadu_epi16(m, p));
}

// x laid out [row][head] (lane i: head i % G, lanes from R G on unused):
// lane i of the result is the max (Max) or sum over head i % G's lanes.
template <int G, int R, bool Max>
__m512 per_head(__m512 x) {
  alignas(64) float v[16], out[16];
  _mm512_store_ps(v, x);
  for (int h = 0; h < G; ++h) {
    float t = v[h];
    for (int r = 1; r < R; ++r) t = Max ? std::max(t, v[r * G + h]) : t + v[r * G + h];
    for (int i = h; i < 16; i += G) out[i] = t;
  }
  return _mm512_load_ps(out);
}

// One pass over the selected rows; each row's key and value are fetched
// together, so both gathers are in flight at once.
// Scores: R = 16 / G rows times G heads make the dot products one hsum16
// finishes, so each key row is loaded once for all heads; they come out
// [row][head]. A chunk is NG such groups.
// Softmax: weights are 2^(x - m) for a reference m that only moves when a
// score passes it, so no row waits on a horizontal max. m sits kHeadroom
// above the max seen, which keeps moves rare while the largest weight stays
// at least 2^-16, far from underflow.
// Values: as in the dense kernel, 32 components per load in load32's order,
// U rows at a time so that 2 U G FMA chains hide the FMA latency.
template <class T, int NV, int G>
void step3(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc, float* scratch) {
  constexpr int R = 16 / G, NG = 16 / R, CR = R * NG, U = G >= 4 ? 1 : 4 / G;
  constexpr float kHeadroom = 16.0f;
  constexpr int kStep = sizeof(T) == 2 ? 32 : 16;  // components per dot-product instruction
  const int d = NV > 0 ? 16 * NV : a.d, dp = NV > 0 ? d : sparq_dpad(d), nc = (d + 31) / 32, wd = nc * 32;
  const auto full = [](int left) { return NV > 0 && NV % 2 == 0 ? ~__mmask32(0) : first32(left); };
  const T* K = static_cast<const T*>(a.k_rows);
  const T* V = static_cast<const T*>(a.v_rows);
  float* w = scratch;                                   // [NG][16]: a chunk's weights, [row][head] per group
  float* ac = w + 16 * NG;                              // [G][wd], in load32's order
  auto* qb = reinterpret_cast<uint16_t*>(ac + G * wd);  // [G][dp] bf16 (exact: q comes rounded)
  if constexpr (sizeof(T) == 2)
    for (int h = 0; h < G; ++h)
      for (int v = 0; v < dp; v += 16)
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(qb + h * dp + v),
                            __m256i(_mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(first16(d - v), a.q + size_t(h) * d + v))));
  std::fill(ac, ac + size_t(G) * wd, 0.0f);
  for (int i = 0; i < std::min(n, kRowsAhead); ++i)
    prefetch_row(K + size_t(idx[i]) * d, d), prefetch_row(V + size_t(idx[i]) * d, d);
  const __m512 vscale = _mm512_set1_ps(a.scale);
  const __m512 minus_inf = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  __m512 m = _mm512_setzero_ps(), l = _mm512_setzero_ps();  // lane i: head i % G
  const T* rows[CR];
  for (int c = 0; c < n; c += CR) {
    for (int i = 0; i < CR; ++i) rows[i] = K + size_t(idx[std::min(c + i, n - 1)]) * d;
    for (int g = 0; g < NG; ++g) {
      for (int i = c + kRowsAhead + g * R; i < std::min(n, c + kRowsAhead + (g + 1) * R); ++i)
        prefetch_row(K + size_t(idx[i]) * d, d), prefetch_row(V + size_t(idx[i]) * d, d);
      __m512 dot[16];
      for (int i = 0; i < 16; ++i) dot[i] = _mm512_setzero_ps();
      for (int v = 0; v < dp; v += kStep) {
        if constexpr (sizeof(T) == 2) {
          const __mmask32 mk = full(d - v);
          for (int r = 0; r < R; ++r) {
            const __m512bh k = load_bh(rows[g * R + r] + v, mk);
            for (int h = 0; h < G; ++h) dot[r * G + h] = _mm512_dpbf16_ps(dot[r * G + h], k, load_bh(qb + h * dp + v, mk));
          }
        } else {
          const __mmask16 mk = NV > 0 ? __mmask16(0xffff) : first16(d - v);
          for (int r = 0; r < R; ++r) {
            const __m512 k = _mm512_maskz_loadu_ps(mk, rows[g * R + r] + v);
            for (int h = 0; h < G; ++h)
              dot[r * G + h] = _mm512_fmadd_ps(k, _mm512_maskz_loadu_ps(mk, a.q + size_t(h) * d + v), dot[r * G + h]);
          }
        }
      }
      const __mmask16 valid = first16(std::min(R, n - c - g * R) * G);
      const __m512 s = _mm512_maskz_mul_ps(valid, vscale, hsum16(dot));
      const auto top = [&] {
        return _mm512_add_ps(per_head<G, R, true>(_mm512_mask_mov_ps(minus_inf, valid, s)), _mm512_set1_ps(kHeadroom));
      };
      if (c == 0 && g == 0) m = top();
      if (_mm512_mask_cmp_ps_mask(valid, s, m, _CMP_GT_OQ)) [[unlikely]] {
        // A score passed the reference: move it up and rescale what was summed.
        const __m512 m2 = _mm512_max_ps(m, top()), f = exp2_ps(_mm512_sub_ps(m, m2));
        alignas(64) float fh[16];
        _mm512_store_ps(fh, f);
        for (int h = 0; h < G; ++h)
          for (int v = 0; v < wd; v += 16)
            _mm512_storeu_ps(ac + h * wd + v, _mm512_mul_ps(_mm512_set1_ps(fh[h]), _mm512_loadu_ps(ac + h * wd + v)));
        for (int i = 0; i < g; ++i) _mm512_storeu_ps(w + 16 * i, _mm512_mul_ps(f, _mm512_loadu_ps(w + 16 * i)));
        l = _mm512_mul_ps(l, f);
        m = m2;
      }
      const __m512 p = _mm512_maskz_mov_ps(valid, exp2_ps(_mm512_sub_ps(s, m)));
      _mm512_storeu_ps(w + 16 * g, p);
      l = _mm512_add_ps(l, p);
    }
    for (int i = 0; i < CR; ++i) rows[i] = V + size_t(idx[std::min(c + i, n - 1)]) * d;
    for (int j = 0; j < nc; ++j) {
      const __mmask32 mk = full(d - 32 * j);
      __m512 a0[U][G], a1[U][G];
      for (int u = 0; u < U; ++u)
        for (int h = 0; h < G; ++h) a0[u][h] = a1[u][h] = _mm512_setzero_ps();
      for (int r = 0; r < CR; r += U)
        for (int u = 0; u < U; ++u) {
          const int i = r + u;
          __m512 x0, x1;
          load32(rows[i] + 32 * j, mk, x0, x1);
          for (int h = 0; h < G; ++h) {
            const __m512 p = _mm512_set1_ps(w[16 * (i / R) + (i % R) * G + h]);
            a0[u][h] = _mm512_fmadd_ps(p, x0, a0[u][h]);
            a1[u][h] = _mm512_fmadd_ps(p, x1, a1[u][h]);
          }
        }
      for (int h = 0; h < G; ++h) {
        float* o = ac + h * wd + 32 * j;
        __m512 s0 = _mm512_loadu_ps(o), s1 = _mm512_loadu_ps(o + 16);
        for (int u = 0; u < U; ++u) s0 = _mm512_add_ps(s0, a0[u][h]), s1 = _mm512_add_ps(s1, a1[u][h]);
        _mm512_storeu_ps(o, s0);
        _mm512_storeu_ps(o + 16, s1);
      }
    }
  }
  alignas(64) float mh[16], zh[16];
  _mm512_store_ps(mh, m);
  _mm512_store_ps(zh, per_head<G, R, false>(l));
  for (int h = 0; h < G; ++h) {
    mx[h] = mh[h];
    z[h] = zh[h];
    for (int j = 0; j < nc; ++j) {
      __m512 x0 = _mm512_loadu_ps(ac + h * wd + 32 * j), x1 = _mm512_loadu_ps(ac + h * wd + 32 * j + 16);
      in_order<T>(x0, x1);
      float* o = acc + size_t(h) * dp + 32 * j;
      _mm512_mask_storeu_ps(o, first16(dp - 32 * j), x0);
      _mm512_mask_storeu_ps(o + 16, first16(dp - 32 * j - 16), x1);
    }
  }
}

template <class T, int NV>
void step3_group(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc, float* scratch) {
  switch (a.n_h) {
    case 1: return step3<T, NV, 1>(a, idx, n, mx, z, acc, scratch);
    case 2: return step3<T, NV, 2>(a, idx, n, mx, z, acc, scratch);
    case 3: return step3<T, NV, 3>(a, idx, n, mx, z, acc, scratch);
    case 4: return step3<T, NV, 4>(a, idx, n, mx, z, acc, scratch);
    case 5: return step3<T, NV, 5>(a, idx, n, mx, z, acc, scratch);
    case 6: return step3<T, NV, 6>(a, idx, n, mx, z, acc, scratch);
    case 7: return step3<T, NV, 7>(a, idx, n, mx, z, acc, scratch);
    default: return step3<T, NV, 8>(a, idx, n, mx, z, acc, scratch);
  }
}

}  // namespace

void sparq_step1(const SparqStep1Args& a, int b0, int b1, float* e, float* mx, float* sum) {
  if (a.type == DType::F32)
    step1<float>(a, b0, b1, e, mx, sum);
  else
    step1<uint16_t>(a, b0, b1, e, mx, sum);
}

void sparq_weights(const float* mx, const float* sum, int n_h, int nb, float* w) {
  for (int h = 0; h < n_h; ++h) {
    const float* m = mx + size_t(h) * nb;
    const float* sh = sum + size_t(h) * nb;
    float* wh = w + size_t(h) * nb;
    __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int b = 0; b < nb; b += 16) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, first16(nb - b), m + b));
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vz = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 16) {
      const __mmask16 k = first16(nb - b);
      const __m512 x = _mm512_maskz_mov_ps(k, exp2_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, m + b), top)));
      _mm512_mask_storeu_ps(wh + b, k, x);
      vz = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(k, sh + b), vz);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vz));
    for (int b = 0; b < nb; b += 16) {
      const __mmask16 k = first16(nb - b);
      _mm512_mask_storeu_ps(wh + b, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, wh + b), inv));
    }
  }
}

void sparq_select(const float* e, const float* w, int n_h, int nb, int n, int m, int* out, float* mass,
                  uint32_t* scratch) {
  m = std::clamp(m, 0, n);
  if (m == 0) return;
  Scores sc{e, w, n_h, nb};
  if (n_h > 1) {
    // Several heads: sum them once (into the third of scratch the threshold
    // search leaves alone) rather than in each of the passes below.
    float* s = reinterpret_cast<float*>(scratch + 2 * size_t(n) + 32);
    for (int i = 0; i < n; i += 16) _mm512_mask_storeu_ps(s + i, first16(n - i), sc.at16(i, first16(n - i)));
    sc.sum = s;
  }
  uint32_t t;
  int take_eq;
  find_threshold(sc, n, m, scratch, &t, &take_eq);
  // Groups of common sizes add alpha while emitting; the rest gather it after.
  switch (mass ? n_h : 0) {
    case 1: return emit<1>(sc, n, t, take_eq, out, mass);
    case 2: return emit<2>(sc, n, t, take_eq, out, mass);
    case 4: return emit<4>(sc, n, t, take_eq, out, mass);
    case 8: return emit<8>(sc, n, t, take_eq, out, mass);
    default:
      emit<0>(sc, n, t, take_eq, out, nullptr);
      if (mass) sparq_mass(e, w, n_h, nb, out, m, mass);
  }
}

void sparq_mass(const float* e, const float* w, int n_h, int nb, const int* idx, int n, float* mass) {
  static_assert((B & (B - 1)) == 0, "the shift and mask below assume a power-of-two block");
  constexpr int kShift = __builtin_ctz(B);
  const __m512i stride = _mm512_set1_epi32(n_h * B);
  for (int h = 0; h < n_h; ++h) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = first16(n - i);
      const __m512i p = _mm512_maskz_loadu_epi32(k, idx + i);
      const __m512i b = _mm512_srli_epi32(p, kShift);
      const __m512i off = _mm512_add_epi32(_mm512_mullo_epi32(b, stride),
                                           _mm512_add_epi32(_mm512_set1_epi32(h * B),
                                                            _mm512_and_si512(p, _mm512_set1_epi32(B - 1))));
      const __m512i woff = _mm512_add_epi32(b, _mm512_set1_epi32(h * nb));
      const __m512 ev = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, off, e, 4);
      const __m512 wv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, woff, w, 4);
      acc = _mm512_fmadd_ps(ev, wv, acc);
    }
    mass[h] += _mm512_reduce_add_ps(acc);
  }
}

void sparq_step3(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc,
                 float* scratch) {
  const int dp = sparq_dpad(a.d);
  for (int h0 = 0; h0 < a.n_h; h0 += kMaxStep3Group) {
    SparqStep3Args s = a;
    s.q = a.q + size_t(h0) * a.d;
    s.n_h = std::min(kMaxStep3Group, a.n_h - h0);
    float *m = mx + h0, *zh = z + h0, *ah = acc + size_t(h0) * dp;
    if (a.type == DType::F32)
      step3_group<float, 0>(s, idx, n, m, zh, ah, scratch);
    else if (a.d == 64)
      step3_group<uint16_t, 4>(s, idx, n, m, zh, ah, scratch);
    else if (a.d == 128)
      step3_group<uint16_t, 8>(s, idx, n, m, zh, ah, scratch);
    else
      step3_group<uint16_t, 0>(s, idx, n, m, zh, ah, scratch);
  }
}

}  // namespace sparq::avx512bf16
