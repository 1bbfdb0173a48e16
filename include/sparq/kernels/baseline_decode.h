// The decode attentions SparQ is compared with, at SparQ's bytes per step:
// window (attention sinks plus the most recent positions, as StreamingLLM /
// LM-Infinite) and H2O (heavy hitters by accumulated attention plus a recent
// window, evicting the rest for good; its state lives in the KV cache, see
// EvictionState). topk runs as a SparQ step with exact scores (resolve_topk).
#pragma once
#include <span>
#include <vector>

#include "sparq/kernels/attention.h"

namespace sparq {

// Positions window reads at cache length S with `budget` < S positions: the
// first min(sinks, budget - 1), then the most recent ones (at least the
// query's own), ascending.
void window_positions(int S, int budget, int sinks, std::vector<int>& out);

// The recent window H2O keeps out of eviction: recent_pct of the budget, at
// least 1 position (the query's own) and at most the budget.
int h2o_recent(int budget, int recent_pct);

// H2O's bookkeeping before a step at cache length S: positions [seen, S)
// join the kept ones with score 0; then, unless the state was empty (the
// step that seeds it reads every position), the lowest-scored kept
// positions older than the recent window are evicted until at most `budget`
// remain (equal scores: the older position goes first). Returns whether the
// step seeds the state. A state that has seen more than S positions starts over.
bool h2o_prepare(EvictionState& st, int S, int budget, int recent);

// Attention of n_h heads (q: [n_h][d], rounded as the cache's keys meet it)
// over the n rows idx of one KV head, scalar: out [n_h][d]; when prob is
// non-null, adds to prob[i] the softmax weight of idx[i] summed over the heads.
void attend_rows(const KVCache& cache, int layer, int kv_head, const float* q, int n_h, const int* idx, int n,
                 float* out, float* prob);

// Every query must have a window budget below its S.
void window_decode(std::span<const DecodeQuery> queries, int layer, int n_heads, const AttentionSettings& a,
                   AttnCounters* counters);

// Every h2o query; each must cover its layer's stored positions (S = length),
// since the state follows the sequence step by step.
void h2o_decode(std::span<const DecodeQuery> queries, int layer, int n_heads, const AttentionSettings& a,
                AttnCounters* counters);

namespace ref {
// Plain references in double over K, V [S][d] and q [n_h][d] (float), for
// the tests; scores q.K / sqrt(d); out [n_h][d].
void window_attention(const float* q, int n_h, int d, const float* K, const float* V, int S, int budget, int sinks,
                      double* out);
// The top k of [0, S - l) by the group's summed softmax weights (prob) or
// summed scores (logit), ties to the lower position, plus the last l.
std::vector<int> topk_positions(const float* q, int n_h, int d, const float* K, int S, int k, int l,
                                GroupRule rule);
void attention_over(const float* q, int n_h, int d, const float* K, const float* V, const std::vector<int>& idx,
                    double* out, std::vector<double>* prob = nullptr);

// H2O step by step, written from its definition: every position ever seen
// with its accumulated attention, and whether it was evicted.
class H2O {
 public:
  // One step over K, V [S][d] (S one more than the previous step's, or any
  // S at the first): the kept positions after eviction, and out.
  std::vector<int> step(const float* q, int n_h, int d, const float* K, const float* V, int S, int budget,
                        int recent, double* out);

 private:
  std::vector<double> score_;
  std::vector<bool> evicted_;
};
}  // namespace ref

}  // namespace sparq
