// The forward pass against HuggingFace transformers: logits of the golden
// prompts and the greedy continuations in ../shared/golden/logits_*.json.
#include <cmath>
#include <fstream>

#include <nlohmann/json.hpp>

#include "sparq/engine/generate.h"
#include "sparq/io/safetensors.h"
#include "model/prompt_logits.h"
#include "test_util.h"

using namespace sparq;
using namespace sparq::test;
using nlohmann::json;

namespace {

struct GoldenModel {
  const char* name;
  const char* golden;
};
const GoldenModel kModels[] = {
    {"llama-27m-prose", "logits_llama-27m-prose.json"},
    {"llama-27m-bpe8k", "logits_llama-27m-bpe8k.json"},  // BOS is id 0; prompts past 4096 positions
    {"stories260K-hf", "logits_stories260K.json"},
};

std::vector<int> greedy(Model& m, const std::vector<int>& ids, int n, KVType kv,
                        const AttentionSettings& attn) {
  GenerateOptions g;
  g.n_predict = n;
  g.ctx = int(ids.size()) + n + 1;
  g.kv_type = kv;
  g.attention = attn;
  g.sampling.temp = 0;
  g.ignore_eos = true;
  return generate(m, ids, g, [](int) { return true; }).tokens;
}

}  // namespace

TEST_CASE("f32 logits and greedy text match transformers", "[model][golden]") {
  for (const GoldenModel& gm : kModels) {
    const std::string dir = shared_dir() + "/models/" + gm.name;
    const std::string golden_path = shared_dir() + "/golden/" + gm.golden;
    SPARQ_REQUIRE_SHARED(golden_path);
    const json golden = json::parse(read_text(golden_path));
    // "|logit - golden| <= A + B*|golden|": the tolerance is read from the file.
    const std::string tol = golden["tolerance"].get<std::string>();
    double a = 0, b = 0;
    REQUIRE(std::sscanf(tol.substr(tol.find("<=") + 2).c_str(), " %lf + %lf", &a, &b) == 2);
    INFO(gm.name << " tolerance " << a << " + " << b << "|g|");

    auto model = Model::load(dir, LoadOptions{WeightFormat::F32});
    const int V = model->config().vocab_size;
    for (const json& p : golden["prompts"]) {
      const auto ids = p["input_ids"].get<std::vector<int>>();
      INFO("prompt: " << p["prompt"].get<std::string>().substr(0, 60) << " (" << ids.size() << " tokens)");
      const std::vector<float> logits = prompt_logits(*model, ids, KVType::F32, 256);
      const auto last = p["last_logits"].get<std::vector<double>>();
      REQUIRE(int(last.size()) == V);
      double worst = 0;
      for (int i = 0; i < V; ++i) {
        const double g = last[i], got = logits[(ids.size() - 1) * V + i];
        worst = std::max(worst, std::abs(got - g) - (a + b * std::abs(g)));
      }
      CHECK(worst <= 0);
      // Top-5 logits at every position.
      const auto top_ids = p["top5_ids"].get<std::vector<std::vector<int>>>();
      const auto top_logits = p["top5_logits"].get<std::vector<std::vector<double>>>();
      for (size_t pos = 0; pos < top_ids.size(); ++pos)
        for (size_t j = 0; j < top_ids[pos].size(); ++j) {
          const double g = top_logits[pos][j], got = logits[pos * V + top_ids[pos][j]];
          INFO("position " << pos << " id " << top_ids[pos][j]);
          REQUIRE(std::abs(got - g) <= a + b * std::abs(g));
        }
      const auto want = p["greedy_ids"].get<std::vector<int>>();
      CHECK(greedy(*model, ids, int(want.size()), KVType::F32, AttentionSettings{}) == want);
      CHECK(model->tokenizer().decode(want) == p["greedy_text"].get<std::string>());
    }
  }
}

TEST_CASE("bf16 compute keeps the top-1 token of transformers", "[model][golden]") {
  for (const GoldenModel& gm : kModels) {
    const std::string golden_path = shared_dir() + "/golden/" + gm.golden;
    SPARQ_REQUIRE_SHARED(golden_path);
    const json golden = json::parse(read_text(golden_path));
    const std::string tol = golden["tolerance"].get<std::string>();
    if (tol.find("margin >") == std::string::npos) continue;  // no bf16 tolerance given for this model
    auto model = Model::load(shared_dir() + "/models/" + gm.name, LoadOptions{WeightFormat::BF16});
    const int V = model->config().vocab_size;
    // "top-1 id equal where the golden top-1 margin > M, max abs diff <= E"
    double margin = 0, max_abs = 0;
    REQUIRE(std::sscanf(tol.substr(tol.find("margin >")).c_str(), "margin > %lf", &margin) == 1);
    REQUIRE(std::sscanf(tol.substr(tol.find("max abs diff <=")).c_str(), "max abs diff <= %lf", &max_abs) == 1);
    for (const json& p : golden["prompts"]) {
      const auto ids = p["input_ids"].get<std::vector<int>>();
      const std::vector<float> logits = prompt_logits(*model, ids, KVType::BF16, 512);
      const auto top_ids = p["top5_ids"].get<std::vector<std::vector<int>>>();
      const auto top_logits = p["top5_logits"].get<std::vector<std::vector<double>>>();
      for (size_t pos = 0; pos < top_ids.size(); ++pos) {
        const float* row = &logits[pos * V];
        INFO(gm.name << " position " << pos);
        for (size_t j = 0; j < top_ids[pos].size(); ++j)
          REQUIRE(std::abs(row[top_ids[pos][j]] - top_logits[pos][j]) <= max_abs);
        if (top_logits[pos][0] - top_logits[pos][1] > margin)
          REQUIRE(argmax({row, size_t(V)}) == top_ids[pos][0]);
      }
    }
  }
}

TEST_CASE("an untied copy with bf16 and f32 tensors mixed gives the same bf16 logits", "[model]") {
  // The loader's other paths: a separate embedding table, f32 tensors, and
  // fused projections stacked from tensors of two dtypes. With bf16 compute
  // every weight is rounded to bf16 anyway, so the logits must not move.
  const std::string src = shared_dir() + "/models/stories260K-hf";
  SPARQ_REQUIRE_SHARED(src);
  const SafetensorsFile file(src + "/model.safetensors");
  std::vector<Raw> tensors;
  for (const TensorRef& t : file.tensors()) {
    std::vector<float> v = t.to_f32();
    if (t.name.find("k_proj") != std::string::npos || t.name.find("up_proj") != std::string::npos) {
      std::vector<uint16_t> b(v.size());
      for (size_t i = 0; i < v.size(); ++i) b[i] = f32_to_bf16(v[i]);
      tensors.push_back(Raw{t.name, "BF16", t.shape, bytes_of(b)});
    } else {
      tensors.push_back(Raw{t.name, "F32", t.shape, bytes_of(v)});
    }
    if (t.name == "model.embed_tokens.weight") tensors.push_back(Raw{"lm_head.weight", "F32", t.shape, bytes_of(v)});
  }
  TempDir dir;
  json config = json::parse(read_text(src + "/config.json"));
  REQUIRE(config["tie_word_embeddings"] == true);
  config["tie_word_embeddings"] = false;
  std::ofstream(dir.path / "config.json") << config.dump();
  std::ofstream(dir.path / "tokenizer.json", std::ios::binary) << read_text(src + "/tokenizer.json");
  std::ofstream(dir.path / "model.safetensors", std::ios::binary) << image(tensors);

  auto tied = Model::load(src, LoadOptions{WeightFormat::BF16});
  auto untied = Model::load(dir.path.string(), LoadOptions{WeightFormat::BF16});
  REQUIRE(untied->memory_bytes() > untied->weight_bytes());  // it holds its own embedding table
  REQUIRE(tied->memory_bytes() == tied->weight_bytes());
  const std::vector<int> ids = tied->tokenizer().encode("Once upon a time, a little fox", true);
  REQUIRE(ids.size() > 5);
  CHECK(prompt_logits(*untied, ids, KVType::F32, 4) == prompt_logits(*tied, ids, KVType::F32, 4));
}
