// config.json as transformers 4 and 5 write it for Llama and Mistral models.
// Anything that would change the maths and is not implemented (biases, other
// RoPE scalings, sliding windows, quantisation) is refused, not ignored.
#include "sparq/model/config.h"

#include <cmath>
#include <fstream>
#include <numbers>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sparq/util/common.h"
#include "sparq/io/json_text.h"

namespace sparq {
namespace {

using nlohmann::json;

// The field, or nullptr when absent or null (transformers treats both alike).
const json* field(const json& j, const char* key) {
  auto it = j.find(key);
  return it == j.end() || it->is_null() ? nullptr : &*it;
}

int64_t as_int(const json& v, const char* key) {
  if (!v.is_number_integer()) fail("{} must be an integer, got {}", key, v.dump());
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(INT64_MAX))
    fail("{} is too large: {}", key, v.dump());
  return v.get<int64_t>();
}

int int_in(const json& v, const char* key, int64_t lo, int64_t hi) {
  const int64_t x = as_int(v, key);
  if (x < lo || x > hi) fail("{} must be in [{}, {}], got {}", key, lo, hi, x);
  return int(x);
}

int req_int(const json& j, const char* key, int64_t lo, int64_t hi) {
  const json* v = field(j, key);
  if (!v) fail("{} is missing", key);
  return int_in(*v, key, lo, hi);
}

double as_num(const json& v, const char* key) {
  if (!v.is_number()) fail("{} must be a number, got {}", key, v.dump());
  const double x = v.get<double>();
  if (!std::isfinite(x)) fail("{} must be finite", key);
  return x;
}

bool opt_bool(const json& j, const char* key, bool def) {
  const json* v = field(j, key);
  if (!v) return def;
  if (!v->is_boolean()) fail("{} must be true or false, got {}", key, v->dump());
  return v->get<bool>();
}

std::string parse_architecture(const json& j) {
  static const char* const kSupported = "LlamaForCausalLM and MistralForCausalLM";
  if (const json* a = field(j, "architectures")) {
    if (!a->is_array()) fail("architectures must be a list, got {}", a->dump());
    for (const json& s : *a)
      if (s == "LlamaForCausalLM" || s == "MistralForCausalLM") return s.get<std::string>();
    fail("unsupported architecture {}; sparq-run runs {}", a->dump(), kSupported);
  }
  if (const json* t = field(j, "model_type")) {
    if (*t == "llama") return "LlamaForCausalLM";
    if (*t == "mistral") return "MistralForCausalLM";
    fail("unsupported model_type {}; sparq-run runs {}", t->dump(), kSupported);
  }
  fail("neither architectures nor model_type is given");
}

// transformers 5 writes rope_parameters (with rope_theta inside), 4 writes
// rope_theta plus rope_scaling; both carry the same scaling keys.
void parse_rope(const json& j, ModelConfig& c) {
  const json* params = field(j, "rope_parameters");
  const json* legacy = field(j, "rope_scaling");
  for (const json* p : {params, legacy})
    if (p && !p->is_object()) fail("rope_parameters/rope_scaling must be an object");
  if (params) {
    for (const auto& [k, v] : params->items())
      if (v.is_object())
        fail("rope_parameters per attention type ({}) are not supported", json(k).dump());
  }
  if (params && legacy) {
    json a = *params, b = *legacy;
    a.erase("rope_theta");
    b.erase("rope_theta");
    if (a != b) fail("rope_parameters and rope_scaling disagree");
  }

  const json* top_theta = field(j, "rope_theta");
  const json* in_theta = params ? field(*params, "rope_theta") : nullptr;
  if (top_theta && in_theta && as_num(*top_theta, "rope_theta") != as_num(*in_theta, "rope_theta"))
    fail("rope_theta {} and rope_parameters.rope_theta {} disagree", top_theta->dump(),
         in_theta->dump());
  if (const json* t = in_theta ? in_theta : top_theta) {
    const double theta = as_num(*t, "rope_theta");
    if (theta <= 1.0) fail("rope_theta must be above 1, got {}", theta);
    c.rope_theta = float(theta);
  }

  const json* s = params ? params : legacy;
  if (!s) return;
  const json* type = field(*s, "rope_type");
  if (!type) type = field(*s, "type");
  if (type && !type->is_string()) fail("rope_type must be a string, got {}", type->dump());
  const std::string kind = type ? type->get<std::string>() : "default";
  if (const json* prf = field(*s, "partial_rotary_factor"))
    if (as_num(*prf, "partial_rotary_factor") != 1.0)
      fail("partial_rotary_factor {} is not supported", prf->dump());
  if (kind == "default") return;
  if (kind != "llama3")
    fail("RoPE scaling type {} is not supported (only default and llama3)", type->dump());

  auto num = [&](const char* key) {
    const json* v = field(*s, key);
    if (!v) fail("llama3 RoPE scaling needs {}", key);
    return as_num(*v, key);
  };
  c.rope_scaling_type = kind;
  c.rope_factor = float(num("factor"));
  c.rope_low_freq_factor = float(num("low_freq_factor"));
  c.rope_high_freq_factor = float(num("high_freq_factor"));
  const json* omp = field(*s, "original_max_position_embeddings");
  if (!omp) fail("llama3 RoPE scaling needs original_max_position_embeddings");
  c.rope_original_max_pos = int_in(*omp, "original_max_position_embeddings", 1, 1 << 24);
  if (!(c.rope_factor >= 1.0f))
    fail("llama3 RoPE factor must be at least 1, got {}", c.rope_factor);
  if (!(c.rope_low_freq_factor > 0.0f) || !(c.rope_high_freq_factor > c.rope_low_freq_factor))
    fail("llama3 RoPE needs 0 < low_freq_factor < high_freq_factor, got {} and {}",
         c.rope_low_freq_factor, c.rope_high_freq_factor);
}

void parse_token_ids(const json& j, ModelConfig& c) {
  auto check = [&](const json& v, const char* key) {
    return int_in(v, key, 0, c.vocab_size - 1);
  };
  if (const json* b = field(j, "bos_token_id")) c.bos_id = check(*b, "bos_token_id");
  if (const json* e = field(j, "eos_token_id")) {
    if (e->is_array()) {
      for (const json& v : *e) c.eos_ids.push_back(check(v, "eos_token_id"));
    } else {
      c.eos_ids.push_back(check(*e, "eos_token_id"));
    }
  }
}

void refuse_unsupported(const json& j, int max_pos) {
  if (const json* act = field(j, "hidden_act"); act && *act != "silu")
    fail("hidden_act {} is not supported (only silu)", act->dump());
  for (const char* key : {"attention_bias", "mlp_bias"})
    if (opt_bool(j, key, false)) fail("{} true is not supported (no biases)", key);
  if (const json* sw = field(j, "sliding_window")) {
    const int64_t w = as_int(*sw, "sliding_window");
    if (w < max_pos)
      fail("sliding_window {} is below max_position_embeddings {}; sliding-window "
           "attention is not supported",
           w, max_pos);
  }
  if (field(j, "quantization_config")) fail("quantized models are not supported");
}

ModelConfig parse_config(const std::string& text) {
  const json j = parse_json(text);
  if (!j.is_object()) fail("not a JSON object");

  ModelConfig c;
  c.architecture = parse_architecture(j);
  c.hidden_size = req_int(j, "hidden_size", 1, 65536);
  c.n_layers = req_int(j, "num_hidden_layers", 1, 1024);
  c.n_heads = req_int(j, "num_attention_heads", 1, 1024);
  const json* kv = field(j, "num_key_value_heads");
  c.n_kv_heads = kv ? int_in(*kv, "num_key_value_heads", 1, c.n_heads) : c.n_heads;
  if (c.n_heads % c.n_kv_heads != 0)
    fail("num_attention_heads {} is not a multiple of num_key_value_heads {}", c.n_heads,
         c.n_kv_heads);
  if (const json* hd = field(j, "head_dim")) {
    c.head_dim = int_in(*hd, "head_dim", 2, 512);
  } else {
    if (c.hidden_size % c.n_heads != 0)
      fail("hidden_size {} is not a multiple of num_attention_heads {} (and no head_dim)",
           c.hidden_size, c.n_heads);
    c.head_dim = c.hidden_size / c.n_heads;
    if (c.head_dim > 512) fail("head_dim {} (hidden_size / num_attention_heads) is above 512", c.head_dim);
  }
  if (c.head_dim % 2 != 0) fail("head_dim must be even for RoPE, got {}", c.head_dim);
  c.intermediate_size = req_int(j, "intermediate_size", 1, 1 << 18);
  c.vocab_size = req_int(j, "vocab_size", 1, 1 << 22);
  c.max_position_embeddings = req_int(j, "max_position_embeddings", 1, 1 << 24);

  // transformers' LlamaConfig and MistralConfig default.
  c.rms_norm_eps = 1e-6f;
  if (const json* eps = field(j, "rms_norm_eps")) {
    const double e = as_num(*eps, "rms_norm_eps");
    if (!(e > 0.0 && e < 1.0)) fail("rms_norm_eps must be in (0, 1), got {}", e);
    c.rms_norm_eps = float(e);
  }
  parse_rope(j, c);
  c.tie_word_embeddings = opt_bool(j, "tie_word_embeddings", false);
  parse_token_ids(j, c);
  refuse_unsupported(j, c.max_position_embeddings);
  return c;
}

}  // namespace

ModelConfig ModelConfig::from_json_text(const std::string& text) {
  try {
    return parse_config(text);
  } catch (const Error& e) {
    fail("config.json: {}", e.what());
  }
}

ModelConfig ModelConfig::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("{}: cannot read", path);
  std::stringstream ss;
  ss << f.rdbuf();
  try {
    return parse_config(ss.str());
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
}

// As transformers computes it in float32: exponent 2i/d, base^exponent, its
// reciprocal. llama3 scaling then divides low frequencies by `factor` and
// blends the band between the two wavelength thresholds; torch evaluates
// `scalar / tensor` as reciprocal(tensor) * scalar, so the same here.
std::vector<float> ModelConfig::rope_inv_freq() const {
  const int half = head_dim / 2;
  std::vector<float> inv(static_cast<size_t>(half));
  for (int i = 0; i < half; ++i) {
    const float e = float(2 * i) / float(head_dim);
    inv[size_t(i)] = 1.0f / float(std::pow(double(rope_theta), double(e)));
  }
  if (rope_scaling_type != "llama3") return inv;

  const float old_ctx = float(rope_original_max_pos);
  const float low_wavelen = float(double(rope_original_max_pos) / rope_low_freq_factor);
  const float high_wavelen = float(double(rope_original_max_pos) / rope_high_freq_factor);
  const float band = float(double(rope_high_freq_factor) - double(rope_low_freq_factor));
  const float two_pi = float(2.0 * std::numbers::pi);
  for (float& f : inv) {
    const float wavelen = (1.0f / f) * two_pi;
    const float scaled = wavelen > low_wavelen ? f / rope_factor : f;
    if (wavelen < high_wavelen || wavelen > low_wavelen) {
      f = scaled;
    } else {
      const float smooth = ((1.0f / wavelen) * old_ctx - rope_low_freq_factor) / band;
      f = (1.0f - smooth) * scaled / rope_factor + smooth * scaled;
    }
  }
  return inv;
}

}  // namespace sparq
