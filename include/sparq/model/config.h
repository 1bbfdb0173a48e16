// config.json of a HuggingFace Llama-family model, and where a model's files are.
#pragma once
#include <string>
#include <vector>

namespace sparq {

struct ModelConfig {
  std::string architecture;  // LlamaForCausalLM or MistralForCausalLM
  int hidden_size = 0;
  int n_layers = 0;
  int n_heads = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int intermediate_size = 0;
  int vocab_size = 0;
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-5f;
  float rope_theta = 10000.0f;
  // rope_scaling / rope_parameters of type "llama3" (empty type: none).
  std::string rope_scaling_type;
  float rope_factor = 1.0f;
  float rope_low_freq_factor = 1.0f;
  float rope_high_freq_factor = 4.0f;
  int rope_original_max_pos = 8192;
  bool tie_word_embeddings = false;
  int bos_id = -1;
  std::vector<int> eos_ids;

  // Parses and validates; throws Error naming the field for missing or
  // out-of-range values, unknown architectures or unsupported options.
  static ModelConfig from_json_text(const std::string& text);
  static ModelConfig load(const std::string& path);

  // inv_freq[i] for i < head_dim/2, with llama3 scaling applied.
  std::vector<float> rope_inv_freq() const;
};

struct ModelFiles {
  std::string dir;
  std::string config;                    // config.json
  std::string tokenizer;                 // tokenizer.json, or a llama2.c tokenizer .bin when that is all there is
  std::vector<std::string> safetensors;  // one file, or the shards of the index
};

// --model accepts a directory or a single .safetensors file with config.json
// and tokenizer.json beside it. In a directory the weights are
// model.safetensors, else the shards model.safetensors.index.json lists, else
// every *.safetensors (sorted); without tokenizer.json, a llama2.c
// tokenizer.bin or tok*.bin is taken. Throws Error naming what is missing.
ModelFiles resolve_model_files(const std::string& path);

}  // namespace sparq
