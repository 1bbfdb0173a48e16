// Continuous batching and the evaluation runs on the shared model: results do
// not depend on the batch, scores equal step-by-step log-probabilities, bad
// lines are reported and skipped.
#include <cmath>
#include <algorithm>
#include <filesystem>
#include <map>

#include <nlohmann/json.hpp>

#include "../../src/eval/eval_stats.h"
#include "sparq/engine/engine.h"
#include "sparq/eval/eval.h"
#include "test_util.h"

using namespace sparq;
using namespace sparq::test;
using nlohmann::json;

namespace {

std::string model_dir() { return shared_dir() + "/models/llama-27m-prose"; }

// The golden prompts, the long one included (SparQ is active there).
std::vector<std::vector<int>> golden_prompts() {
  const json g = json::parse(read_text(shared_dir() + "/golden/logits_llama-27m-prose.json"));
  std::vector<std::vector<int>> out;
  for (const json& p : g["prompts"]) out.push_back(p["input_ids"].get<std::vector<int>>());
  return out;
}

std::vector<std::vector<int>> run_greedy(Model& m, const std::vector<std::vector<int>>& prompts,
                                         const AttentionSettings& a, int parallel) {
  std::vector<Job> jobs;
  for (const auto& p : prompts) {
    Job j;
    j.prefill = p;
    j.n_sample = 12;
    j.variants = {&a};
    j.sampling.temp = 0;
    j.stop_at_eos = false;
    jobs.push_back(j);
  }
  std::vector<std::vector<int>> out(prompts.size());
  EngineHooks h;
  h.on_done = [&](size_t job, JobResult&& r) { out[job] = r.variants[0].sampled; };
  Engine e(m, parallel, 1100, KVType::BF16);
  e.run(jobs, h, 300);
  return out;
}

}  // namespace

TEST_CASE("engine: greedy text does not depend on the batch", "[engine]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  auto m = Model::load(model_dir(), LoadOptions{});
  const auto prompts = golden_prompts();
  const AttentionSettings sparq = parse_attention_setting("sparq:8");
  const auto batched = run_greedy(*m, prompts, sparq, 4);
  for (size_t i = 0; i < prompts.size(); ++i) {
    INFO("prompt " << i);
    CHECK(run_greedy(*m, {prompts[i]}, sparq, 1)[0] == batched[i]);
  }
}

TEST_CASE("engine: forced tokens give the step-by-step log-probabilities", "[engine]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  auto m = Model::load(model_dir(), LoadOptions{});
  const auto prompts = golden_prompts();
  const std::vector<int>& prompt = prompts[1];
  const std::vector<int> ref = {265, 3774, 272, 297, 265, 4788};
  const size_t V = size_t(m->config().vocab_size);

  // One sequence by hand: prefill, then a decode step per token.
  const AttentionSettings dense{};
  KVCache cache(m->kv_shape(256, KVType::BF16));
  std::vector<Row> rows;
  for (size_t i = 0; i + 1 < prompt.size(); ++i) rows.push_back(Row{prompt[i], int(i), &cache, nullptr, false});
  std::vector<float> logits(V);
  m->forward(rows, logits.data());
  double want = 0;
  std::vector<int> feed = {prompt.back()};
  feed.insert(feed.end(), ref.begin(), ref.end() - 1);
  for (size_t i = 0; i < feed.size(); ++i) {
    const Row r{feed[i], int(prompt.size() - 1 + i), &cache, &dense, true};
    m->forward({&r, 1}, logits.data());
    want += log_prob(logits.data(), V, ref[i]);
  }

  Job j;
  j.prefill.assign(prompt.begin(), prompt.end() - 1);
  j.forced = feed;
  j.variants = {&dense, &dense};
  std::vector<double> got(2, 0.0);
  int calls = 0;
  EngineHooks h;
  h.on_forced = [&](size_t, int index, std::span<const float* const> l) {
    ++calls;
    for (size_t v = 0; v < 2; ++v) got[v] += log_prob(l[v], V, ref[size_t(index)]);
  };
  Engine e(*m, 3, 256, KVType::BF16);
  e.run({&j, 1}, h);
  CHECK(calls == int(ref.size()));
  CHECK(got[0] == Approx(want).epsilon(1e-6));
  CHECK(got[1] == got[0]);
}

TEST_CASE("engine: variants on different KV cache types each get their own type's prompt and steps", "[engine][kv]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  auto m = Model::load(model_dir(), LoadOptions{});
  const auto prompts = golden_prompts();
  const std::vector<int>& prompt = *std::ranges::max_element(prompts, {}, &std::vector<int>::size);
  const size_t V = size_t(m->config().vocab_size);
  const AttentionSettings dense{};
  const AttentionSettings sparq = parse_attention_setting("sparq:8");
  Job j;
  j.prefill.assign(prompt.begin(), prompt.end() - 1);
  j.forced = {prompt.back(), 265, 3774, 272, 297};
  // Sum of each variant's log-probabilities of the next forced token. Steps
  // of at most 6 rows keep every product on the matrix-vector kernels, whose
  // rows do not depend on the rows beside them (oneDNN's f32 matmul at the
  // avx2 tier does, in the last bits, and bf16 and q8_0 rounding make that
  // visible), so the two leads sharing a step give what each gives alone.
  auto score = [&](Engine& e, const Job& job) {
    std::vector<double> got(job.variants.size(), 0.0);
    EngineHooks h;
    h.on_forced = [&](size_t, int index, std::span<const float* const> l) {
      if (size_t(index) + 1 >= job.forced.size()) return;
      for (size_t v = 0; v < l.size(); ++v) got[v] += log_prob(l[v], V, job.forced[size_t(index) + 1]);
    };
    e.run({&job, 1}, h, 6);
    return got;
  };
  std::map<KVType, std::vector<double>> alone;
  for (const KVType t : {KVType::BF16, KVType::Q8_0}) {
    Engine e(*m, 2, 1100, t);
    j.variants = {&dense, &sparq};
    alone[t] = score(e, j);
  }
  const std::vector<CachePool> pools{{KVType::Q8_0, 2}, {KVType::BF16, 3}};
  Engine mixed(*m, 1100, pools);
  CHECK(mixed.parallel() == 5);
  j.variants = {&dense, &dense, &sparq, &sparq};
  j.kv_types = {KVType::Q8_0, KVType::BF16, KVType::BF16, KVType::Q8_0};
  const std::vector<double> got = score(mixed, j);
  CHECK(got[0] == Approx(alone[KVType::Q8_0][0]).epsilon(1e-6));
  CHECK(got[1] == Approx(alone[KVType::BF16][0]).epsilon(1e-6));
  CHECK(got[2] == Approx(alone[KVType::BF16][1]).epsilon(1e-6));
  CHECK(got[3] == Approx(alone[KVType::Q8_0][1]).epsilon(1e-6));
  CHECK(got[0] != got[1]);  // the types really differ
  CHECK(got[2] != got[1]);  // and SparQ is active
  // A job asking for more caches of a type than the engine has is refused.
  j.kv_types = {KVType::Q8_0, KVType::Q8_0, KVType::Q8_0, KVType::BF16};
  CHECK_THROWS_WITH(mixed.run({&j, 1}, {}), Catch::Contains("q8_0"));
  j.kv_types = {KVType::Q8_0};
  CHECK_THROWS_WITH(mixed.run({&j, 1}, {}), Catch::Contains("KV cache types"));
}

TEST_CASE("engine: jobs that cannot run are refused clearly", "[engine][errors]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  auto m = Model::load(model_dir(), LoadOptions{});
  const AttentionSettings dense{};
  Engine e(*m, 1, 16, KVType::BF16);
  Job j;
  j.prefill = std::vector<int>(20, 100);
  j.n_sample = 1;
  j.variants = {&dense};
  CHECK_THROWS_WITH(e.run({&j, 1}, {}), Catch::Contains("context size"));
  j.prefill.resize(4);
  j.variants = {&dense, &dense};
  CHECK_THROWS_WITH(e.run({&j, 1}, {}), Catch::Contains("parallel"));
  j.variants = {&dense};
  j.n_sample = 0;
  CHECK_THROWS_WITH(e.run({&j, 1}, {}), Catch::Contains("nothing to predict"));
}

TEST_CASE("batch file: malformed lines are reported by number, the rest run", "[engine][eval]") {
  SPARQ_REQUIRE_SHARED(model_dir());
  // f32 throughout, so that dense and SparQ at r = d, k >= S differ only by summation order.
  auto m = Model::load(model_dir(), LoadOptions{WeightFormat::F32});
  const auto dir = std::filesystem::temp_directory_path() / "sparq-batch-test";
  std::filesystem::create_directories(dir);
  const std::string in = (dir / "in.jsonl").string(), out = (dir / "out.jsonl").string();
  {
    std::ofstream f(in);
    f << R"({"id": "a", "prompt": "Once upon a time", "n_predict": 4})" << '\n'
      << "{not json\n"
      << R"({"id": "b", "task": "score", "prompt": "In the beginning", "reference": " God created"})" << '\n'
      << R"({"id": "c", "task": "juggle", "prompt": "x"})" << '\n'
      << R"({"id": "d", "task": "match", "prompt": "The pass key is", "reference": "12345", "n_predict": 3})"
      << '\n';
  }
  EvalOptions opt;
  opt.setting_names = {"dense", "sparq:r=64,k=100000,nofallback"};
  for (const auto& n : opt.setting_names) opt.settings.push_back(parse_attention_setting(n));
  opt.ctx = 64;
  opt.kv_type = KVType::F32;
  opt.parallel = 2;
  opt.sampling.temp = 0;
  opt.out_file = out;
  opt.quiet = true;
  CHECK(run_batch_file(*m, in, opt) == 2);
  std::map<std::string, std::vector<json>> by_id;
  std::vector<size_t> error_lines;
  std::ifstream f(out);
  for (std::string line; std::getline(f, line);) {
    const json j = json::parse(line);
    if (j.contains("error")) error_lines.push_back(j["line"].get<size_t>());
    else by_id[j["id"].get<std::string>()].push_back(j);
  }
  std::sort(error_lines.begin(), error_lines.end());
  CHECK(error_lines == std::vector<size_t>{2, 4});
  REQUIRE(by_id.size() == 3);
  for (const auto& [id, results] : by_id) {
    INFO("id " << id);
    REQUIRE(results.size() == 2);
    // SparQ with r = d and k >= S (no dense fallback) gives dense's results.
    CHECK(results[0].value("text", "") == results[1].value("text", ""));
    if (id == "b") CHECK(results[0]["logprob"].get<double>() == Approx(results[1]["logprob"].get<double>()).epsilon(1e-4));
  }
}

TEST_CASE("eval metrics: repetition characters and answer matching", "[eval]") {
  CHECK(repeat_chars_matched(" of the compiled file", " of the compiled file; it") == 21);
  CHECK(repeat_chars_matched("abc", "abd") == 2);
  CHECK(repeat_chars_matched("", "abc") == 0);
  CHECK(repeat_chars_matched("caf\xc3\xa9!", "caf\xc3\xa9?") == 4);  // é counts once
  CHECK(repeat_chars_matched("caf\xc3\xa9", "caf\xc3\xa8") == 3);    // a split character does not count
  CHECK(answer_matches(" 67741. The", "67741"));
  CHECK(answer_matches("67741\n", " 67741 "));
  CHECK_FALSE(answer_matches(" 677412", "67741"));
  CHECK_FALSE(answer_matches(" now 67741", "67741"));
  CHECK(match_answer("  42, then") == "42");
}

TEST_CASE("the default context is the trained one, halved until its KV cache fits", "[engine]") {
  const KVShape at8k{8, 1, 128, 8192, KVType::BF16};  // llama-27m-bpe8k's
  const size_t need = KVCache::bytes_needed(at8k);
  CHECK(default_context(at8k, 0) == 8192);                  // memory unknown
  CHECK(default_context(at8k, need * 2) == 8192);           // fits with room (80% of it is the budget)
  CHECK(default_context(at8k, need) == 4096);               // 80% of exactly its size does not fit
  CHECK(default_context(at8k, need / 3) == 2048);
  KVShape fits = at8k;
  fits.capacity = default_context(at8k, need / 3);
  CHECK_NOTHROW(check_kv_fits(fits, 1, need / 3));
}
