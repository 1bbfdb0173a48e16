// Prompt processing and token-by-token generation for one sequence, with the
// per-step records the statistics table and --stats-json are made from.
#pragma once
#include <functional>
#include <span>
#include <string>
#include <vector>

#include "sparq/kernels/kv_cache.h"
#include "sparq/model/model.h"
#include "sparq/engine/sampler.h"

namespace sparq {

class TraceLog;

// One decode step: the cache length it attended over and what it cost.
struct StepRecord {
  int S = 0;
  int token = 0;
  double ms = 0, attn_ms = 0;
  uint64_t kv_bytes = 0, dense_kv_bytes = 0, weight_bytes = 0;
  bool dense_fallback = false;  // SparQ asked for, dense ran (S too small)
};

struct GenerateOptions {
  int n_predict = 128;   // tokens to generate (-1: until EOS or the context is full)
  int ctx = 0;           // context size (KV cache capacity), prompt included
  int batch = 512;       // prompt tokens per forward pass
  KVType kv_type = KVType::BF16;
  AttentionSettings attention;  // decode attention
  SamplerOptions sampling;
  bool ignore_eos = false;
  std::function<void(const StepRecord&)> on_step;  // after each decode step, if set
  TraceLog* trace = nullptr;  // if set, gets events for each forward pass, its phases and sampling
};

struct GenerateResult {
  std::vector<int> tokens;  // generated ids
  int n_prompt = 0;
  double t_prompt = 0, t_decode = 0;  // seconds
  double t_sample = 0;                // seconds in the sampler (within t_decode)
  ForwardStats prompt_stats, decode_stats;
  std::vector<StepRecord> steps;
  std::string stop_reason;  // "eos", "n_predict", "context full", "stopped"
};

// Throws Error naming the sizes when a prompt of n tokens leaves no room in ctx.
void check_prompt_fits(size_t n_prompt, int ctx);

// Throws Error when the prompt does not fit the context. on_token is called
// with each generated id as soon as it is sampled; returning false stops.
GenerateResult generate(Model& model, std::span<const int> prompt, const GenerateOptions& opt,
                        const std::function<bool(int)>& on_token);

}  // namespace sparq
