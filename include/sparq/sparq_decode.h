// SparQ decode attention (Algorithm 1 of the paper) for a batch of queries;
// attention_decode (attention.h) routes here the queries whose resolved step
// is not dense.
#pragma once
#include <span>

#include "sparq/attention.h"

namespace sparq {

// Every query must resolve (resolve_sparq) to a non-dense step; updates
// counters (calls, kv_bytes, dense_bytes, phase times) when non-null.
void sparq_decode(std::span<const DecodeQuery> queries, int layer, int n_heads,
                  const SparqSettings& settings, AttnCounters* counters);

}  // namespace sparq
