// Decode-time attention (dense, or SparQ: Ribar et al., ICML 2024, Algorithm 1)
// and dense causal attention for prefill, over a KVCache.
#pragma once
#include <cstdint>
#include <span>
#include <string>

#include "sparq/kernels/kv_cache.h"

namespace sparq {

// How a GQA group of query heads that share a KV head picks the positions
// step 2 keeps: by the sum over its heads of the step-1 softmax
// probabilities, or by the sum of the heads' approximate logits (scaled
// scores before the softmax), as the authors' evaluation code does.
enum class GroupRule { prob, logit };

struct SparqSettings {
  int r = 0;           // components of q kept in step 1 (0: from ratio)
  int k = 0;           // positions kept in step 2 (0: from ratio)
  int local = -1;      // local window (-1: k/4)
  int ratio = 0;       // target 1/ratio of dense bytes (used where r or k is 0)
  int k_floor = 128;   // k from ratio never goes below this
  // Percent of the ratio rule's byte budget that step 1 gets (r), the rest
  // going to step 3 (k): r = d * split / (50 ratio), k = S (100 - split) / (100 ratio).
  int split = 50;
  GroupRule group = GroupRule::prob;
  bool mean_mixing = false;
  // Run dense attention at steps where SparQ would fetch as many bytes; off
  // ("nofallback") runs the SparQ kernels anyway, to check them against dense.
  bool dense_fallback = true;
  // Throws Error for negative r, k, ratio, local < -1, k_floor < 1, split
  // outside [1, 99], or r or k left to a ratio of 0.
  void validate() const;
};

// The decode attentions besides dense. The baselines get the bytes per step
// of SparQ at the same ratio (window, h2o: budget positions of K and V), or
// its k (topk).
enum class Method {
  sparq,
  window,  // the first `sinks` positions and the most recent ones (StreamingLLM / LM-Infinite)
  h2o,     // heavy hitters by accumulated attention plus a recent window; evicted positions stay out
  topk,    // exact attention over the true top-k positions: reads all of K to find them
};

struct BaselineSettings {
  int sinks = 4;          // window: attention sinks kept at the start
  int recent_pct = 50;    // h2o: percent of the budget for the most recent positions
};

struct AttentionSettings {
  bool sparq = false;  // false: dense decode attention; true: `method`, with the budget of `sp`
  Method method = Method::sparq;
  SparqSettings sp;
  BaselineSettings base;
  // Diagnostics of which layers lose quality: >= 0, the method runs at
  // only_layer alone, or everywhere but at except_layer (dense there).
  int only_layer = -1, except_layer = -1;
  bool runs_at(int layer) const {
    return (only_layer < 0 || only_layer == layer) && except_layer != layer;
  }
  std::string describe() const;  // "dense", "sparq r=8 k=512 l=128", "sparq 1/8", "h2o 1/8 recent=50%"
};

// "dense"; "sparq" (ratio 8); "sparq:N" (ratio N); or "sparq:" then comma-
// separated items: N, ratio=N, r=R, k=K, l=L (local window), floor=F (k
// floor), split=P, group=prob|logit, mean (mean mixing on), nofallback.
// "window:", "h2o:" and "topk:" take N, ratio=N, k=K (window, h2o: budget
// positions; topk: positions kept), floor=F, and window sinks=N, h2o
// recent=P (percent), topk l=L and group=. Every kind takes layer=L (that
// layer alone, dense at the others) and except=L (dense at that layer). Validated; throws Error naming the
// problem.
AttentionSettings parse_attention_setting(const std::string& text);

// Whether text starts a new setting of a list (dense, sparq, window, h2o, topk).
bool starts_attention_setting(const std::string& text);

// The (r, k, l) SparQ uses at cache length S and head size d; dense is true
// when SparQ would fetch as much as dense attention (then dense runs).
struct SparqStep {
  bool dense = false;
  int r = 0, k = 0, l = 0;
  bool mean = false;  // mean mixing: v_mean is read too
  GroupRule group = GroupRule::prob;
};
SparqStep resolve_sparq(const SparqSettings& s, int S, int d);

// topk as a SparQ step: exact scores (r = d), SparQ's k at the same ratio,
// local window l (0 unless given).
SparqStep resolve_topk(const SparqSettings& s, int S, int d);

// Positions of K and V that window and h2o read at cache length S: the
// elements SparQ reads at the same ratio over 2d (or k when given), at least
// 1; S (dense) where SparQ would fall back to dense.
int baseline_budget(const SparqSettings& s, int S, int d);

// KV bytes one decode step reads per KV head.
uint64_t dense_step_bytes(int S, int d, KVType t);
uint64_t sparq_step_bytes(const SparqStep& st, int S, int d, KVType t);  // step 1 + k rows + v_mean

// Bytes one decode step of this setting reads per KV head at cache length S,
// and whether it runs dense. h2o's first decode step of a sequence
// (first_step) reads every position: its scores seed the accumulated
// attention, which H2O takes from the prompt.
uint64_t decode_step_bytes(const AttentionSettings& a, int S, int d, KVType t, bool first_step);
bool decode_step_dense(const AttentionSettings& a, int S, int d, bool first_step);

struct AttnCounters {
  uint64_t calls = 0;           // (query, layer) pairs
  uint64_t dense_fallbacks = 0; // SparQ requested but dense ran (S too small)
  uint64_t kv_bytes = 0;        // bytes actually read from the cache
  uint64_t dense_bytes = 0;     // bytes dense attention would have read
  double seconds = 0;           // wall time in attention_decode
  double t_step1 = 0, t_topk = 0, t_step3 = 0, t_mix = 0;  // SparQ phases (summed over threads / nthreads)
  void add(const AttnCounters& o);
};

// One decode query: the newest token of one sequence, already stored in the
// cache, so the cache holds S positions (the query's own included).
struct DecodeQuery {
  const KVCache* cache;
  int S;
  const float* q;  // [n_heads][head_dim], post-RoPE
  float* out;      // [n_heads][head_dim]
};

// Throws Error (messages prefixed by `who`) unless q has a cache, q and out,
// layer is in range, n_heads is a multiple of the KV heads and 1 <= S <= the
// layer's length. Every decode path checks its queries with it.
void check_decode_query(const DecodeQuery& q, int layer, int n_heads, const char* who);

// Attention for a batch of decode queries at one layer. n_heads query heads
// share the cache's KV heads in groups (head h uses KV head h / group).
// Threads split the work over (query, KV head) and, when there are fewer of
// those than threads, over blocks of positions with a merge.
void attention_decode(std::span<const DecodeQuery> queries, int layer, int n_heads,
                      const AttentionSettings& settings, AttnCounters* counters);

// Dense causal attention for T prompt tokens at positions p0 .. p0+T-1 (all
// already stored): out is [T][n_heads][head_dim]; token t's query is the
// [n_heads][head_dim] block at q + t * q_stride.
void attention_prefill(const KVCache& cache, int layer, int p0, int T, int n_heads, const float* q,
                       size_t q_stride, float* out);

}  // namespace sparq
