// Dense attention kernels (internal to attention.cpp and the tests). Decode:
// one KV head, the query heads of its group, a range of positions; the result
// is a partial softmax state, so ranges split over threads merge exactly.
// Prefill: many query vectors of one KV head, each over a causal prefix.
#pragma once
#include "sparq/kernels/kv_cache.h"
#include "sparq/util/common.h"
#include "sparq/util/cpu.h"

namespace sparq {

struct DenseSpan {
  const void* k;   // K rows of the KV head (KVCache::k_rows layout; the ref kernel and q8_0)
  const void* kt;  // the same keys transposed in blocks, KVCache::k_t layout (SIMD kernels, f32 and bf16)
  const void* v;   // V rows
  KVType type;
  int d;
  int group;       // query heads sharing this KV head
  const float* q;  // [group][d]
  int p0, p1;      // positions [p0, p1), p0 < p1
};

// Per query head h: m[h] = max score, l[h] = sum of exp(score - m[h]) and
// acc[h*d ..] = sum of exp(score - m[h]) * v, scores being q.k / sqrt(d).
struct DensePartial {
  float* m;    // [group]
  float* l;    // [group]
  float* acc;  // [group][d]
};

// n query vectors against one KV head: out[i] = softmax(q[i].k / sqrt(d)) . v
// over positions [0, last[i]], normalised (d floats each).
struct PrefillSpan {
  const void* k;  // K rows of the KV head (KVCache::k_rows layout)
  const void* v;  // V rows
  KVType type;
  int d;
  int n;
  const float* const* q;  // [n] query vectors (q8_0: as its keys meet them, kv_query_as_met)
  const int* last;        // [n] last position each one sees
  float* const* out;      // [n] outputs
};

// Each kernel has a plain scalar reference (namespace ref,
// attention_dense_ref.cpp; q rounded to bf16 for bf16 caches, f32 weights)
// and a version per CPU tier (dense_kernels): avx2 and avx512 written once
// over kernels/simd.h (attention_dense_simd.cpp, attention_prefill_simd.cpp;
// bf16 widened to f32, so they follow ref's numerics up to f32 rounding),
// avx512bf16 hand-written with vdpbf16ps (attention_dense_avx512bf16.cpp,
// attention_prefill_avx512bf16.cpp; its prefill also rounds the weights to
// bf16 for bf16 caches, each within 2^-8).
namespace ref {
void dense_partial(const DenseSpan& s, const DensePartial& out);
void prefill_attention(const PrefillSpan& s);
}  // namespace ref
namespace avx2 {
void dense_partial(const DenseSpan& s, const DensePartial& out);
void prefill_attention(const PrefillSpan& s);
}  // namespace avx2
namespace avx512 {
void dense_partial(const DenseSpan& s, const DensePartial& out);
void prefill_attention(const PrefillSpan& s);
}  // namespace avx512
namespace avx512bf16 {
void dense_partial(const DenseSpan& s, const DensePartial& out);
void prefill_attention(const PrefillSpan& s);
}  // namespace avx512bf16

// The dense_partial kernels above take f32 and bf16 spans (ref: q8_0 too);
// every prefill_attention takes all three types (q8_0 blocks dequantized).
struct DenseKernels {
  void (*dense_partial)(const DenseSpan& s, const DensePartial& out);
  void (*prefill_attention)(const PrefillSpan& s);
};
const DenseKernels& dense_kernels(CpuTier t);

// Tier t's dense decode of a span of any type. q8_0 keys are read from their
// rows, whose 32-value scales the transposed copy lacks: above portable, as
// SparQ's step 3 (sparq_kernels(t)) over every row of the span.
void dense_partial(CpuTier t, const DenseSpan& s, const DensePartial& out);

}  // namespace sparq
