// Dense attention kernels (internal to attention.cpp and the tests). Decode:
// one KV head, the query heads of its group, a range of positions; the result
// is a partial softmax state, so ranges split over threads merge exactly.
// Prefill: many query vectors of one KV head, each over a causal prefix.
#pragma once
#include "sparq/util/common.h"

namespace sparq {

struct DenseSpan {
  const void* k;   // K rows of the KV head: [positions][d], f32 or bf16 (ref kernel)
  const void* kt;  // the same keys transposed in blocks, KVCache::k_t layout (SIMD kernels)
  const void* v;   // V rows: [positions][d]
  DType type;      // F32 or BF16
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
  const void* k;  // K rows of the KV head: [positions][d], f32 or bf16
  const void* v;  // V rows: [positions][d]
  DType type;     // F32 or BF16
  int d;
  int n;
  const float* const* q;  // [n] query vectors
  const int* last;        // [n] last position each one sees
  float* const* out;      // [n] outputs
};

namespace ref {
void dense_partial(const DenseSpan& s, const DensePartial& out);
void prefill_attention(const PrefillSpan& s);
}  // namespace ref
namespace avx2 {  // attention_dense_simd.cpp, attention_prefill_simd.cpp
void dense_partial(const DenseSpan& s, const DensePartial& out);
void prefill_attention(const PrefillSpan& s);
}  // namespace avx2
namespace avx512 {  // the same, built for AVX-512 F/BW/VL/DQ
void dense_partial(const DenseSpan& s, const DensePartial& out);
void prefill_attention(const PrefillSpan& s);
}  // namespace avx512
namespace avx512bf16 {
void dense_partial(const DenseSpan& s, const DensePartial& out);
void prefill_attention(const PrefillSpan& s);
}  // namespace avx512bf16

}  // namespace sparq
