// Portable dense kernels. Decode: scores for the whole range, then the
// max-subtracted weights and the weighted sum of values. q meets bf16 keys
// rounded to bf16, as in the AVX-512 kernels' bf16 dot products. Prefill: the
// decode kernel once per query vector over its prefix.
#include <algorithm>
#include <cmath>
#include <vector>

#include "sparq/kernels/attention_dense.h"

namespace sparq::ref {

void dense_partial(const DenseSpan& s, const DensePartial& out) {
  thread_local std::vector<float> row, score, q;
  const int d = s.d, n = s.p1 - s.p0;
  const float scale = 1.0f / std::sqrt(float(d));
  row.resize(size_t(d));
  score.resize(size_t(n) * s.group);
  q.resize(size_t(s.group) * d);
  for (size_t i = 0; i < q.size(); ++i) q[i] = query_for(s.type, s.q[i]);
  const bool q8 = s.type == KVType::Q8_0;  // scores of integer blocks, as llama.cpp's
  thread_local std::vector<int8_t> qq;
  thread_local std::vector<float> qs;
  qq.resize(q8 ? size_t(s.group) * d : 0);
  qs.resize(q8 ? size_t(s.group) * (d / kKVQuantBlock) : 0);
  for (int h = 0; h < s.group && q8; ++h)
    quantize_kv_query(q.data() + size_t(h) * d, d, &qq[size_t(h) * d], &qs[size_t(h) * (d / kKVQuantBlock)]);
  for (int i = 0; i < n; ++i) {
    if (!q8)
      for (int c = 0; c < d; ++c) row[size_t(c)] = kv_row_elem(s.k, s.type, d, size_t(s.p0 + i), c);
    for (int h = 0; h < s.group; ++h) {
      const float* qh = q.data() + size_t(h) * d;
      float dot = 0;
      if (q8)
        dot = kv_q8_dot(&qq[size_t(h) * d], &qs[size_t(h) * (d / kKVQuantBlock)], s.k, d, size_t(s.p0 + i));
      else
        for (int c = 0; c < d; ++c) dot += qh[c] * row[c];
      score[size_t(h) * n + i] = dot * scale;
    }
  }
  for (int h = 0; h < s.group; ++h) {
    float* sc = &score[size_t(h) * n];
    const float m = *std::max_element(sc, sc + n);
    float l = 0;
    for (int i = 0; i < n; ++i) l += sc[i] = std::exp(sc[i] - m);
    out.m[h] = m;
    out.l[h] = l;
    std::fill(out.acc + size_t(h) * d, out.acc + size_t(h + 1) * d, 0.0f);
  }
  for (int i = 0; i < n; ++i) {
    for (int c = 0; c < d; ++c) row[size_t(c)] = kv_row_elem(s.v, s.type, d, size_t(s.p0 + i), c);
    for (int h = 0; h < s.group; ++h) {
      const float w = score[size_t(h) * n + i];
      float* acc = out.acc + size_t(h) * d;
      for (int c = 0; c < d; ++c) acc[c] += w * row[c];
    }
  }
}

void prefill_attention(const PrefillSpan& s) {
  thread_local std::vector<float> acc;
  acc.resize(size_t(s.d));
  for (int i = 0; i < s.n; ++i) {
    float m = 0, l = 0;
    dense_partial(DenseSpan{s.k, nullptr, s.v, s.type, s.d, 1, s.q[i], 0, s.last[i] + 1},
                  DensePartial{&m, &l, acc.data()});
    for (int c = 0; c < s.d; ++c) s.out[i][c] = acc[size_t(c)] / l;
  }
}

}  // namespace sparq::ref
