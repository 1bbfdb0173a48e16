// AVX-512 SparQ kernels (compiled with AVX-512 flags; only reached after
// use_avx512()). Keys are converted bf16 -> f32 and multiplied in f32, so the
// results match the scalar reference up to summation order.
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

#include "sparq/sparq_kernels.h"

namespace sparq::avx512 {
namespace {

constexpr int B = kSparqBlock;

__mmask16 tail_mask(int rem) {
  return rem >= 16 ? __mmask16(0xffff) : rem <= 0 ? __mmask16(0) : __mmask16((1u << rem) - 1u);
}

// 2^x for x <= 0 (max-subtracted scores): x = n + f with |f| <= 1/2, the
// degree-7 Taylor polynomial of 2^f (error below 1e-8) and scalef for 2^n,
// which underflows to subnormals and 0. NaN and x < -151 give 0.
__m512 exp2_ps(__m512 x) {
  x = _mm512_max_ps(x, _mm512_set1_ps(-151.0f));
  const __m512 n = _mm512_roundscale_ps(x, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  const __m512 f = _mm512_sub_ps(x, n);
  __m512 p = _mm512_set1_ps(1.5252733804e-5f);
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.5403530393e-4f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.3333558146e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(9.6181291076e-3f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(5.5504108665e-2f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(2.4022650696e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(6.9314718056e-1f));
  p = _mm512_fmadd_ps(p, f, _mm512_set1_ps(1.0f));
  return _mm512_scalef_ps(p, n);
}

// 16 elements as f32; lanes outside m are 0.
__m512 load16(const float* p, __mmask16 m) { return _mm512_maskz_loadu_ps(m, p); }
__m512 load16(const uint16_t* p, __mmask16 m) {
  const __m512i w = _mm512_cvtepu16_epi32(_mm256_maskz_loadu_epi16(m, p));
  return _mm512_castsi512_ps(_mm512_slli_epi32(w, 16));
}

void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0); }

// Lane i of the result is the sum of the 16 lanes of a[i].
__m512 hsum16(const __m512 (&a)[16]) {
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

// One block for NH heads starting at h0, P vectors of 16 positions at a time
// so each loaded key vector feeds NH * P accumulators. pf: the block whose runs
// to prefetch (null: none).
template <class T, int NH, int P>
void step1_block(const SparqStep1Args& a, int nb, int h0, int b, const T* pf, float* e, float* mx, float* sum) {
  constexpr int kGroups = B / (16 * P);
  constexpr int kLinesPerGroup = int(B * sizeof(T)) / 64 / kGroups;
  const T* blk = static_cast<const T*>(a.k_t) + size_t(b) * a.d * B;
  const int valid = std::min(B, a.S - b * B);
  const int r = a.r;
  const float* qs = a.qs + size_t(h0) * r;
  float* eb = e + (size_t(b) * a.n_h + h0) * B;
  __m512 vmax[NH];
  for (int h = 0; h < NH; ++h) vmax[h] = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int g = 0; g < kGroups && g * 16 * P < valid; ++g) {
    const int p0 = g * 16 * P;
    __mmask16 mk[P];
    for (int v = 0; v < P; ++v) mk[v] = tail_mask(valid - p0 - 16 * v);
    __m512 acc[NH][P];
    for (int h = 0; h < NH; ++h)
      for (int v = 0; v < P; ++v) acc[h][v] = _mm512_setzero_ps();
    for (int j = 0; j < r; ++j) {
      const size_t run = size_t(a.i1[j]) * B;
      if (pf)
        for (int l = 0; l < kLinesPerGroup; ++l)
          prefetch(reinterpret_cast<const char*>(pf + run) + (g * kLinesPerGroup + l) * 64);
      for (int v = 0; v < P; ++v) {
        const __m512 kv = load16(blk + run + p0 + 16 * v, mk[v]);
        for (int h = 0; h < NH; ++h) acc[h][v] = _mm512_fmadd_ps(kv, _mm512_set1_ps(qs[h * r + j]), acc[h][v]);
      }
    }
    for (int h = 0; h < NH; ++h)
      for (int v = 0; v < P; ++v) {
        _mm512_storeu_ps(eb + h * B + p0 + 16 * v, acc[h][v]);
        vmax[h] = _mm512_mask_max_ps(vmax[h], mk[v], vmax[h], acc[h][v]);
      }
  }
  for (int h = 0; h < NH; ++h) {
    const float m = _mm512_reduce_max_ps(vmax[h]);
    const __m512 vm = _mm512_set1_ps(m);
    __m512 vs = _mm512_setzero_ps();
    float* eh = eb + h * B;
    for (int i = 0; i < B; i += 16) {
      const __mmask16 k = tail_mask(valid - i);
      const __m512 x = _mm512_maskz_mov_ps(k, exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(eh + i), vm)));
      _mm512_storeu_ps(eh + i, x);
      vs = _mm512_add_ps(vs, x);
    }
    mx[(h0 + h) * nb + b] = m;
    sum[(h0 + h) * nb + b] = _mm512_reduce_add_ps(vs);
  }
}

template <class T>
void step1(const SparqStep1Args& a, int b0, int b1, float* e, float* mx, float* sum) {
  const int nb = (a.S + B - 1) / B;
  // Prefetch about 8 KiB ahead: enough in flight to cover DRAM latency.
  const int run_bytes = B * int(sizeof(T));
  const int dist = std::clamp(8192 / std::max(1, a.r * run_bytes) + 1, 1, 8);
  const T* kt = static_cast<const T*>(a.k_t);
  for (int b = b0; b < b1; ++b) {
    const T* pf = b + dist < nb ? kt + size_t(b + dist) * a.d * B : nullptr;
    for (int h0 = 0; h0 < a.n_h; h0 += 8) {
      const T* p = h0 == 0 ? pf : nullptr;  // later head chunks find the block in cache
      switch (std::min(8, a.n_h - h0)) {
        case 1: step1_block<T, 1, 8>(a, nb, h0, b, p, e, mx, sum); break;
        case 2: step1_block<T, 2, 8>(a, nb, h0, b, p, e, mx, sum); break;
        case 3: step1_block<T, 3, 4>(a, nb, h0, b, p, e, mx, sum); break;
        case 4: step1_block<T, 4, 4>(a, nb, h0, b, p, e, mx, sum); break;
        case 5: step1_block<T, 5, 2>(a, nb, h0, b, p, e, mx, sum); break;
        case 6: step1_block<T, 6, 2>(a, nb, h0, b, p, e, mx, sum); break;
        case 7: step1_block<T, 7, 2>(a, nb, h0, b, p, e, mx, sum); break;
        default: step1_block<T, 8, 2>(a, nb, h0, b, p, e, mx, sum); break;
      }
    }
  }
}

// ---- top-k ----

// Among the n keys, the m-th largest (1 <= m <= n) and how many of the keys
// equal to it the selection takes. Estimates a band around it from a strided
// sample, gathers the keys inside the band in one vector pass and finds the
// exact threshold among those; falls back to all keys when the band misses.
void find_threshold(const float* s, int n, int m, uint32_t* scratch, uint32_t* thr, int* take_eq) {
  int above = 0;  // keys known to be above the band
  int nband = n;  // keys in the band, copied to scratch
  const int ns = std::min(1024, n / 4);
  bool banded = false;
  if (ns >= 256) {
    for (int i = 0; i < ns; ++i) std::memcpy(scratch + i, s + size_t(i) * n / ns, 4);
    // Rank of the threshold in the sample, and a margin of ~4 sigma on each side.
    const double f = double(m) / n;
    const int j = int(f * ns);
    const int delta = int(4.0 * std::sqrt(ns * f * (1.0 - f))) + 4;
    const int jh = j - delta, jl = j + delta;
    uint32_t hi = std::numeric_limits<uint32_t>::max(), lo = 0;
    if (jh >= 0) {
      std::nth_element(scratch, scratch + jh, scratch + ns, std::greater<uint32_t>());
      hi = scratch[jh];
    }
    if (jl < ns) {
      std::nth_element(scratch, scratch + jl, scratch + ns, std::greater<uint32_t>());
      lo = scratch[jl];
    }
    const __m512i vhi = _mm512_set1_epi32(int(hi)), vlo = _mm512_set1_epi32(int(lo));
    int cnt_above = 0, cnt_band = 0;
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = tail_mask(n - i);
      const __m512i x = _mm512_maskz_loadu_epi32(k, s + i);
      const __mmask16 up = _mm512_mask_cmpgt_epu32_mask(k, x, vhi);
      const __mmask16 in = _mm512_mask_cmple_epu32_mask(_mm512_mask_cmpge_epu32_mask(k, x, vlo), x, vhi);
      cnt_above += __builtin_popcount(up);
      const int c = __builtin_popcount(in);
      _mm512_mask_storeu_epi32(scratch + cnt_band, __mmask16((1u << c) - 1u), _mm512_maskz_compress_epi32(in, x));
      cnt_band += c;
    }
    if (cnt_above < m && m <= cnt_above + cnt_band) {
      above = cnt_above;
      nband = cnt_band;
      banded = true;
    }
  }
  if (!banded) std::memcpy(scratch, s, size_t(n) * 4);
  const int rank = m - above;  // 1-based rank of the threshold within the band
  std::nth_element(scratch, scratch + (rank - 1), scratch + nband, std::greater<uint32_t>());
  const uint32_t t = scratch[rank - 1];
  int greater = above;
  for (int i = 0; i < rank - 1; ++i) greater += scratch[i] > t;  // the first rank-1 are >= t
  *thr = t;
  *take_eq = m - greater;
}


// ---- step 3 ----

// Rows this many ahead of the one being read are prefetched.
constexpr int kRowsAhead = 32;

template <class T>
void prefetch_rows(const T* base, int d, const int* idx, int from, int to) {
  const size_t bytes = size_t(d) * sizeof(T);
  for (int i = from; i < to; ++i) {
    const char* p = reinterpret_cast<const char*>(base + size_t(idx[i]) * d);
    for (size_t o = 0; o < bytes; o += 64) prefetch(p + o);
    prefetch(p + bytes - 1);
  }
}

// The rows idx[0..rows) as f32 into buf [16][dp], zero past d and past rows.
template <class T>
void load_rows(const T* base, int d, int dp, const int* idx, int rows, float* buf) {
  for (int i = 0; i < 16; ++i) {
    float* dst = buf + size_t(i) * dp;
    if (i < rows) {
      const T* src = base + size_t(idx[i]) * d;
      for (int c = 0; c < dp; c += 16) _mm512_storeu_ps(dst + c, load16(src + c, tail_mask(d - c)));
    } else {
      for (int c = 0; c < dp; c += 16) _mm512_storeu_ps(dst + c, _mm512_setzero_ps());
    }
  }
}

// acc[h0 + h][v0 + v] += sum over the 16 rows of buf of p[h][row] * buf[row][v]
// for up to GH heads and VC vectors, with the sums kept in registers.
template <int GH, int VC>
void accumulate_rows(const float* buf, int dp, const float* p, size_t p_stride, int gh, int vc, float* acc) {
  __m512 s[GH][VC];
  for (int h = 0; h < GH; ++h)
    for (int v = 0; v < VC; ++v) s[h][v] = _mm512_setzero_ps();
  for (int i = 0; i < 16; ++i) {
    __m512 x[VC];
    for (int v = 0; v < VC; ++v)
      if (v < vc) x[v] = _mm512_loadu_ps(buf + size_t(i) * dp + 16 * v);
    for (int h = 0; h < GH; ++h) {
      if (h >= gh) break;
      const __m512 ph = _mm512_set1_ps(p[h * p_stride + i]);
      for (int v = 0; v < VC; ++v)
        if (v < vc) s[h][v] = _mm512_fmadd_ps(ph, x[v], s[h][v]);
    }
  }
  for (int h = 0; h < GH && h < gh; ++h)
    for (int v = 0; v < VC && v < vc; ++v) {
      float* o = acc + size_t(h) * dp + 16 * v;
      _mm512_storeu_ps(o, _mm512_add_ps(_mm512_loadu_ps(o), s[h][v]));
    }
}

template <class T>
void step3(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc, float* scratch) {
  constexpr int GH = 6, VC = 4;  // 24 accumulators
  const int d = a.d, dp = sparq_dpad(d), nh = a.n_h;
  const size_t n16 = size_t(n + 15) / 16 * 16;
  float* x = scratch;             // [nh][n16]: logits, then weights
  float* buf = scratch + nh * n16;  // 16 rows in f32
  const T* K = static_cast<const T*>(a.k_rows);
  const T* V = static_cast<const T*>(a.v_rows);

  prefetch_rows(K, d, idx, 0, std::min(n, kRowsAhead));
  for (int c = 0; c < n; c += 16) {
    prefetch_rows(K, d, idx, std::min(n, c + kRowsAhead), std::min(n, c + kRowsAhead + 16));
    load_rows(K, d, dp, idx + c, std::min(16, n - c), buf);
    for (int h = 0; h < nh; ++h) {
      const float* qh = a.q + size_t(h) * d;
      __m512 dot[16];
      for (int i = 0; i < 16; ++i) dot[i] = _mm512_setzero_ps();
      for (int v = 0; v < dp; v += 16) {
        const __m512 qv = _mm512_maskz_loadu_ps(tail_mask(d - v), qh + v);
        for (int i = 0; i < 16; ++i) dot[i] = _mm512_fmadd_ps(qv, _mm512_loadu_ps(buf + i * dp + v), dot[i]);
      }
      _mm512_storeu_ps(x + h * n16 + c, hsum16(dot));
    }
  }

  prefetch_rows(V, d, idx, 0, std::min(n, kRowsAhead));
  for (int h = 0; h < nh; ++h) {
    float* xh = x + h * n16;
    __m512 vmax = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
    for (int c = 0; c < n; c += 16) vmax = _mm512_mask_max_ps(vmax, tail_mask(n - c), vmax, _mm512_loadu_ps(xh + c));
    const float m = _mm512_reduce_max_ps(vmax);
    const __m512 vm = _mm512_set1_ps(m);
    __m512 vs = _mm512_setzero_ps();
    for (int c = 0; c < n; c += 16) {
      const __m512 p = _mm512_maskz_mov_ps(tail_mask(n - c), exp2_ps(_mm512_sub_ps(_mm512_loadu_ps(xh + c), vm)));
      _mm512_storeu_ps(xh + c, p);
      vs = _mm512_add_ps(vs, p);
    }
    mx[h] = m;
    z[h] = _mm512_reduce_add_ps(vs);
  }

  std::fill(acc, acc + size_t(nh) * dp, 0.0f);
  for (int c = 0; c < n; c += 16) {
    prefetch_rows(V, d, idx, std::min(n, c + kRowsAhead), std::min(n, c + kRowsAhead + 16));
    load_rows(V, d, dp, idx + c, std::min(16, n - c), buf);
    for (int h0 = 0; h0 < nh; h0 += GH)
      for (int v0 = 0; v0 < dp / 16; v0 += VC)
        accumulate_rows<GH, VC>(buf + 16 * v0, dp, x + h0 * n16 + c, n16, std::min(GH, nh - h0),
                                std::min(VC, dp / 16 - v0), acc + size_t(h0) * dp + 16 * v0);
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
    for (int b = 0; b < nb; b += 16) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(vmax, tail_mask(nb - b), m + b));
    const __m512 top = _mm512_set1_ps(_mm512_reduce_max_ps(vmax));
    __m512 vz = _mm512_setzero_ps();
    for (int b = 0; b < nb; b += 16) {
      const __mmask16 k = tail_mask(nb - b);
      const __m512 x = _mm512_maskz_mov_ps(k, exp2_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(k, m + b), top)));
      _mm512_mask_storeu_ps(wh + b, k, x);
      vz = _mm512_fmadd_ps(x, _mm512_maskz_loadu_ps(k, sh + b), vz);
    }
    const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vz));
    for (int b = 0; b < nb; b += 16) {
      const __mmask16 k = tail_mask(nb - b);
      _mm512_mask_storeu_ps(wh + b, k, _mm512_mul_ps(_mm512_maskz_loadu_ps(k, wh + b), inv));
    }
  }
}

void sparq_combine(const float* e, const float* w, int n_h, int nb, int b0, int b1, float* s) {
  for (int b = b0; b < b1; ++b) {
    const float* eb = e + size_t(b) * n_h * B;
    for (int i = 0; i < B; i += 16) {
      __m512 acc = _mm512_setzero_ps();
      for (int h = 0; h < n_h; ++h)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(eb + h * B + i), _mm512_set1_ps(w[h * nb + b]), acc);
      _mm512_storeu_ps(s + size_t(b) * B + i, acc);
    }
  }
}

void sparq_topk(const float* s, int n, int m, int* out, uint32_t* scratch) {
  m = std::clamp(m, 0, n);
  if (m == 0) return;
  uint32_t t;
  int take_eq;
  find_threshold(s, n, m, scratch, &t, &take_eq);
  const __m512i vt = _mm512_set1_epi32(int(t));
  const __m512i iota = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  int pos = 0;
  for (int i = 0; i < n; i += 16) {
    const __mmask16 k = tail_mask(n - i);
    const __m512i x = _mm512_maskz_loadu_epi32(k, s + i);
    __mmask16 sel = _mm512_mask_cmpgt_epu32_mask(k, x, vt);
    unsigned eq = _mm512_mask_cmpeq_epu32_mask(k, x, vt);
    for (; eq && take_eq > 0; --take_eq) {  // ties at the threshold: lowest indices first
      sel |= __mmask16(eq & -eq);
      eq &= eq - 1;
    }
    const int c = __builtin_popcount(sel);
    _mm512_mask_storeu_epi32(out + pos, __mmask16((1u << c) - 1u),
                             _mm512_maskz_compress_epi32(sel, _mm512_add_epi32(iota, _mm512_set1_epi32(i))));
    pos += c;
  }
}

void sparq_mass(const float* e, const float* w, int n_h, int nb, const int* idx, int n, float* mass) {
  const __m512i stride = _mm512_set1_epi32(n_h * B);
  for (int h = 0; h < n_h; ++h) {
    __m512 acc = _mm512_setzero_ps();
    for (int i = 0; i < n; i += 16) {
      const __mmask16 k = tail_mask(n - i);
      const __m512i p = _mm512_maskz_loadu_epi32(k, idx + i);
      const __m512i b = _mm512_srli_epi32(p, 8);
      static_assert(B == 256, "the shift and mask below assume 256-position blocks");
      const __m512i off = _mm512_add_epi32(_mm512_mullo_epi32(b, stride),
                                           _mm512_add_epi32(_mm512_set1_epi32(h * B),
                                                            _mm512_and_si512(p, _mm512_set1_epi32(B - 1))));
      const __m512i woff = _mm512_add_epi32(b, _mm512_set1_epi32(h * nb));
      const __m512 ev = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, off, e, 4);
      const __m512 wv = _mm512_mask_i32gather_ps(_mm512_setzero_ps(), k, woff, w, 4);
      acc = _mm512_fmadd_ps(ev, wv, acc);
    }
    mass[h] = _mm512_reduce_add_ps(acc);
  }
}

void sparq_step3(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc,
                 float* scratch) {
  if (a.type == DType::F32)
    step3<float>(a, idx, n, mx, z, acc, scratch);
  else
    step3<uint16_t>(a, idx, n, mx, z, acc, scratch);
}

}  // namespace sparq::avx512
