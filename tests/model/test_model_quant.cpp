// Quantized weights (--dtype q8_0, q4_0) on the shared models: how far their
// logits move from bf16's on the golden prompts, that they keep transformers'
// top-1 where it is clear, their size, that a row's logits do not depend on
// the batch, and the refusal of a model whose rows are not whole blocks.
#include <cmath>

#include <nlohmann/json.hpp>

#include "sparq/engine/sampler.h"
#include "sparq/model/model.h"
#include "model/prompt_logits.h"
#include "test_util.h"

using namespace sparq;
using namespace sparq::test;
using nlohmann::json;

namespace {

// KL(softmax(p) || softmax(q)) of one row of logits.
double kl(const float* p, const float* q, int V) {
  double mp = p[0], mq = q[0];
  for (int i = 0; i < V; ++i) mp = std::max(mp, double(p[i])), mq = std::max(mq, double(q[i]));
  double zp = 0, zq = 0;
  for (int i = 0; i < V; ++i) zp += std::exp(p[i] - mp), zq += std::exp(q[i] - mq);
  double s = 0;
  for (int i = 0; i < V; ++i) {
    const double lp = p[i] - mp - std::log(zp), lq = q[i] - mq - std::log(zq);
    s += std::exp(lp) * (lp - lq);
  }
  return s;
}

}  // namespace

TEST_CASE("q8_0 and q4_0 logits stay near bf16's and keep transformers' clear top-1", "[model][quant]") {
  struct Case {
    WeightFormat f;
    double mean_kl;    // bound on the mean KL from bf16 over the golden prompts' positions
    double top1_share;  // share of clear positions (golden margin > 1) where top-1 must hold
  };
  for (const char* name : {"llama-27m-prose", "llama-27m-bpe8k"}) {
    const std::string dir = shared_dir() + "/models/" + name;
    const std::string golden_path = shared_dir() + "/golden/logits_" + std::string(name) + ".json";
    SPARQ_REQUIRE_SHARED(golden_path);
    const json golden = json::parse(read_text(golden_path));
    auto bf16 = Model::load(dir, LoadOptions{WeightFormat::BF16});
    const int V = bf16->config().vocab_size;
    for (Case c : {Case{WeightFormat::Q8_0, 0.002, 1.0}, Case{WeightFormat::Q4_0, 0.05, 0.9}}) {
      auto q = Model::load(dir, LoadOptions{c.f});
      INFO(name << " " << weight_format_name(c.f));
      // Layers at 34 or 18 bytes per 32 weights, the table at q8_0's 34.
      CHECK(q->memory_bytes() < bf16->memory_bytes() * (c.f == WeightFormat::Q8_0 ? 0.54 : 0.33));
      double kl_sum = 0;
      int positions = 0, clear = 0, kept = 0;
      for (const json& p : golden["prompts"]) {
        const auto ids = p["input_ids"].get<std::vector<int>>();
        if (ids.size() > 600) continue;  // the long prompts add time, not cases
        const std::vector<float> want = prompt_logits(*bf16, ids, KVType::BF16, 512),
                               got = prompt_logits(*q, ids, KVType::BF16, 512);
        const auto top_ids = p["top5_ids"].get<std::vector<std::vector<int>>>();
        const auto top_logits = p["top5_logits"].get<std::vector<std::vector<double>>>();
        for (size_t pos = 0; pos < ids.size(); ++pos) {
          kl_sum += kl(&want[pos * V], &got[pos * V], V);
          ++positions;
          if (top_logits[pos][0] - top_logits[pos][1] <= 1.0) continue;
          ++clear;
          kept += argmax({&got[pos * V], size_t(V)}) == top_ids[pos][0];
        }
      }
      INFO("mean KL " << kl_sum / positions << ", top-1 kept at " << kept << " of " << clear << " clear positions");
      REQUIRE(positions > 0);
      CHECK(kl_sum / positions <= c.mean_kl);
      CHECK(kept >= c.top1_share * clear);
    }
  }
}

TEST_CASE("a quantized model's logits do not depend on the prompt batch", "[model][quant]") {
  const std::string dir = shared_dir() + "/models/llama-27m-prose";
  SPARQ_REQUIRE_SHARED(dir);
  auto m = Model::load(dir, LoadOptions{WeightFormat::Q4_0});
  const std::vector<int> ids = m->tokenizer().encode("Once upon a time, a little fox met a quiet owl by the river.", true);
  const std::vector<float> all = prompt_logits(*m, ids, KVType::BF16, 512),
                           few = prompt_logits(*m, ids, KVType::BF16, 3);
  REQUIRE(all == few);
}

TEST_CASE("quantizing a model whose rows are not whole blocks fails in one line", "[model][quant]") {
  const std::string dir = shared_dir() + "/models/stories260K-hf";  // intermediate_size 172
  SPARQ_REQUIRE_SHARED(dir);
  CHECK_THROWS_WITH(Model::load(dir, LoadOptions{WeightFormat::Q4_0}),
                    "--dtype q4_0: intermediate_size = 172 is not a multiple of the 32-weight block");
}
