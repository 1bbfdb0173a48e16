// Continuous batching: many sequences decode together, one pass over the
// weights per step for all of them, each with its own KV cache and its own
// SparQ selection. Finished sequences free their cache for waiting jobs.
#pragma once
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "sparq/kernels/kv_cache.h"
#include "sparq/engine/kv_budget.h"
#include "sparq/model/model.h"
#include "sparq/engine/sampler.h"

namespace sparq {

// One piece of work: its tokens run once per attention variant (same tokens,
// separate caches), so the variants can be compared position by position.
struct Job {
  std::vector<int> prefill;  // prompt tokens, dense causal attention
  std::vector<int> forced;   // then fed one decode step each, whatever is predicted
  int n_sample = 0;          // then tokens sampled (stops early at EOS)
  std::vector<const AttentionSettings*> variants;
  // Per variant, its KV cache type; empty: every variant on the engine's
  // first pool's type. Variants of one type share one prompt pass.
  std::vector<KVType> kv_types;
  SamplerOptions sampling;
  bool stop_at_eos = true;
};

struct VariantResult {
  std::vector<int> sampled;
  std::string stop_reason;     // "eos", "n_predict", "context full"
  int decode_steps = 0;
  uint64_t kv_bytes = 0;       // KV bytes the decode attention read
  uint64_t dense_kv_bytes = 0; // what dense attention would have read
};

struct JobResult {
  std::vector<VariantResult> variants;
  double seconds = 0;  // from admission to completion
};

struct EngineHooks {
  // Logits after forced token `index` (0-based) of every variant, in variant
  // order: they predict forced[index + 1], or the first sampled token.
  std::function<void(size_t job, int index, std::span<const float* const> logits)> on_forced;
  std::function<void(size_t job, int variant, int token)> on_token;  // each sampled token
  std::function<void(size_t job, JobResult&& result)> on_done;
};

// KV caches of one type, one per sequence in flight.
struct CachePool {
  KVType type;
  int count;
};

class Engine {
 public:
  // Caches of ctx positions from each pool (a job's variants each take one of
  // their type); throws as check_kv_fits when they would not fit in memory.
  Engine(Model& model, int ctx, std::span<const CachePool> pools);
  // parallel sequences in flight, all on one cache type.
  Engine(Model& model, int parallel, int ctx, KVType kv_type);

  // Runs the jobs (in order of admission as caches free up); throws Error for
  // a job that cannot fit the context. Prefill rows per step are capped by
  // batch so decoding sequences are not stalled by a long prompt. Returns
  // early, dropping the jobs in flight, once interrupted() (sparq/interrupt.h).
  void run(std::span<const Job> jobs, const EngineHooks& hooks, int batch = 512);

  ForwardStats& stats() { return stats_; }
  int parallel() const { return int(caches_.size()); }  // sequences in flight, all pools

 private:
  Model& model_;
  int ctx_;
  std::vector<std::unique_ptr<KVCache>> caches_;
  ForwardStats stats_;
};

// KV bytes one decode step at cache length S reads over all layers and KV
// heads under this setting (first_step: the sequence's first decode step,
// which h2o reads whole), and what dense attention would read.
uint64_t step_kv_bytes(const ModelConfig& c, const AttentionSettings& a, int S, KVType kv_type,
                       bool first_step = false);
uint64_t step_dense_kv_bytes(const ModelConfig& c, int S, KVType kv_type);

}  // namespace sparq
