#include "sparq/model/shapes.h"

#include <fstream>
#include <map>
#include <sstream>

#include <fmt/ranges.h>
#include <nlohmann/json.hpp>

#include "sparq/util/common.h"

namespace sparq {
namespace {

using json = nlohmann::json;

json llama3(int hidden, int layers, int heads, int kv_heads, int intermediate, bool tied, double rope_factor) {
  return {{"architectures", {"LlamaForCausalLM"}},
          {"hidden_size", hidden},
          {"num_hidden_layers", layers},
          {"num_attention_heads", heads},
          {"num_key_value_heads", kv_heads},
          {"head_dim", hidden / heads},
          {"intermediate_size", intermediate},
          {"vocab_size", 128256},
          {"max_position_embeddings", 131072},
          {"rms_norm_eps", 1e-5},
          {"rope_theta", 500000.0},
          {"rope_scaling",
           {{"rope_type", "llama3"},
            {"factor", rope_factor},
            {"low_freq_factor", 1.0},
            {"high_freq_factor", 4.0},
            {"original_max_position_embeddings", 8192}}},
          {"tie_word_embeddings", tied},
          {"bos_token_id", 128000},
          {"eos_token_id", 128001}};
}

// As in each model's config.json on the HuggingFace hub (meta-llama/...,
// mistralai/Mistral-7B-v0.3).
const std::map<std::string, json>& shapes() {
  static const std::map<std::string, json> s = {
      {"llama-3.2-1b", llama3(2048, 16, 32, 8, 8192, true, 32.0)},
      {"llama-3.2-3b", llama3(3072, 28, 24, 8, 8192, true, 32.0)},
      {"llama-3.1-8b", llama3(4096, 32, 32, 8, 14336, false, 8.0)},
      {"llama-2-7b",
       {{"architectures", {"LlamaForCausalLM"}}, {"hidden_size", 4096}, {"num_hidden_layers", 32},
        {"num_attention_heads", 32}, {"num_key_value_heads", 32}, {"intermediate_size", 11008},
        {"vocab_size", 32000}, {"max_position_embeddings", 4096}, {"rms_norm_eps", 1e-5},
        {"rope_theta", 10000.0}, {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}}},
      {"mistral-7b",
       {{"architectures", {"MistralForCausalLM"}}, {"hidden_size", 4096}, {"num_hidden_layers", 32},
        {"num_attention_heads", 32}, {"num_key_value_heads", 8}, {"head_dim", 128},
        {"intermediate_size", 14336}, {"vocab_size", 32768}, {"max_position_embeddings", 32768},
        {"rms_norm_eps", 1e-5}, {"rope_theta", 1000000.0}, {"sliding_window", nullptr},
        {"tie_word_embeddings", false}, {"bos_token_id", 1}, {"eos_token_id", 2}}},
  };
  return s;
}

}  // namespace

std::vector<std::string> shape_names() {
  std::vector<std::string> names;
  for (const auto& [name, cfg] : shapes()) names.push_back(name);
  return names;
}

std::string shape_config_json(const std::string& spec) {
  if (spec.size() > 5 && spec.compare(spec.size() - 5, 5, ".json") == 0) {
    std::ifstream f(spec, std::ios::binary);
    if (!f) fail("--shape {}: cannot read the file", spec);
    std::ostringstream text;
    text << f.rdbuf();
    return text.str();
  }
  const size_t colon = spec.find(':');
  const std::string name = spec.substr(0, colon);
  const auto it = shapes().find(name);
  if (it == shapes().end()) fail("--shape {}: unknown shape (known: {}, or a config.json)", name, fmt::join(shape_names(), ", "));
  json cfg = it->second;
  if (colon == std::string::npos) return cfg.dump();
  std::istringstream overrides(spec.substr(colon + 1));
  for (std::string kv; std::getline(overrides, kv, ',');) {
    const size_t eq = kv.find('=');
    if (eq == std::string::npos || eq == 0) fail("--shape {}: override '{}' is not key=value", spec, kv);
    const std::string key = kv.substr(0, eq);
    if (!cfg.contains(key)) fail("--shape {}: {} has no field {}", spec, name, key);
    const json value = json::parse(kv.substr(eq + 1), nullptr, false);
    if (value.is_discarded()) fail("--shape {}: the value of {} is not JSON", spec, key);
    cfg[key] = value;
  }
  // Token ids mean nothing to a random model: drop those a smaller vocabulary cuts off.
  for (const char* id : {"bos_token_id", "eos_token_id"})
    if (cfg[id].is_number_integer() && cfg["vocab_size"].is_number_integer() && cfg[id] >= cfg["vocab_size"])
      cfg.erase(id);
  return cfg.dump();
}

}  // namespace sparq
