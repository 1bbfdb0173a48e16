// SparQ decode attention (Algorithm 1 of the paper) for a batch of queries;
// attention_decode (attention.h) routes here the queries whose resolved step
// is not dense.
#pragma once
#include <span>
#include <vector>

#include "sparq/kernels/attention.h"

namespace sparq {

// Every query must resolve (resolve_sparq) to a non-dense step; updates
// counters (calls, kv_bytes, dense_bytes, phase times) when non-null.
void sparq_decode(std::span<const DecodeQuery> queries, int layer, int n_heads,
                  const SparqSettings& settings, AttnCounters* counters);

// The same with each query's step given (none dense), as resolve_sparq or
// resolve_topk made it.
void sparq_decode_steps(std::span<const DecodeQuery> queries, std::span<const SparqStep> steps, int layer,
                        int n_heads, AttnCounters* counters);

// What SparQ chose for one (query, KV head): i1 and i2 ascending, and alpha
// (the step-1 softmax mass of i2) per query head of the group.
struct SparqTrace {
  std::vector<int> i1, i2;
  std::vector<float> alpha;
};

// SparQ with one explicit step for every query, whatever resolve_sparq would
// pick (so it also runs where dense attention reads fewer bytes): needs
// 1 <= r <= d, k >= 1, l >= 0; k is capped at S and l at k; step.mean mixes
// with the mean of V. With trace non-null, it gets one entry per (query, KV
// head), query-major.
void sparq_decode_step(std::span<const DecodeQuery> queries, int layer, int n_heads,
                       const SparqStep& step, AttnCounters* counters,
                       std::vector<SparqTrace>* trace = nullptr);

}  // namespace sparq
