// config.json parsing (shared models, every option, every refusal), RoPE
// frequencies against the formulas in double, and model file discovery.
#include <cmath>
#include <numbers>
#include <set>

#include <nlohmann/json.hpp>

#include "sparq/model/config.h"
#include "test_util.h"

using namespace sparq;
using namespace sparq::test;
using Catch::Matchers::Contains;
using nlohmann::json;

namespace {

// A small valid Llama config that each case below changes in one place.
json base_config() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 256, "num_hidden_layers": 2, "num_attention_heads": 8,
    "num_key_value_heads": 2, "intermediate_size": 640, "vocab_size": 1000,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-6, "rope_theta": 10000.0,
    "hidden_act": "silu", "attention_bias": false, "mlp_bias": false,
    "bos_token_id": 1, "eos_token_id": 2, "tie_word_embeddings": false})");
}

ModelConfig parse(const json& j) { return ModelConfig::from_json_text(j.dump()); }

std::string refusal(const json& j) {
  return error_of([&] { parse(j); });
}

// Checks the parsed config against the JSON file it came from.
void check_against_json(const ModelConfig& c, const json& j) {
  CHECK(c.architecture == j.at("architectures").at(0).get<std::string>());
  CHECK(c.hidden_size == j.at("hidden_size").get<int>());
  CHECK(c.n_layers == j.at("num_hidden_layers").get<int>());
  CHECK(c.n_heads == j.at("num_attention_heads").get<int>());
  CHECK(c.n_kv_heads == j.at("num_key_value_heads").get<int>());
  CHECK(c.head_dim == j.at("head_dim").get<int>());
  CHECK(c.intermediate_size == j.at("intermediate_size").get<int>());
  CHECK(c.vocab_size == j.at("vocab_size").get<int>());
  CHECK(c.max_position_embeddings == j.at("max_position_embeddings").get<int>());
  CHECK(c.rms_norm_eps == j.at("rms_norm_eps").get<float>());
  CHECK(c.tie_word_embeddings == j.at("tie_word_embeddings").get<bool>());
  CHECK(c.bos_id == j.at("bos_token_id").get<int>());
  CHECK(c.eos_ids == std::vector<int>{j.at("eos_token_id").get<int>()});
  CHECK(c.rope_scaling_type.empty());
}

// inv_freq in double: theta^(-2i/d), with llama3's three wavelength bands.
std::vector<double> inv_freq_reference(const ModelConfig& c) {
  std::vector<double> out;
  for (int i = 0; i < c.head_dim / 2; ++i) {
    const double f = std::pow(double(c.rope_theta), -2.0 * i / c.head_dim);
    if (c.rope_scaling_type.empty()) {
      out.push_back(f);
      continue;
    }
    const double wavelen = 2 * std::numbers::pi / f, ctx = c.rope_original_max_pos;
    if (wavelen < ctx / c.rope_high_freq_factor) {
      out.push_back(f);
    } else if (wavelen > ctx / c.rope_low_freq_factor) {
      out.push_back(f / c.rope_factor);
    } else {
      const double s = (ctx / wavelen - c.rope_low_freq_factor) /
                       (c.rope_high_freq_factor - c.rope_low_freq_factor);
      out.push_back((1 - s) * f / c.rope_factor + s * f);
    }
  }
  return out;
}

void check_inv_freq(const ModelConfig& c) {
  const std::vector<float> got = c.rope_inv_freq();
  const std::vector<double> want = inv_freq_reference(c);
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    CAPTURE(i);
    CHECK(std::abs(got[i] - want[i]) <= 1e-6 * want[i]);
  }
}

}  // namespace

TEST_CASE("config: the shared models' config.json files") {
  for (const char* name : {"llama-27m-prose", "stories260K-hf"}) {
    const std::string path = shared_dir() + "/models/" + name + "/config.json";
    SPARQ_REQUIRE_SHARED(path);
    CAPTURE(name);
    const json j = json::parse(read_text(path));
    const ModelConfig c = ModelConfig::load(path);
    check_against_json(c, j);
    // transformers 5 puts rope_theta inside rope_parameters.
    const json& theta = j.contains("rope_theta") ? j.at("rope_theta")
                                                 : j.at("rope_parameters").at("rope_theta");
    CHECK(c.rope_theta == theta.get<float>());
    check_inv_freq(c);
  }
}

TEST_CASE("config: defaults, Mistral, model_type and token ids") {
  json j = base_config();
  ModelConfig c = parse(j);
  CHECK(c.architecture == "LlamaForCausalLM");
  CHECK(c.head_dim == 32);  // hidden / heads
  CHECK(c.rms_norm_eps == 1e-6f);

  j.erase("num_key_value_heads");
  j.erase("rms_norm_eps");
  j["head_dim"] = nullptr;
  j.erase("tie_word_embeddings");
  c = parse(j);
  CHECK(c.n_kv_heads == 8);
  CHECK(c.head_dim == 32);
  CHECK(c.rms_norm_eps == 1e-6f);  // transformers' default
  CHECK_FALSE(c.tie_word_embeddings);

  j = base_config();
  j["head_dim"] = 64;  // need not be hidden / heads
  CHECK(parse(j).head_dim == 64);

  j = base_config();
  j.erase("architectures");
  CHECK(parse(j).architecture == "LlamaForCausalLM");
  j["model_type"] = "mistral";
  CHECK(parse(j).architecture == "MistralForCausalLM");
  j = base_config();
  j["architectures"] = {"MistralForCausalLM"};
  j["sliding_window"] = nullptr;
  CHECK(parse(j).architecture == "MistralForCausalLM");
  j["sliding_window"] = 2048;  // covers the whole context: plain attention
  CHECK(parse(j).architecture == "MistralForCausalLM");

  j = base_config();
  j["eos_token_id"] = {2, 7, 999};
  CHECK(parse(j).eos_ids == std::vector<int>{2, 7, 999});
  j["eos_token_id"] = nullptr;
  j["bos_token_id"] = nullptr;
  c = parse(j);
  CHECK(c.eos_ids.empty());
  CHECK(c.bos_id == -1);
}

TEST_CASE("config: rope_theta at top level or in rope_parameters") {
  json top = base_config();
  top["rope_theta"] = 500000.0;
  json inner = base_config();
  inner.erase("rope_theta");
  inner["rope_parameters"] = {{"rope_type", "default"}, {"rope_theta", 500000.0}};
  const ModelConfig a = parse(top), b = parse(inner);
  CHECK(a.rope_theta == 500000.0f);
  CHECK(b.rope_theta == 500000.0f);
  CHECK(a.rope_inv_freq() == b.rope_inv_freq());
  check_inv_freq(a);

  json missing = base_config();
  missing.erase("rope_theta");
  CHECK(parse(missing).rope_theta == 10000.0f);
  inner["rope_theta"] = 10000.0;
  CHECK_THAT(refusal(inner), Contains("disagree"));
  inner["rope_theta"] = 500000.0;
  CHECK(parse(inner).rope_theta == 500000.0f);
}

TEST_CASE("config: llama3 RoPE scaling matches the formula in double") {
  const json scaling = {{"rope_type", "llama3"},
                        {"factor", 8.0},
                        {"low_freq_factor", 1.0},
                        {"high_freq_factor", 4.0},
                        {"original_max_position_embeddings", 8192}};
  json j = base_config();
  j["hidden_size"] = 1024;  // head_dim 128, theta 500000: the Llama 3.1 setting
  j["rope_theta"] = 500000.0;
  j["max_position_embeddings"] = 131072;
  j["rope_scaling"] = scaling;
  const ModelConfig c = parse(j);
  CHECK(c.rope_scaling_type == "llama3");
  CHECK(c.rope_factor == 8.0f);
  CHECK(c.rope_original_max_pos == 8192);
  check_inv_freq(c);

  // All three bands occur, so each branch of the formula is exercised.
  int high = 0, mid = 0, low = 0;
  for (int i = 0; i < c.head_dim / 2; ++i) {
    const double wavelen = 2 * std::numbers::pi * std::pow(500000.0, 2.0 * i / c.head_dim);
    wavelen < 8192 / 4.0 ? ++high : wavelen > 8192 / 1.0 ? ++low : ++mid;
  }
  CHECK((high > 0 && mid > 0 && low > 0));

  // transformers 5 form, and the old "type" key.
  json v5 = j;
  v5.erase("rope_scaling");
  v5.erase("rope_theta");
  v5["rope_parameters"] = scaling;
  v5["rope_parameters"]["rope_theta"] = 500000.0;
  CHECK(parse(v5).rope_inv_freq() == c.rope_inv_freq());
  json old = j;
  old["rope_scaling"].erase("rope_type");
  old["rope_scaling"]["type"] = "llama3";
  CHECK(parse(old).rope_inv_freq() == c.rope_inv_freq());

  json bad = j;
  bad["rope_scaling"].erase("factor");
  CHECK_THAT(refusal(bad), Contains("factor"));
  bad = j;
  bad["rope_scaling"]["low_freq_factor"] = 4.0;
  CHECK_THAT(refusal(bad), Contains("low_freq_factor"));
  bad = j;
  bad["rope_scaling"].erase("original_max_position_embeddings");
  CHECK_THAT(refusal(bad), Contains("original_max_position_embeddings"));
  bad = j;
  bad["rope_parameters"] = {{"rope_type", "llama3"}, {"factor", 4.0}};
  CHECK_THAT(refusal(bad), Contains("disagree"));
}

TEST_CASE("config: unsupported or invalid configs are refused naming the problem") {
  auto with = [](const char* key, const json& v) {
    json j = base_config();
    j[key] = v;
    return refusal(j);
  };
  auto without = [](const char* key) {
    json j = base_config();
    j.erase(key);
    return refusal(j);
  };
  CHECK_THAT(with("architectures", {"GPT2LMHeadModel"}), Contains("unsupported architecture"));
  CHECK_THAT(with("architectures", "LlamaForCausalLM"), Contains("architectures"));
  {
    json j = base_config();
    j.erase("architectures");
    j["model_type"] = "gpt2";
    CHECK_THAT(refusal(j), Contains("model_type"));
    j.erase("model_type");
    CHECK_THAT(refusal(j), Contains("architectures"));
  }
  for (const char* type : {"linear", "dynamic", "yarn", "longrope", "ntk"})
    CHECK_THAT(with("rope_scaling", {{"rope_type", type}, {"factor", 2.0}}),
               Contains(type) && Contains("not supported"));
  CHECK_THAT(with("rope_scaling", {{"type", "linear"}, {"factor", 2.0}}), Contains("linear"));
  CHECK_THAT(with("rope_scaling", 2.0), Contains("object"));
  CHECK_THAT(with("rope_parameters", {{"full_attention", {{"rope_type", "default"}}}}),
             Contains("full_attention"));
  CHECK_THAT(with("rope_parameters", {{"rope_type", "default"}, {"partial_rotary_factor", 0.5}}),
             Contains("partial_rotary_factor"));
  CHECK_THAT(with("rope_theta", 0.5), Contains("rope_theta"));
  CHECK_THAT(with("rope_theta", "big"), Contains("rope_theta"));
  CHECK_THAT(with("attention_bias", true), Contains("attention_bias"));
  CHECK_THAT(with("mlp_bias", true), Contains("mlp_bias"));
  CHECK_THAT(with("mlp_bias", "no"), Contains("mlp_bias"));
  CHECK_THAT(with("hidden_act", "gelu"), Contains("hidden_act"));
  CHECK_THAT(with("sliding_window", 1024), Contains("sliding_window"));
  CHECK_THAT(with("quantization_config", {{"bits", 4}}), Contains("quantized"));
  CHECK_THAT(with("num_key_value_heads", 3), Contains("multiple"));
  CHECK_THAT(with("num_key_value_heads", 16), Contains("num_key_value_heads"));
  {
    json j = base_config();
    j["num_attention_heads"] = 7;
    j["num_key_value_heads"] = 7;
    CHECK_THAT(refusal(j), Contains("hidden_size 256 is not a multiple of num_attention_heads 7"));
  }
  CHECK_THAT(with("head_dim", 33), Contains("even"));
  CHECK_THAT(with("head_dim", 1024), Contains("head_dim"));
  CHECK_THAT(with("hidden_size", 0), Contains("hidden_size"));
  CHECK_THAT(with("hidden_size", 1 << 20), Contains("hidden_size"));
  CHECK_THAT(with("hidden_size", 256.0), Contains("hidden_size must be an integer"));
  CHECK_THAT(with("hidden_size", "256"), Contains("hidden_size must be an integer"));
  CHECK_THAT(with("num_hidden_layers", -1), Contains("num_hidden_layers"));
  CHECK_THAT(with("vocab_size", 100000000), Contains("vocab_size"));
  CHECK_THAT(with("intermediate_size", 0), Contains("intermediate_size"));
  CHECK_THAT(with("rms_norm_eps", 0.0), Contains("rms_norm_eps"));
  CHECK_THAT(with("eos_token_id", 1000), Contains("eos_token_id"));
  CHECK_THAT(with("eos_token_id", {2, -1}), Contains("eos_token_id"));
  CHECK_THAT(with("bos_token_id", "x"), Contains("bos_token_id"));
  for (const char* key : {"hidden_size", "num_hidden_layers", "num_attention_heads",
                          "intermediate_size", "vocab_size", "max_position_embeddings"})
    CHECK_THAT(without(key), Contains(std::string(key) + " is missing"));

  CHECK_THAT(error_of([] { ModelConfig::from_json_text("{\"hidden_size\": 256,"); }),
             Contains("not valid JSON"));
  CHECK_THAT(error_of([] { ModelConfig::from_json_text("[1]"); }), Contains("not a JSON object"));
  CHECK_THAT(error_of([] { ModelConfig::from_json_text(""); }), Contains("not valid JSON"));
}

TEST_CASE("config: load names the file") {
  TempDir tmp;
  json j = base_config();
  j.erase("vocab_size");
  const std::string path = tmp.write("config.json", j.dump());
  CHECK_THAT(error_of([&] { ModelConfig::load(path); }),
             Contains(path) && Contains("vocab_size is missing"));
  const std::string absent = (tmp.path / "none.json").string();
  CHECK_THAT(error_of([&] { ModelConfig::load(absent); }), Contains(absent));
}

TEST_CASE("resolve_model_files: the shared model directories") {
  const std::string prose = shared_dir() + "/models/llama-27m-prose";
  const std::string stories = shared_dir() + "/models/stories260K-hf";
  SPARQ_REQUIRE_SHARED(prose + "/model.safetensors.index.json");
  SPARQ_REQUIRE_SHARED(stories + "/model.safetensors");

  const json index = json::parse(read_text(prose + "/model.safetensors.index.json"));
  std::set<std::string> shards;
  for (const auto& [tensor, file] : index.at("weight_map").items()) shards.insert(file);
  std::vector<std::string> want;
  for (const std::string& s : shards) want.push_back(prose + "/" + s);

  const ModelFiles p = resolve_model_files(prose);
  CHECK(p.safetensors == want);
  CHECK(p.config == prose + "/config.json");
  CHECK(p.tokenizer == prose + "/tokenizer.json");

  const ModelFiles s = resolve_model_files(stories);
  CHECK(s.safetensors == std::vector<std::string>{stories + "/model.safetensors"});
  CHECK(s.tokenizer == stories + "/tokenizer.json");

  const ModelFiles one = resolve_model_files(stories + "/model.safetensors");
  CHECK(one.dir == stories);
  CHECK(one.safetensors == s.safetensors);
  CHECK(one.config == s.config);
}

TEST_CASE("resolve_model_files: layouts and what is missing") {
  TempDir tmp;
  const std::string d = tmp.path.string();
  CHECK_THAT(error_of([&] { resolve_model_files(d); }), Contains("no config.json in " + d));
  tmp.write("config.json", "{}");
  CHECK_THAT(error_of([&] { resolve_model_files(d); }), Contains("no .safetensors files"));

  // Without model.safetensors or an index, every .safetensors file, sorted.
  tmp.write("b.safetensors", "x");
  tmp.write("a.safetensors", "x");
  tmp.write("notes.txt", "x");
  CHECK_THAT(error_of([&] { resolve_model_files(d); }), Contains("no tokenizer.json"));
  tmp.write("tok512.bin", "x");
  ModelFiles m = resolve_model_files(d);
  CHECK(m.safetensors == std::vector<std::string>{d + "/a.safetensors", d + "/b.safetensors"});
  CHECK(m.tokenizer == d + "/tok512.bin");
  tmp.write("tok32000.bin", "x");
  CHECK_THAT(error_of([&] { resolve_model_files(d); }), Contains("several"));
  tmp.write("tokenizer.bin", "x");
  CHECK(resolve_model_files(d).tokenizer == d + "/tokenizer.bin");
  tmp.write("tokenizer.json", "x");
  CHECK(resolve_model_files(d).tokenizer == d + "/tokenizer.json");

  // An index names the shards; each must be there.
  tmp.write("model.safetensors.index.json",
            R"({"weight_map": {"x": "b.safetensors", "y": "c.safetensors", "z": "b.safetensors"}})");
  CHECK_THAT(error_of([&] { resolve_model_files(d); }),
             Contains("shard c.safetensors listed in model.safetensors.index.json is missing"));
  tmp.write("c.safetensors", "x");
  m = resolve_model_files(d);
  CHECK(m.safetensors == std::vector<std::string>{d + "/b.safetensors", d + "/c.safetensors"});
  tmp.write("model.safetensors.index.json", R"({"weight_map": {"x": "../b.safetensors"}})");
  CHECK_THAT(error_of([&] { resolve_model_files(d); }), Contains("plain file name"));
  tmp.write("model.safetensors.index.json", R"({"metadata": {}})");
  CHECK_THAT(error_of([&] { resolve_model_files(d); }), Contains("weight_map"));
  tmp.write("model.safetensors.index.json", "{");
  CHECK_THAT(error_of([&] { resolve_model_files(d); }), Contains("not valid JSON"));

  // model.safetensors wins over the index, as in transformers.
  tmp.write("model.safetensors", "x");
  CHECK(resolve_model_files(d).safetensors == std::vector<std::string>{d + "/model.safetensors"});

  // A single file: config and tokenizer come from its directory.
  CHECK(resolve_model_files(d + "/b.safetensors").safetensors ==
        std::vector<std::string>{d + "/b.safetensors"});
  CHECK_THAT(error_of([&] { resolve_model_files(d + "/notes.txt"); }),
             Contains("not a model directory or a .safetensors file"));
  CHECK_THAT(error_of([&] { resolve_model_files(d + "/absent"); }), Contains("does not exist"));
  std::filesystem::create_directory(tmp.path / "sub");
  tmp.write("sub/w.safetensors", "x");
  CHECK_THAT(error_of([&] { resolve_model_files(d + "/sub/w.safetensors"); }),
             Contains("no config.json in " + d + "/sub"));
}
