// SparQ kernels for the avx2, avx512 and avx512bf16 tiers, written once over
// kernels/simd.h's lanes:
// step 1 over the transposed keys with every loaded run feeding the group's
// heads, step 2 by a sampled threshold and branch-free compress partitions,
// step 3 with one dot-product transpose per kLanes (row, head) pairs and a
// lazily moved softmax reference.
// bf16 keys and values become f32 by a shift, q8_0 ones by a conversion and
// their f16 scale (both exact); bf16 queries come rounded, so step 3's
// products are exact and only the f32 sums' order differs from the
// reference. Step 1 fuses its products in the reference's order (q8_0: then
// times the position's scale), and step 2 sums its scores in the reference's
// order, so both select the same positions.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>

#include "sparq/kernels/simd.h"
#include "sparq/kernels/sparq_kernels.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

constexpr int B = kSparqBlock;
constexpr float kInf = std::numeric_limits<float>::infinity();
constexpr int32_t kSignBit = std::numeric_limits<int32_t>::min();

// Into L2, as the avx512bf16 kernels: an L1 prefetch holds one of L1's few
// miss buffers until its line arrives.
inline void prefetch(const void* p) { _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T1); }

// ---- lane helpers simd.h lacks ----

// Bit i set for lanes i < n (n clamped to [0, kLanes]).
inline unsigned first_bits(int n) { return n >= kLanes ? (1u << kLanes) - 1u : n <= 0 ? 0u : (1u << n) - 1u; }

#if SPARQ_SIMD_512
inline VI loadi(const int32_t* p) { return _mm512_loadu_si512(p); }
inline VI loadi_first(const int32_t* p, int n) { return _mm512_maskz_loadu_epi32(first_mask(n), p); }
inline void storei(int32_t* p, VI v) { _mm512_storeu_si512(p, v); }
inline VI xor_i(VI a, VI b) { return _mm512_xor_si512(a, b); }
inline VI mullo_i(VI a, VI b) { return _mm512_mullo_epi32(a, b); }
inline unsigned gt_bits(VI a, VI b) { return _mm512_cmpgt_epi32_mask(a, b); }
inline unsigned eq_bits(VI a, VI b) { return _mm512_cmpeq_epi32_mask(a, b); }
inline VI iota_i() { return _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15); }
// Lanes of v whose bit is set, packed to the front; all kLanes lanes are
// stored (dst needs kLanes words). Compress in a register, then a plain
// store: compress-to-memory is slow on some cores.
inline int compress_store(int32_t* dst, VI v, unsigned bits) {
  storei(dst, _mm512_maskz_compress_epi32(__mmask16(bits), v));
  return __builtin_popcount(bits);
}
inline VF gather(const float* base, VI off, int n) {
  return _mm512_mask_i32gather_ps(zero(), first_mask(n), off, base, 4);
}
// 2 kLanes bf16 as f32, interleaved by unpacking with zeros (one op per
// kLanes, where widening in order takes two): lo holds positions {0-3, 8-11,
// 16-19, 24-27}, hi the other quads.
inline void widen2(__m512i x, VF& lo, VF& hi) {
  lo = _mm512_castsi512_ps(_mm512_unpacklo_epi16(_mm512_setzero_si512(), x));
  hi = _mm512_castsi512_ps(_mm512_unpackhi_epi16(_mm512_setzero_si512(), x));
}
inline void load2(const uint16_t* p, VF& lo, VF& hi) { widen2(_mm512_loadu_si512(p), lo, hi); }
inline void load2_first(const uint16_t* p, int n, VF& lo, VF& hi) {
  const __mmask32 m = n >= 32 ? ~__mmask32(0) : n <= 0 ? __mmask32(0) : __mmask32((1u << n) - 1u);
  widen2(_mm512_maskz_loadu_epi16(m, p), lo, hi);
}
// Lane i of the result is the sum of the lanes of a[i]; inlined, as a call
// sends the inputs through memory.
[[gnu::always_inline]] inline VF hsum(const VF (&a)[kLanes]) {
  VF t[8], u[4];
  for (int i = 0; i < 8; ++i)  // per 128-bit lane: [a0 b0 a1 b1] + [a2 b2 a3 b3]
    t[i] = _mm512_add_ps(_mm512_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm512_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 4; ++i) {  // per 128-bit lane: one partial sum of each of 4 inputs
    const __m512d x = _mm512_castps_pd(t[2 * i]), y = _mm512_castps_pd(t[2 * i + 1]);
    u[i] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
  }
  const VF w01 = _mm512_add_ps(_mm512_shuffle_f32x4(u[0], u[1], 0x88), _mm512_shuffle_f32x4(u[0], u[1], 0xdd));
  const VF w23 = _mm512_add_ps(_mm512_shuffle_f32x4(u[2], u[3], 0x88), _mm512_shuffle_f32x4(u[2], u[3], 0xdd));
  return _mm512_add_ps(_mm512_shuffle_f32x4(w01, w23, 0x88), _mm512_shuffle_f32x4(w01, w23, 0xdd));
}
#else
inline VI loadi(const int32_t* p) { return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)); }
inline VI loadi_first(const int32_t* p, int n) { return _mm256_maskload_epi32(p, first_mask_i(n)); }
inline void storei(int32_t* p, VI v) { _mm256_storeu_si256(reinterpret_cast<__m256i*>(p), v); }
inline VI xor_i(VI a, VI b) { return _mm256_xor_si256(a, b); }
inline VI mullo_i(VI a, VI b) { return _mm256_mullo_epi32(a, b); }
inline unsigned gt_bits(VI a, VI b) { return mask_bits(gt_i(a, b)); }
inline unsigned eq_bits(VI a, VI b) { return mask_bits(as_float(_mm256_cmpeq_epi32(a, b))); }
inline VI iota_i() { return _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7); }
// AVX2 has no compress: a table of the lane indices each 8-bit mask keeps,
// one byte each, for vpermd.
struct CompressTable {
  uint64_t idx[256];
};
constexpr CompressTable make_compress_table() {
  CompressTable t{};
  for (unsigned m = 0; m < 256; ++m) {
    int k = 0;
    for (unsigned i = 0; i < 8; ++i)
      if (m >> i & 1u) t.idx[m] |= uint64_t(i) << (8 * k++);
  }
  return t;
}
alignas(64) constexpr CompressTable kCompress = make_compress_table();
inline int compress_store(int32_t* dst, VI v, unsigned bits) {
  const __m256i perm = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(&kCompress.idx[bits])));
  storei(dst, _mm256_permutevar8x32_epi32(v, perm));
  return __builtin_popcount(bits);
}
inline VF gather(const float* base, VI off, int n) {
  return _mm256_mask_i32gather_ps(zero(), base, off, first_mask(n), 4);
}
// As the avx512 build's: lo holds positions {0-3, 8-11}, hi {4-7, 12-15}.
inline void widen2(__m256i x, VF& lo, VF& hi) {
  lo = _mm256_castsi256_ps(_mm256_unpacklo_epi16(_mm256_setzero_si256(), x));
  hi = _mm256_castsi256_ps(_mm256_unpackhi_epi16(_mm256_setzero_si256(), x));
}
inline void load2(const uint16_t* p, VF& lo, VF& hi) {
  widen2(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)), lo, hi);
}
inline void load2_first(const uint16_t* p, int n, VF& lo, VF& hi) {  // no 16-bit masked loads: tails only
  uint16_t buf[16] = {};
  std::memcpy(buf, p, sizeof(uint16_t) * size_t(std::clamp(n, 0, 16)));
  load2(buf, lo, hi);
}
[[gnu::always_inline]] inline VF hsum(const VF (&a)[kLanes]) {
  VF t[4], u[2];
  for (int i = 0; i < 4; ++i)  // per 128-bit lane: [a0 b0 a1 b1] + [a2 b2 a3 b3]
    t[i] = _mm256_add_ps(_mm256_unpacklo_ps(a[2 * i], a[2 * i + 1]), _mm256_unpackhi_ps(a[2 * i], a[2 * i + 1]));
  for (int i = 0; i < 2; ++i) {  // per 128-bit lane: one partial sum of each of 4 inputs
    const __m256d x = _mm256_castps_pd(t[2 * i]), y = _mm256_castps_pd(t[2 * i + 1]);
    u[i] = _mm256_add_ps(_mm256_castpd_ps(_mm256_unpacklo_pd(x, y)), _mm256_castpd_ps(_mm256_unpackhi_pd(x, y)));
  }
  return _mm256_add_ps(_mm256_permute2f128_ps(u[0], u[1], 0x20), _mm256_permute2f128_ps(u[0], u[1], 0x31));
}
#endif

// 2 kLanes int8 as f32, in order.
inline void load2(const int8_t* p, VF& lo, VF& hi) {
  lo = load_i8(p);
  hi = load_i8(p + kLanes);
}
inline void load2_first(const int8_t* p, int n, VF& lo, VF& hi) {
  int8_t buf[2 * kLanes] = {};
  std::memcpy(buf, p, size_t(std::clamp(n, 0, 2 * kLanes)));
  load2(buf, lo, hi);
}
// kLanes f16 scales, or the first n (the others 0).
inline VF load_f16_first(const uint16_t* p, int n) {
  uint16_t buf[kLanes] = {};
  std::memcpy(buf, p, sizeof(uint16_t) * size_t(std::clamp(n, 0, kLanes)));
  return load_f16(buf);
}

// 2 kLanes f32 in order.
inline void load2(const float* p, VF& lo, VF& hi) {
  lo = load(p);
  hi = load(p + kLanes);
}
inline void load2_first(const float* p, int n, VF& lo, VF& hi) {
  lo = load_first(p, n);
  hi = load_first(p + kLanes, n - kLanes);
}
// load2's (lo, hi) back in element order.
template <class T>
inline void in_order(VF& lo, VF& hi) {
  if constexpr (sizeof(T) == 2) unpacked_in_order(lo, hi);
}

// Elements of T from one K or V row to the next (int8: a q8_0 row's bytes).
template <class T>
size_t row_stride(int d) {
  return std::is_same_v<T, int8_t> ? kv_row_bytes(KVType::Q8_0, d) : size_t(d);
}

// kLanes elements c0.. of a row of d as f32, in order (bf16 widened, q8_0
// scaled); or the first n, the others 0 (q8_0 rows have whole vectors only).
inline VF load_row(const float* row, int c0, int) { return load(row + c0); }
inline VF load_row(const uint16_t* row, int c0, int) { return load_bf16(row + c0); }
inline VF load_row(const int8_t* row, int c0, int d) { return load_q8_row(row, c0, d); }
inline VF load_row_first(const float* row, int c0, int, int n) { return load_first(row + c0, n); }
inline VF load_row_first(const uint16_t* row, int c0, int, int n) { return load_bf16_first(row + c0, n); }
inline VF load_row_first(const int8_t* row, int c0, int d, int) { return load_q8_row(row, c0, d); }

// Block b of the transposed keys.
template <class T>
const T* kt_block(const SparqStep1Args& a, int b) {
  return reinterpret_cast<const T*>(static_cast<const char*>(a.k_t) + size_t(b) * kv_t_block_bytes(a.type, a.d));
}

// ---- step 1 ----

// Heads one pass over a block scores at most (more take further passes,
// which find the block in cache).
constexpr int kMaxStep1Heads = SPARQ_SIMD_512 ? 8 : 4;

// 2^(x - max) in place over a block's n scores of one head; returns their sum.
template <bool Full>
float block_exp(float* x, int n, VF vm) {
  VF vs = zero();
  for (int i = 0; i < B; i += kLanes) {
    VF y = zero();
    if (Full || i < n) y = exp2(sub(load(x + i), vm));
    if (!Full) y = select(first_mask(n - i), y, zero());
    store(x + i, y);
    vs = add(vs, y);
  }
  return reduce_add(vs);
}

// One block for NH heads from h0, U loads of 2 kLanes positions at a time, so
// each loaded key vector feeds NH x 2 accumulators (AVX2's 16 registers hold
// 2 NH U <= 8 of them, AVX-512's 32 up to 16). pf: the block whose runs to
// prefetch, a share per group (null: none).
template <class T, int NH, int U>
void step1_block(const SparqStep1Args& a, int nb, int h0, int b, const T* pf, float* e, float* mx, float* sum) {
  constexpr int W = 2 * kLanes, kGroup = W * U;
  static_assert(B % kGroup == 0);
  constexpr int kGroupBytes = kGroup * int(sizeof(T));
  constexpr bool kQ8 = std::is_same_v<T, int8_t>;
  const T* blk = kt_block<T>(a, b);
  const uint16_t* scales = reinterpret_cast<const uint16_t*>(blk + size_t(a.d) * B);  // q8_0: one per position
  const int valid = std::min(B, a.S - b * B);
  const int r = a.r;
  const float* qs = a.qs + size_t(h0) * r;
  float* eb = e + (size_t(b) * a.n_h + h0) * B;
  VF vmax[NH];
  for (VF& v : vmax) v = set1(-kInf);
  // One group of kGroup positions from p0; Full: all valid, unmasked loads.
  // Templated whole, so the accumulators stay in registers to the stores.
  const auto group = [&](auto full, int g) {
    constexpr bool Full = decltype(full)::value;
    const int p0 = g * kGroup;
    if (pf) {  // the lines of the prefetched block's runs (and scales) that start in this group's bytes
      for (int o = (g * kGroupBytes + 63) & ~63; o < (g + 1) * kGroupBytes; o += 64)
        for (int j = 0; j < r; ++j) prefetch(reinterpret_cast<const char*>(pf + size_t(a.i1[j]) * B) + o);
      if constexpr (kQ8)
        for (int o = (2 * g * kGroup + 63) & ~63; o < 2 * (g + 1) * kGroup; o += 64)
          prefetch(reinterpret_cast<const char*>(pf + size_t(a.d) * B) + o);
    }
    VF lo[NH][U], hi[NH][U];
    for (int h = 0; h < NH; ++h)
      for (int u = 0; u < U; ++u) lo[h][u] = hi[h][u] = zero();
    for (int j = 0; j < r; ++j) {
      const T* run = blk + size_t(a.i1[j]) * B + p0;
      for (int u = 0; u < U; ++u) {
        VF x0, x1;
        if constexpr (Full)
          load2(run + W * u, x0, x1);
        else
          load2_first(run + W * u, valid - p0 - W * u, x0, x1);
        for (int h = 0; h < NH; ++h) {
          const VF q = set1(qs[h * r + j]);
          lo[h][u] = fmadd(x0, q, lo[h][u]);
          hi[h][u] = fmadd(x1, q, hi[h][u]);
        }
      }
    }
    if constexpr (kQ8)  // x_h(p) = s_p (qs_h . quants)
      for (int u = 0; u < U; ++u) {
        const int p = p0 + W * u;
        const VF s0 = Full ? load_f16(scales + p) : load_f16_first(scales + p, valid - p);
        const VF s1 = Full ? load_f16(scales + p + kLanes) : load_f16_first(scales + p + kLanes, valid - p - kLanes);
        for (int h = 0; h < NH; ++h) {
          lo[h][u] = mul(lo[h][u], s0);
          hi[h][u] = mul(hi[h][u], s1);
        }
      }
    for (int h = 0; h < NH; ++h)
      for (int u = 0; u < U; ++u) {
        in_order<T>(lo[h][u], hi[h][u]);
        const int p = p0 + W * u;
        store(eb + h * B + p, lo[h][u]);
        store(eb + h * B + p + kLanes, hi[h][u]);
        if constexpr (Full) {
          vmax[h] = max(lo[h][u], max(hi[h][u], vmax[h]));
        } else {
          vmax[h] = max(select(first_mask(valid - p), lo[h][u], set1(-kInf)), vmax[h]);
          vmax[h] = max(select(first_mask(valid - p - kLanes), hi[h][u], set1(-kInf)), vmax[h]);
        }
      }
  };
  const int full_groups = valid / kGroup;
  for (int g = 0; g < full_groups; ++g) group(std::true_type{}, g);
  if (full_groups * kGroup < valid) group(std::false_type{}, full_groups);
  for (int h = 0; h < NH; ++h) {
    const float m = reduce_max(vmax[h]);
    float* eh = eb + h * B;
    mx[(h0 + h) * nb + b] = m;
    sum[(h0 + h) * nb + b] = valid == B ? block_exp<true>(eh, valid, set1(m)) : block_exp<false>(eh, valid, set1(m));
  }
}

template <class T>
void step1(const SparqStep1Args& a, int b0, int b1, float* e, float* mx, float* sum) {
  const int nb = (a.S + B - 1) / B;
  // Prefetch about 8 KiB ahead: enough in flight to cover DRAM latency.
  const int run_bytes = B * int(sizeof(T));
  const int dist = std::clamp(8192 / std::max(1, a.r * run_bytes) + 1, 1, 8);
  for (int b = b0; b < b1; ++b) {
    const T* pf = b + dist < nb ? kt_block<T>(a, b + dist) : nullptr;
    for (int h0 = 0; h0 < a.n_h; h0 += kMaxStep1Heads) {
      const T* p = h0 == 0 ? pf : nullptr;  // later head passes find the block in cache
      switch (std::min(kMaxStep1Heads, a.n_h - h0)) {
        case 1: step1_block<T, 1, 4>(a, nb, h0, b, p, e, mx, sum); break;
        case 2: step1_block<T, 2, SPARQ_SIMD_512 ? 4 : 2>(a, nb, h0, b, p, e, mx, sum); break;
        case 3: step1_block<T, 3, SPARQ_SIMD_512 ? 2 : 1>(a, nb, h0, b, p, e, mx, sum); break;
#if SPARQ_SIMD_512
        case 4: step1_block<T, 4, 2>(a, nb, h0, b, p, e, mx, sum); break;
        case 5: step1_block<T, 5, 1>(a, nb, h0, b, p, e, mx, sum); break;
        case 6: step1_block<T, 6, 1>(a, nb, h0, b, p, e, mx, sum); break;
        case 7: step1_block<T, 7, 1>(a, nb, h0, b, p, e, mx, sum); break;
        default: step1_block<T, 8, 1>(a, nb, h0, b, p, e, mx, sum); break;
#else
        default: step1_block<T, 4, 1>(a, nb, h0, b, p, e, mx, sum); break;
#endif
      }
    }
  }
}

void step1_kernel(const SparqStep1Args& a, int b0, int b1, float* e, float* mx, float* sum) {
  switch (a.type) {
    case KVType::F32: return step1<float>(a, b0, b1, e, mx, sum);
    case KVType::BF16: return step1<uint16_t>(a, b0, b1, e, mx, sum);
    case KVType::Q8_0: return step1<int8_t>(a, b0, b1, e, mx, sum);
  }
}

void weights_kernel(const float* mx, const float* sum, int n_h, int nb, float* w) {
  for (int h = 0; h < n_h; ++h) {
    const float* m = mx + size_t(h) * nb;
    const float* sh = sum + size_t(h) * nb;
    float* wh = w + size_t(h) * nb;
    VF vmax = set1(-kInf);
    for (int b = 0; b < nb; b += kLanes)
      vmax = max(select(first_mask(nb - b), load_first(m + b, nb - b), set1(-kInf)), vmax);
    const VF top = set1(reduce_max(vmax));
    VF vz = zero();
    for (int b = 0; b < nb; b += kLanes) {
      const VF x = select(first_mask(nb - b), exp2(sub(load_first(m + b, nb - b), top)), zero());
      store_first(wh + b, x, nb - b);
      vz = fmadd(x, load_first(sh + b, nb - b), vz);
    }
    const VF inv = set1(1.0f / reduce_add(vz));
    for (int b = 0; b < nb; b += kLanes) store_first(wh + b, mul(load_first(wh + b, nb - b), inv), nb - b);
  }
}

// ---- step 2 ----

// Keys are the scores' bits with the sign bit flipped, as int32: their signed
// order is the bits' unsigned order, which AVX2 can compare.
//
// Buffers of keys are read in whole vectors, so each holds kLanes words past
// its n; the lanes past n are masked out of every count and choice.

// The rank-th largest (1-based, 1 <= rank <= n) of a[0, n), and in *greater
// how many of them are strictly larger. Quickselect with three-way
// partitions made by compress: branch-free, where std::nth_element's
// compares mispredict about half the time (3-4x slower in avx512bf16).
// Reorders a; a and tmp: n + kLanes words each.
int32_t kth_largest(int32_t* a, int n, int rank, int32_t* tmp, int* greater) {
  int above = 0;
  while (n > 4 * kLanes) {
    const int32_t x = a[0], y = a[n / 2], z = a[n - 1];  // median of three
    const int32_t pivot = std::max(std::min(x, y), std::min(std::max(x, y), z));
    const VI vp = set1_i(pivot);
    int gt = 0, eq = 0;
    for (int i = 0; i < n; i += kLanes) {
      const VI v = loadi(a + i);
      const unsigned k = first_bits(n - i);
      gt += __builtin_popcount(gt_bits(v, vp) & k);
      eq += __builtin_popcount(eq_bits(v, vp) & k);
    }
    if (rank > gt && rank <= gt + eq) {
      *greater = above + gt;
      return pivot;
    }
    const bool high = rank <= gt;  // the wanted key is above the pivot
    int kept = 0;
    if (high) {
      for (int i = 0; i < n; i += kLanes) {
        const VI v = loadi(a + i);
        kept += compress_store(tmp + kept, v, gt_bits(v, vp) & first_bits(n - i));
      }
    } else {
      rank -= gt + eq;
      above += gt + eq;
      for (int i = 0; i < n; i += kLanes) {
        const VI v = loadi(a + i);
        kept += compress_store(tmp + kept, v, gt_bits(vp, v) & first_bits(n - i));
      }
    }
    std::swap(a, tmp);
    n = kept;
  }
  std::sort(a, a + n, std::greater<int32_t>());
  const int32_t t = a[rank - 1];
  *greater = above + int(std::count_if(a, a + n, [t](int32_t v) { return v > t; }));
  return t;
}

// The m-th largest key (1 <= m <= n) and how many keys equal to it the
// selection takes. Estimates a band around it from a strided sample, gathers
// the keys inside the band in one vector pass and finds the exact threshold
// among those; falls back to all keys when the band misses it.
// band and tmp: n + kLanes words each (up to 16 more: see select_kernel).
void find_threshold(const int32_t* keys, int n, int m, int32_t* band, int32_t* tmp, int32_t* thr, int* take_eq) {
  int above = 0;  // keys known to be above the band
  int nband = 0;  // keys in the band, copied to band
  bool banded = false;
  const int ns = std::min(1024, n / 4);
  if (ns >= 256) {
    const int stride = n / ns;
    // Rank of the threshold in the sample, and a margin of ~4 sigma on each side.
    const double f = double(m) / n;
    const int j = int(f * ns);
    const int delta = int(4.0 * std::sqrt(ns * f * (1.0 - f))) + 4;
    const int jh = j - delta, jl = j + delta;
    int32_t hi = std::numeric_limits<int32_t>::max(), lo = std::numeric_limits<int32_t>::min();
    // The sample, and a copy for the second search (kth_largest reorders its
    // input); each with 16 words of room behind, and both before n / 2 + 32.
    int32_t* copy = band + ns + 16;
    for (int i = 0; i < ns; ++i) copy[i] = band[i] = keys[size_t(i) * stride];
    int unused;
    if (jh >= 0) hi = kth_largest(band, ns, jh + 1, tmp, &unused);
    if (jl < ns) lo = kth_largest(copy, ns, jl + 1, tmp, &unused);
    const VI vhi = set1_i(hi), vlo = set1_i(lo);
    for (int i = 0; i < n; i += kLanes) {
      const VI x = loadi(keys + i);
      const unsigned k = first_bits(n - i), over = gt_bits(x, vhi);
      above += __builtin_popcount(over & k);
      nband += compress_store(band + nband, x, ~(over | gt_bits(vlo, x)) & k);
    }
    banded = above < m && m <= above + nband;
  }
  if (!banded) {
    above = 0;
    nband = n;
    std::copy_n(keys, n, band);
  }
  int greater;
  *thr = kth_largest(band, nband, m - above, tmp, &greater);
  *take_eq = m - above - greater;
}

// Writes to out (m entries), in index order, the positions whose key is above
// t and the first take_eq equal to it.
void emit(const int32_t* keys, int n, int32_t t, int take_eq, int m, int* out) {
  const VI vt = set1_i(t);
  int pos = 0;
  for (int i = 0; i < n; i += kLanes) {
    const VI x = loadi(keys + i);
    const unsigned k = first_bits(n - i);
    unsigned sel = gt_bits(x, vt) & k, eq = eq_bits(x, vt) & k;
    for (; eq && take_eq > 0; --take_eq) {  // ties at the threshold: lowest indices first
      sel |= eq & -eq;
      eq &= eq - 1;
    }
    const VI p = add_i(iota_i(), set1_i(i));
    if (pos + kLanes <= m) {  // all lanes stored: room for them
      pos += compress_store(out + pos, p, sel);
    } else {
      int32_t buf[kLanes];
      const int c = compress_store(buf, p, sel);
      std::copy_n(buf, c, out + pos);
      pos += c;
    }
  }
}

void mass_kernel(const float* e, const float* w, int n_h, int nb, const int* idx, int n, float* mass) {
  static_assert((B & (B - 1)) == 0, "the shift and mask below assume a power-of-two block");
  constexpr int kShift = __builtin_ctz(B);
  const VI stride = set1_i(n_h * B);
  for (int h = 0; h < n_h; ++h) {
    VF acc = zero();
    for (int i = 0; i < n; i += kLanes) {
      const VI p = loadi_first(idx + i, n - i);
      const VI b = srl_i(p, kShift);
      const VI off = add_i(mullo_i(b, stride), add_i(set1_i(h * B), and_i(p, set1_i(B - 1))));
      acc = fmadd(gather(e, off, n - i), gather(w, add_i(b, set1_i(h * nb)), n - i), acc);
    }
    mass[h] += reduce_add(acc);
  }
}

void select_kernel(const float* e, const float* w, int n_h, int nb, int n, int m, int* out, float* mass,
                   uint32_t* scratch) {
  m = std::clamp(m, 0, n);
  if (m == 0) return;
  // scratch (3 n + 48 words): the band and kth_largest's buffers, n + 16
  // words each, then the keys (n rounded up to kLanes).
  int32_t* band = reinterpret_cast<int32_t*>(scratch);
  int32_t* tmp = band + n + 16;
  int32_t* keys = tmp + n + 16;
  // The scores once, in the reference's order (fused, head by head from +0),
  // for the three passes below. Whole vectors: a block's row has B entries,
  // so the lanes past n are inside e (their keys are masked out).
  for (int p = 0; p < n; p += kLanes) {
    const int b = p / B;
    const float* eb = e + size_t(b) * n_h * B + p % B;
    VF s = zero();
    for (int h = 0; h < n_h; ++h) s = fmadd(load(eb + size_t(h) * B), set1(w[size_t(h) * nb + b]), s);
    storei(keys + p, xor_i(as_int(s), set1_i(kSignBit)));
  }
  int32_t t;
  int take_eq;
  find_threshold(keys, n, m, band, tmp, &t, &take_eq);
  emit(keys, n, t, take_eq, m, out);
  if (mass) mass_kernel(e, w, n_h, nb, out, m, mass);
}

// ---- step 3 ----

// q8_0 keys meet the query quantized per 32 values (quantize_kv_query): one
// integer dot product per chunk of kChunk key bytes, its int32 lanes (4
// products each, exact) scaled by the blocks' scales and summed.
constexpr int kChunk = SPARQ_SIMD_512 ? 64 : 32;

#if defined(__AVX512VNNI__)
// A chunk of a key row: its quants + 128 (vpdpbusd wants one unsigned
// operand; the extra 128 q is taken off by the sum's starting value) and the
// lanes' block scales (lanes 0-7: the first block, 8-15: the second; a half
// chunk, one block: bytes 32-63 are 0 and so is the query there).
struct KeyChunk {
  __m512i u;
  VF scale;
};
#elif SPARQ_SIMD_512
// As above without VNNI: |quants| for vpmaddubsw's unsigned operand, and the
// negative ones, whose query bytes change sign.
struct KeyChunk {
  __m512i a;
  __mmask64 neg;
  VF scale;
};
#endif
#if SPARQ_SIMD_512
inline KeyChunk key_chunk(const int8_t* row, int j, int d) {
  const bool half = d - kChunk * j < kChunk;
  const __m512i k = half ? _mm512_maskz_loadu_epi8(0xffffffffull, row + kChunk * j)
                         : _mm512_loadu_si512(row + kChunk * j);
  uint32_t h = 0;
  std::memcpy(&h, row + d + 4 * j, half ? 2 : 4);
  const __m128 s = _mm_cvtph_ps(_mm_cvtsi32_si128(int(h)));
  const __m512i spread = _mm512_setr_epi32(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1);
  const VF scale = _mm512_permutexvar_ps(spread, _mm512_castps128_ps512(s));
#if defined(__AVX512VNNI__)
  return {_mm512_xor_si512(k, _mm512_set1_epi8(char(0x80))), scale};
#else
  return {_mm512_abs_epi8(k), _mm512_movepi8_mask(k), scale};
#endif
}
// Lane i: the sum of the products of bytes 4i..4i+3 of the chunk and of q;
// corr: -128 times the sum of those bytes of q (used with VNNI only).
inline VI dot_chunk(const KeyChunk& k, const int8_t* q, const int32_t* corr) {
  const __m512i qv = _mm512_loadu_si512(q);
#if defined(__AVX512VNNI__)
  return _mm512_dpbusd_epi32(loadi(corr), k.u, qv);
#else
  (void)corr;
  const __m512i s = _mm512_mask_sub_epi8(qv, k.neg, _mm512_setzero_si512(), qv);  // q's sign flipped where k < 0
  return _mm512_madd_epi16(_mm512_maddubs_epi16(k.a, s), _mm512_set1_epi16(1));
#endif
}
#else
struct KeyChunk {
  __m256i a, k;
  VF scale;
};
inline KeyChunk key_chunk(const int8_t* row, int j, int d) {
  const __m256i k = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(row + kChunk * j));
  return {_mm256_abs_epi8(k), k, set1_f16(row + d + 2 * j)};
}
inline VI dot_chunk(const KeyChunk& k, const int8_t* q, const int32_t*) {
  const __m256i s = _mm256_sign_epi8(_mm256_loadu_si256(reinterpret_cast<const __m256i*>(q)), k.k);
  return _mm256_madd_epi16(_mm256_maddubs_epi16(k.a, s), _mm256_set1_epi16(1));
}
#endif

// The query of G heads as q8_0 keys meet it: quants qq [G][nch kChunk] (0
// past d); per head and chunk its blocks' scales in key_chunk's lanes, qsv
// [G][nch][kLanes], and dot_chunk's corr [G][nch][kLanes].
void quantize_query(const float* q, int G, int d, int nch, int8_t* qq, float* qsv, int32_t* corr) {
  float qs[64];
  for (int h = 0; h < G; ++h) {
    int8_t* qh = qq + size_t(h) * nch * kChunk;
    std::fill(qh, qh + size_t(nch) * kChunk, int8_t(0));
    for (int b0 = 0; b0 < d; b0 += 32 * 64) {  // 64 blocks at a time
      const int nb = std::min(64, (d - b0) / 32);
      quantize_kv_query(q + size_t(h) * d + b0, nb * 32, qh + b0, qs);
      for (int b = 0; b < nb; ++b) {
        const int blk = b0 / 32 + b, j = blk / (kChunk / 32), half = blk % (kChunk / 32);
        float* v = qsv + (size_t(h) * nch + j) * kLanes;
        if (half == 0) std::fill(v, v + kLanes, 0.0f);
        std::fill(v + half * 8, v + (kChunk == 32 ? kLanes : half * 8 + 8), qs[b]);
      }
    }
    for (int i = 0; i < nch * kLanes; ++i)
      corr[size_t(h) * nch * kLanes + i] = -128 * (qh[4 * i] + qh[4 * i + 1] + qh[4 * i + 2] + qh[4 * i + 3]);
  }
}

// Lanes idx (< 2 kLanes) of the pair (lo, hi).
inline VF pick(VF lo, VF hi, VI idx) {
#if SPARQ_SIMD_512
  return _mm512_permutex2var_ps(lo, idx, hi);
#else
  const VI i = _mm256_and_si256(idx, _mm256_set1_epi32(7));
  return select(gt_i(idx, set1_i(7)), _mm256_permutevar8x32_ps(hi, i), _mm256_permutevar8x32_ps(lo, i));
#endif
}

// q8_0 values: each row's NB block scales folded into a chunk's weights, so
// the value loop only widens the quants. ws [NB][NG][kLanes], lane r G + h
// of group g: w's lane times the scale of block b of row g R + r.
template <int G, int R, int NG, int NB>
void fold_value_scales(const int8_t* const* rows, int d, const float* w, float* ws) {
  static_assert(R * NB <= 2 * kLanes && R * G <= kLanes);
  alignas(64) uint16_t sc[NG][2 * kLanes] = {};  // per group: its rows' scales [r][b]
  for (int i = 0; i < NG * R; ++i) std::memcpy(&sc[i / R][(i % R) * NB], rows[i] + d, 2 * NB);
  VI ix[NB];
  for (int b = 0; b < NB; ++b) {
    alignas(64) int32_t v[kLanes];
    for (int l = 0; l < kLanes; ++l) v[l] = std::min(l / G, R - 1) * NB + b;  // lanes from R G on: weight 0
    ix[b] = loadi(v);
  }
  for (int g = 0; g < NG; ++g) {
    const VF lo = load_f16(sc[g]), hi = R * NB > kLanes ? load_f16(sc[g] + kLanes) : lo, wg = load(w + kLanes * g);
    for (int b = 0; b < NB; ++b) store(ws + (b * NG + g) * kLanes, mul(wg, pick(lo, hi, ix[b])));
  }
}

// Rows this many ahead of the ones being read are prefetched into L2 (the
// caller also fetches each 128-row slice in one burst first).
constexpr int kRowsAhead = 32;
// The largest group one pass takes; larger ones run in slices.
constexpr int kMaxStep3Group = 8;

template <class T>
void prefetch_row(const T* row, size_t n) {  // n elements
  const uintptr_t end = reinterpret_cast<uintptr_t>(row + n);
  for (uintptr_t l = reinterpret_cast<uintptr_t>(row) & ~uintptr_t(63); l < end; l += 64)
    prefetch(reinterpret_cast<const void*>(l));
}

// x laid out [row][head] (lane i: head i % G, lanes from R G on unused):
// lane i of the result is the max (Max) or sum over head i % G's lanes.
template <int G, int R, bool Max>
VF per_head(VF x) {
  alignas(64) float v[kLanes], out[kLanes];
  store(v, x);
  for (int h = 0; h < G; ++h) {
    float t = v[h];
    for (int r = 1; r < R; ++r) t = Max ? std::max(t, v[r * G + h]) : t + v[r * G + h];
    for (int i = h; i < kLanes; i += G) out[i] = t;
  }
  return load(out);
}

// One pass over the selected rows for G <= 8 heads; NV > 0: d = NV kLanes.
// Scores: R = kLanes / G rows times G heads make the dot products one hsum
// finishes, so each key row is loaded once for all heads; they come out
// [row][head]. A chunk is NG such groups, about 16 rows.
// Softmax: weights are 2^(x - m) for a reference m that only moves when a
// score passes it, so no row waits on a horizontal max. m sits kHeadroom
// above the max seen, which keeps moves rare while the largest weight stays
// at least 2^-16, far from underflow.
// Values: C column vectors of U rows at a time, so C U G >= 8 FMA chains hide
// the FMA latency within AVX2's 16 registers.
template <class T, int NV, int G>
void step3(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc, float* scratch) {
  static_assert(G >= 1 && G <= kLanes);
  constexpr int R = kLanes / G, NG = std::max(1, 16 / R), CR = R * NG;
  constexpr int C = SPARQ_SIMD_512 || G <= 4 ? 2 : 1, U = std::max(1, 8 / (C * G)), CW = C * kLanes;
  static_assert(CR % U == 0 && NG * kLanes <= 256);
  constexpr float kHeadroom = 16.0f;
  const int d = NV > 0 ? NV * kLanes : a.d, dp = sparq_dpad(d), nc = (d + CW - 1) / CW, wd = nc * CW;
  const size_t rs = row_stride<T>(d);
  const T* K = static_cast<const T*>(a.k_rows);
  const T* V = static_cast<const T*>(a.v_rows);
  const float* q = a.q;
  float* w = scratch;   // [NG][kLanes]: a chunk's weights, [row][head] per group
  float* ac = w + 256;  // [G][wd]
  std::fill(ac, ac + size_t(G) * wd, 0.0f);
  constexpr bool kQ8 = std::is_same_v<T, int8_t>;
  const int nch = kQ8 ? (d + kChunk - 1) / kChunk : 0;
  // q8_0: the quantized query (quantize_query) and the folded weights (fold_value_scales).
  constexpr int NB = NV * kLanes / 32;
  constexpr bool kFold = kQ8 && NV > 0 && R * NB <= 2 * kLanes;
  float* qsv = ac + size_t(G) * wd;                                          // [G][nch][kLanes]
  int32_t* corr = reinterpret_cast<int32_t*>(qsv + size_t(G) * nch * kLanes);  // [G][nch][kLanes]
  int8_t* qq = reinterpret_cast<int8_t*>(corr + size_t(G) * nch * kLanes);     // [G][nch kChunk]
  float* ws = qsv + size_t(G) * nch * (2 * kLanes + kChunk / 4);             // [NB][NG][kLanes]
  if constexpr (kQ8) quantize_query(q, G, d, nch, qq, qsv, corr);
  for (int i = 0; i < std::min(n, kRowsAhead); ++i)
    prefetch_row(K + size_t(idx[i]) * rs, rs), prefetch_row(V + size_t(idx[i]) * rs, rs);
#if defined(__AVX512BF16__)
  // bf16 keys at the avx512bf16 tier: vdpbf16ps multiplies 32 of them at a
  // time by the query's bf16 pairs (q comes bf16-rounded: exact, as are the
  // products), half the instructions of widening them for FMAs.
  constexpr int kPairs = std::is_same_v<T, uint16_t> && NV % 2 == 0 ? NV / 2 : 0;
  __m512bh qb[G * std::max(kPairs, 1)];
  for (int h = 0; h < G; ++h)
    for (int j = 0; j < kPairs; ++j)
      qb[h * kPairs + j] = _mm512_cvtne2ps_pbh(load(q + size_t(h) * d + 32 * j + 16), load(q + size_t(h) * d + 32 * j));
#endif
  const VF vscale = set1(a.scale);
  VF m = zero(), l = zero();  // lane i: head i % G
  const T* rows[CR];
  for (int c = 0; c < n; c += CR) {
    for (int i = 0; i < CR; ++i) rows[i] = K + size_t(idx[std::min(c + i, n - 1)]) * rs;
    for (int g = 0; g < NG; ++g) {
      const int nrows = std::min(R, n - c - g * R);
      if (nrows <= 0) {  // past the end: weight 0
        store(w + kLanes * g, zero());
        continue;
      }
      for (int i = c + kRowsAhead + g * R; i < std::min(n, c + kRowsAhead + (g + 1) * R); ++i)
        prefetch_row(K + size_t(idx[i]) * rs, rs), prefetch_row(V + size_t(idx[i]) * rs, rs);
      VF dot[kLanes];
      for (VF& x : dot) x = zero();
      if constexpr (kQ8) {
        for (int j = 0; j < nch; ++j)
          for (int r = 0; r < R; ++r) {
            const KeyChunk kc = key_chunk(rows[g * R + r], j, d);
            for (int h = 0; h < G; ++h) {
              const size_t hj = size_t(h) * nch + j;
              const VF sc = mul(kc.scale, load(qsv + hj * kLanes));
              dot[r * G + h] = fmadd(to_float(dot_chunk(kc, qq + hj * kChunk, corr + hj * kLanes)), sc, dot[r * G + h]);
            }
          }
      } else {
#if defined(__AVX512BF16__)
      if constexpr (kPairs > 0) {
        for (int j = 0; j < kPairs; ++j)
          for (int r = 0; r < R; ++r) {
            const __m512bh k = __m512bh(_mm512_loadu_si512(rows[g * R + r] + 32 * j));
            for (int h = 0; h < G; ++h) dot[r * G + h] = _mm512_dpbf16_ps(dot[r * G + h], k, qb[h * kPairs + j]);
          }
      } else
#endif
      for (int v = 0; v < d; v += kLanes) {
        for (int r = 0; r < R; ++r) {
          const VF k = NV > 0 ? load_row(rows[g * R + r], v, d) : load_row_first(rows[g * R + r], v, d, d - v);
          for (int h = 0; h < G; ++h) {
            const VF qh = NV > 0 ? load(q + size_t(h) * d + v) : load_first(q + size_t(h) * d + v, d - v);
            dot[r * G + h] = fmadd(k, qh, dot[r * G + h]);
          }
        }
      }
      }
      const unsigned valid_bits = first_bits(nrows * G);
      const Mask valid = first_mask(nrows * G);
      const VF s = select(valid, mul(vscale, hsum(dot)), zero());
      const auto top = [&] { return add(per_head<G, R, true>(select(valid, s, set1(-kInf))), set1(kHeadroom)); };
      if (c == 0 && g == 0) m = top();
      if (mask_bits(lt(m, s)) & valid_bits) [[unlikely]] {
        // A score passed the reference: move it up and rescale what was summed.
        const VF m2 = max(m, top()), f = exp2(sub(m, m2));
        alignas(64) float fh[kLanes];
        store(fh, f);
        for (int h = 0; h < G; ++h)
          for (int v = 0; v < wd; v += kLanes) store(ac + h * wd + v, mul(set1(fh[h]), load(ac + h * wd + v)));
        for (int i = 0; i < g; ++i) store(w + kLanes * i, mul(f, load(w + kLanes * i)));
        l = mul(l, f);
        m = m2;
      }
      const VF p = select(valid, exp2(sub(s, m)), zero());
      store(w + kLanes * g, p);
      l = add(l, p);
    }
    for (int i = 0; i < CR; ++i) rows[i] = V + size_t(idx[std::min(c + i, n - 1)]) * rs;
    if constexpr (kFold) fold_value_scales<G, R, NG, NB>(rows, d, w, ws);
    for (int j = 0; j < nc; ++j) {
      const int c0 = j * CW;
      VF av[C][U][G];
      for (int cc = 0; cc < C; ++cc)
        for (int u = 0; u < U; ++u)
          for (int h = 0; h < G; ++h) av[cc][u][h] = zero();
      for (int r = 0; r < CR; r += U)
        for (int u = 0; u < U; ++u) {
          const int i = r + u;
          VF x[C];
          for (int cc = 0; cc < C; ++cc)
            if constexpr (kFold)
              x[cc] = load_i8(rows[i] + c0 + cc * kLanes);
            else
              x[cc] = NV > 0 ? load_row(rows[i], c0 + cc * kLanes, d)
                             : load_row_first(rows[i], c0 + cc * kLanes, d, d - c0 - cc * kLanes);
          const float* wi = kFold ? ws + (c0 / 32 * NG + i / R) * kLanes : w + kLanes * (i / R);
          for (int h = 0; h < G; ++h) {
            const VF p = set1(wi[(i % R) * G + h]);
            for (int cc = 0; cc < C; ++cc) av[cc][u][h] = fmadd(p, x[cc], av[cc][u][h]);
          }
        }
      for (int h = 0; h < G; ++h)
        for (int cc = 0; cc < C; ++cc) {
          float* o = ac + h * wd + c0 + cc * kLanes;
          VF s = load(o);
          for (int u = 0; u < U; ++u) s = add(s, av[cc][u][h]);
          store(o, s);
        }
    }
  }
  alignas(64) float mh[kLanes], zh[kLanes];
  store(mh, m);
  store(zh, per_head<G, R, false>(l));
  for (int h = 0; h < G; ++h) {
    mx[h] = mh[h];
    z[h] = zh[h];
    float* o = acc + size_t(h) * dp;
    const int k = std::min(wd, dp);  // components from d on are 0 in ac
    std::copy_n(ac + h * wd, k, o);
    std::fill(o + k, o + dp, 0.0f);
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

template <class T>
void step3_type(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc, float* scratch) {
  // The common head sizes with their loops unrolled and unmasked.
  if (a.d == 64)
    step3_group<T, 64 / kLanes>(a, idx, n, mx, z, acc, scratch);
  else if (a.d == 128)
    step3_group<T, 128 / kLanes>(a, idx, n, mx, z, acc, scratch);
  else
    step3_group<T, 0>(a, idx, n, mx, z, acc, scratch);
}

void step3_kernel(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc, float* scratch) {
  const int dp = sparq_dpad(a.d);
  for (int h0 = 0; h0 < a.n_h; h0 += kMaxStep3Group) {
    SparqStep3Args s = a;
    s.q = a.q + size_t(h0) * a.d;
    s.n_h = std::min(kMaxStep3Group, a.n_h - h0);
    float *m = mx + h0, *zh = z + h0, *ah = acc + size_t(h0) * dp;
    switch (a.type) {
      case KVType::F32: step3_type<float>(s, idx, n, m, zh, ah, scratch); break;
      case KVType::BF16: step3_type<uint16_t>(s, idx, n, m, zh, ah, scratch); break;
      case KVType::Q8_0: step3_type<int8_t>(s, idx, n, m, zh, ah, scratch); break;
    }
  }
}

}  // namespace

extern const SparqKernels kSparq = {step1_kernel, weights_kernel, select_kernel, mass_kernel, step3_kernel};

}  // namespace sparq::SPARQ_TIER_NS
