// The kernels of one SparQ decode step for one KV head (sparq_decode.cpp
// strings them together and splits them over threads). Each has a plain scalar
// reference (namespace ref, src/kernels/sparq_ref.cpp) and one source for the
// avx2, avx512 and avx512bf16 tiers (src/kernels/sparq_simd.cpp), with the
// same signature and the same results up to float rounding; sparq_kernels()
// picks the tier's.
//
// Scores are kept in log2 units (log2(e) is folded into the query), so the
// kernels exponentiate with exp2.
#pragma once
#include <cstddef>
#include <cstdint>

#include "sparq/util/common.h"
#include "sparq/util/cpu.h"
#include "sparq/kernels/kv_cache.h"

namespace sparq {

inline constexpr int kSparqBlock = KVCache::kBlock;

// Step 1 of one KV head for its n_h query heads, over the transposed keys.
struct SparqStep1Args {
  const void* k_t = nullptr;  // KVCache::k_t of the KV head
  KVType type = KVType::BF16;
  int d = 0;                  // head size
  int S = 0;                  // positions
  const int* i1 = nullptr;    // r components, ascending
  int r = 0;
  const float* qs = nullptr;  // [n_h][r]: q_h[i1[j]] * log2(e) / tau_h, bf16 values for bf16 keys
  int n_h = 0;
};

// Exact attention of n_h query heads over selected rows of one KV head.
struct SparqStep3Args {
  const void* k_rows = nullptr;  // KVCache::k_rows of the KV head
  const void* v_rows = nullptr;  // KVCache::v_rows
  KVType type = KVType::BF16;
  int d = 0;
  const float* q = nullptr;  // [n_h][d], as the keys meet it (query_for: bf16-rounded for bf16; q8_0 keys quantize it)
  int n_h = 0;
  float scale = 0;  // log2(e) / sqrt(d): the scores are (q_h . K[p]) * scale
};

// Row stride of step 3's partial sums: d rounded up to 16.
inline int sparq_dpad(int d) { return (d + 15) / 16 * 16; }

// Floats of scratch sparq_step3 needs for n rows.
inline size_t sparq_step3_scratch(int n_h, int n, int d) {
  return size_t(n + 15) / 16 * 16 + 256 + size_t(n_h) * (2 * size_t(sparq_dpad(d)) + 32) +
         size_t(n_h) * (size_t(d) + 64) + 8 * size_t(d) + 256;  // q8_0: the quantized query, the folded weights
}

// Words of scratch sparq_select needs for n positions.
inline size_t sparq_select_scratch(int n) { return 3 * size_t(n) + 48; }

// i1: the r components of largest sum over the n_h heads of |q_h| (ties: the
// lower index), ascending; qs [n_h][r] as SparqStep1Args::qs wants it, with
// tau_h = sqrt(d * sum|q_h[i1]| / sum|q_h|) (a head with q_h[i1] = 0 gets 0),
// rounded as keys of the cache's type meet queries (query_for), as the dense
// kernel and step 3 round q: bf16 keys then multiply in pairs.
// Shared by both paths: it is O(n_h d) next to the O(S r n_h) steps.
void sparq_select_components(const float* q, int n_h, int d, int r, KVType type, int* i1, float* qs);

namespace ref {
// Blocks [b0, b1) of kSparqBlock positions, with x_h(p) = qs_h . K[p, i1]
// (q8_0: s_p (qs_h . quants[p, i1]), kv_t_quant and kv_t_scale): for
// block b and head h (nb = the blocks of S), mx[h nb + b] = the max of x_h over
// the block's positions < S, e[(b n_h + h) kSparqBlock + p % kSparqBlock] =
// 2^(x_h(p) - mx) (0 for p >= S) and sum[h nb + b] = the sum of those.
void sparq_step1(const SparqStep1Args& a, int b0, int b1, float* e, float* mx, float* sum);
// The softmax weight of each block: w[h nb + b] = 2^(mx - M_h) / Z_h with M_h
// the max over blocks and Z_h = sum_b sum[h nb + b] 2^(mx[h nb + b] - M_h).
void sparq_weights(const float* mx, const float* sum, int n_h, int nb, float* w);
// Step 2: with s(p) = sum_h e_h(p) w[h nb + b] (e as sparq_step1 lays it out,
// b = p / kSparqBlock, summed in head order with fused multiply-adds), writes
// to out, ascending, the m indices in [0, n) of the largest s compared as bit
// patterns read as uint32 (the float order for s >= 0, a total order for
// anything else); among equal ones the lower index wins. When mass is
// non-null, adds to mass[h] the sum over those positions of e_h(p) w[h nb + b].
// scratch: sparq_select_scratch(n) words.
void sparq_select(const float* e, const float* w, int n_h, int nb, int n, int m, int* out, float* mass,
                  uint32_t* scratch);
// Adds to mass[h] the sum over the n positions idx[i] of e_h(p) w[h nb + b].
void sparq_mass(const float* e, const float* w, int n_h, int nb, const int* idx, int n, float* mass);
// Softmax attention over the n >= 1 rows idx[i], as a partial to merge: with
// x_h(p) = (q_h . K[p]) scale, a reference mx[h] >= max_i x_h (the max
// itself in ref; at most 16 above it in the SIMD tiers, which then never waits on a
// horizontal max), z[h] = sum_i 2^(x_h - mx[h]) and
// acc[h sparq_dpad(d) + c] = sum_i 2^(x_h - mx[h]) V[p, c].
// scratch: sparq_step3_scratch(n_h, n, d) floats.
void sparq_step3(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc,
                 float* scratch);
}  // namespace ref

// One tier's five kernels, with the signatures above.
struct SparqKernels {
  decltype(&ref::sparq_step1) step1;
  decltype(&ref::sparq_weights) weights;
  decltype(&ref::sparq_select) select;
  decltype(&ref::sparq_mass) mass;
  decltype(&ref::sparq_step3) step3;
};
// Tier t's kernels (src/kernels/sparq_decode.cpp), and those of the tier that runs now.
const SparqKernels& sparq_kernels(CpuTier t);
inline const SparqKernels& sparq_kernels() { return sparq_kernels(cpu_tier()); }

}  // namespace sparq
