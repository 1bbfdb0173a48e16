// A Llama-family decoder: weights in compute format, and the forward pass over
// a batch of rows (tokens of one or more sequences, each with its own KVCache).
#pragma once
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "sparq/kernels/attention.h"
#include "sparq/model/config.h"
#include "sparq/kernels/kv_cache.h"
#include "sparq/kernels/matmul.h"
#include "sparq/tokenizer/tokenizer.h"
#include "sparq/util/thread_governor.h"

namespace sparq {

struct LoadOptions {
  // Format of the matrices. Quantized ones keep the embedding table (the
  // logits' matrix when tied) in q8_0, as llama.cpp keeps it above 4 bits.
  WeightFormat weight_format = WeightFormat::BF16;
};

// One token to run. Rows of the same sequence are consecutive and in position
// order. Rows with a decode attention setting run it (dense or SparQ); the
// others get dense causal attention (prefill).
struct Row {
  int token = 0;
  int pos = 0;
  KVCache* cache = nullptr;
  const AttentionSettings* decode = nullptr;
  bool logits = false;  // write this row's logits
};

// Time and bytes per phase of the forward pass, summed over calls.
struct ForwardStats {
  double t_embed = 0, t_qkv = 0, t_attn = 0, t_out = 0, t_mlp = 0, t_logits = 0;
  uint64_t weight_bytes = 0;
  // Bytes each phase reads besides the KV cache: embedding rows, then the
  // weight matrices (lm_head only for calls that make logits).
  uint64_t b_embed = 0, b_qkv = 0, b_out = 0, b_mlp = 0, b_logits = 0;
  std::vector<AttnCounters> attn_layers;  // decode attention, per layer
  AttnCounters attn;                      // the sum over layers
  std::map<const AttentionSettings*, AttnCounters> by_setting;  // decode attention per setting
  int64_t decode_steps = 0, steps_fewer_threads = 0;  // forwards of decode rows only; of those, run on fewer threads
  double seconds() const { return t_embed + t_qkv + t_attn + t_out + t_mlp + t_logits; }
};

class Model {
 public:
  // path: directory or .safetensors file (see resolve_model_files).
  static std::unique_ptr<Model> load(const std::string& path, const LoadOptions& opt);
  // A model of cfg's shape with seeded random bf16 weights (uniform, scaled
  // by 1/sqrt of each matrix's inputs) and no tokenizer: for benchmarks of
  // real model sizes without their files.
  static std::unique_ptr<Model> random(const ModelConfig& cfg, const LoadOptions& opt, uint64_t seed);

  const ModelConfig& config() const { return cfg_; }
  const Tokenizer& tokenizer() const;  // throws Error for a random model
  KVShape kv_shape(int capacity, KVType kv_type) const;
  size_t weight_bytes() const;  // bytes of all matrices in compute format
  size_t memory_bytes() const;  // weight_bytes() plus an untied embedding table

  // Decode-only forwards run on as many threads as the ThreadGovernor finds
  // fastest, up to omp_get_max_threads() (on: the default); off: always that many.
  void set_thread_governor(bool on) { governor_on_ = on; }

  // Runs the rows; logits is [number of rows with logits=true][vocab].
  void forward(std::span<const Row> rows, float* logits, ForwardStats* stats = nullptr);

 private:
  struct Layer {
    std::vector<float> attn_norm, mlp_norm;
    Linear qkv;      // [q; k; v] projections fused
    Linear o;
    Linear gate_up;  // [gate; up] fused
    Linear down;
  };
  struct Source;
  void build(const Source& w, const LoadOptions& opt);
  void embed(int token, float* out) const;
  void size_activations(int M);

  ModelConfig cfg_;
  std::unique_ptr<Tokenizer> tok_;
  std::unique_ptr<WeightArena> arena_;  // every Linear's weights; declared first, freed last
  std::unique_ptr<Linear> embed_;  // untied models' table; tied ones read lm_head_'s rows
  std::vector<float> final_norm_;
  std::vector<float> inv_freq_;
  std::vector<Layer> layers_;
  std::unique_ptr<Linear> lm_head_;
  // activations for M rows (size_activations)
  std::vector<float> x_, xb_, qkv_, hb_;
  std::vector<DecodeQuery> decode_queries_;
  std::vector<char> decode_done_;  // per row, within one layer's attention
  std::vector<char> out_decode_;   // per row with logits: a decode row
  ThreadGovernor governor_;
  bool governor_on_ = true;
};

}  // namespace sparq
