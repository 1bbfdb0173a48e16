// The model-level bench (`sparq-run bench`): its rows, depths, bytes and
// output formats on the small stories260K model. Timings are not asserted.
#include <algorithm>
#include <cctype>

#include <nlohmann/json.hpp>

#include "sparq/bench/bench_model.h"
#include "sparq/bench/bench_table.h"
#include "sparq/util/build_info.h"
#include "sparq/util/cpu.h"
#include "sparq/engine/engine.h"
#include "sparq/model/model.h"
#include "sparq/model/shapes.h"
#include "test_util.h"

using namespace sparq;

namespace {

std::string small_model() { return test::shared_dir() + "/models/stories260K-hf"; }

ModelBenchOptions small_bench() {
  ModelBenchOptions o;
  o.model = small_model();
  o.prompt_lens = {16};
  o.gen_lens = {4};
  o.depths = {0, 40};
  o.settings = {"dense", "sparq:r=2,k=16"};
  o.threads = {1};
  o.parallel = {1, 2};
  o.reps = 1;
  o.bandwidth_gbs = 50;  // not measured: the test stays fast
  o.progress = nullptr;
  return o;
}

std::string bench_output(const ModelBenchOptions& o) {
  return test::output_of([&](std::FILE* f) { CHECK(run_model_bench(o, f) == 0); });
}

}  // namespace

TEST_CASE("model bench JSON rows: tests, depths and bytes per token", "[bench]") {
  SPARQ_REQUIRE_SHARED(small_model());
  ModelBenchOptions o = small_bench();
  o.format = "json";
  const nlohmann::json j = nlohmann::json::parse(bench_output(o));
  CHECK(j["bandwidth_gbs"] == 50.0);
  CHECK(j["tokens"].get<std::string>().find("pseudo-random") != std::string::npos);
  CHECK(j["peak_memory_bytes"].get<double>() > 0);
  // The facts that tell runs apart: the build, the CPU, the kernels, the time.
  CHECK(j["build_commit"] == kBuildCommit);
  CHECK(j["cpu"] == cpu_model_name());
  CHECK(j["kernels"] == cpu_tier_name(cpu_tier()));
  const std::string when = j["test_time"], form = "dddd-dd-ddTdd:dd:ddZ";  // d: a digit
  REQUIRE(when.size() == form.size());
  for (size_t i = 0; i < form.size(); ++i) CHECK((form[i] == 'd' ? std::isdigit(static_cast<unsigned char>(when[i])) != 0 : when[i] == form[i]));
  const auto model = Model::load(small_model(), LoadOptions{});
  const ModelConfig& c = model->config();
  CHECK(j["weight_bytes"] == model->weight_bytes());
  // Per depth and B: one pp row, then a tg row per setting.
  REQUIRE(j["rows"].size() == 2 * 2 * 3);
  std::vector<std::string> tests;
  for (const auto& r : j["rows"]) {
    const std::string test = r["test"];
    tests.push_back(test + " " + r["attention"].get<std::string>() + " B" + std::to_string(r["parallel"].get<int>()));
    const int d = r["depth"], B = r["parallel"];
    CHECK(r["tps_mean"].get<double>() > 0);
    const std::vector<double> samples = r["samples_tps"];
    REQUIRE(int(samples.size()) == o.reps);
    CHECK(mean_sd(samples).mean == Approx(r["tps_mean"].get<double>()));
    CHECK(r["pct_bandwidth"].get<double>() == Approx(100 * r["gbs"].get<double>() / 50));
    CHECK(r["ms_per_token"].get<double>() == Approx(1e3 / r["tps_mean"].get<double>()));
    if (test.rfind("pp", 0) == 0) {
      CHECK(r["n_prompt"] == 16);
      CHECK(r["kv_bytes_per_token"].is_null());
      continue;
    }
    CHECK(r["n_gen"] == 4);
    // One forward pass per step reads the weights once for all B sequences.
    CHECK(r["weight_bytes_per_token"].get<double>() == Approx(double(model->weight_bytes()) / B));
    // Decode steps attend over d+1 .. d+4 positions.
    double dense = 0;
    for (int S = d + 1; S <= d + 4; ++S) dense += double(step_dense_kv_bytes(c, S, KVType::BF16));
    CHECK(r["dense_kv_bytes_per_token"].get<double>() == Approx(dense / 4));
    // SparQ with k=16 falls back to dense over at most 4 positions, not at depth 40.
    if (r["attention"] == "dense" || d == 0) CHECK(r["kv_bytes_per_token"].get<double>() == Approx(dense / 4));
    else CHECK(r["kv_bytes_per_token"].get<double>() < dense / 4);
  }
  const std::vector<std::string> want = {
      "pp16 dense B1", "tg4 dense B1", "tg4 sparq:r=2,k=16 B1", "pp16 dense B2", "tg4 dense B2",
      "tg4 sparq:r=2,k=16 B2", "pp16 @ d40 dense B1", "tg4 @ d40 dense B1", "tg4 @ d40 sparq:r=2,k=16 B1",
      "pp16 @ d40 dense B2", "tg4 @ d40 dense B2", "tg4 @ d40 sparq:r=2,k=16 B2"};
  CHECK(tests == want);
}

TEST_CASE("model bench: a depth's tests take turns in each repetition, in alternating order", "[bench]") {
  SPARQ_REQUIRE_SHARED(small_model());
  ModelBenchOptions o = small_bench();
  o.depths = {8};
  o.reps = 3;
  std::FILE* log = std::tmpfile();
  REQUIRE(log);
  o.progress = log;
  (void)bench_output(o);
  const std::string progress = test::read_back(log);
  std::fclose(log);
  // One line per test and repetition: "bench: rep R/3 TEST SETTING t=1 B=b ...: x t/s".
  std::vector<std::string> order;
  std::istringstream lines(progress);
  for (std::string line; std::getline(lines, line);)
    if (line.rfind("bench: rep ", 0) == 0) order.push_back(line.substr(0, line.find(" bf16 bf16:")));
  const std::vector<std::string> tests = {"pp16 @ d8 dense t=1 B=1", "tg4 @ d8 dense t=1 B=1",
                                          "tg4 @ d8 sparq:r=2,k=16 t=1 B=1", "pp16 @ d8 dense t=1 B=2",
                                          "tg4 @ d8 dense t=1 B=2", "tg4 @ d8 sparq:r=2,k=16 t=1 B=2"};
  std::vector<std::string> want;
  for (int rep = 1; rep <= 3; ++rep)
    for (size_t j = 0; j < tests.size(); ++j)
      want.push_back(fmt::format("bench: rep {}/3 {}", rep, tests[rep % 2 == 1 ? j : tests.size() - 1 - j]));
  CHECK(order == want);
}

TEST_CASE("model bench CSV, JSONL and markdown", "[bench]") {
  SPARQ_REQUIRE_SHARED(small_model());
  ModelBenchOptions o = small_bench();
  o.depths = {8};
  o.parallel = {1};
  o.format = "csv";
  const std::string csv = bench_output(o);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 1 + 3);
  CHECK(csv.rfind("test,n_prompt,n_gen,depth,attention,threads,parallel,weights,kv_type,tps_mean,tps_sd,", 0) == 0);
  CHECK(csv.find("\n\"tg4 @ d8\",0,4,8,\"sparq:r=2,k=16\",1,1,\"bf16\",") != std::string::npos);
  CHECK(csv.find(",\"[") != std::string::npos);  // samples_tps: a quoted JSON array (its commas inside quotes)

  o.format = "jsonl";
  const std::string jsonl = bench_output(o);
  std::istringstream lines(jsonl);
  int n = 0;
  for (std::string line; std::getline(lines, line); ++n) {
    const auto j = nlohmann::json::parse(line);
    CHECK(j["bandwidth_gbs"] == 50.0);
    CHECK(j["depth"] == 8);
  }
  CHECK(n == 3);

  o.format = "md";
  o.text = "Once upon a time there was a little dog. ";
  o.text_name = "story.txt";
  const std::string md = bench_output(o);
  CHECK(md.find("read bandwidth 50.0 GB/s") != std::string::npos);
  CHECK(md.find(fmt::format("sparq-run {} on {} (", kBuildCommit, cpu_model_name())) != std::string::npos);
  CHECK(md.find("tokens: the tokens of story.txt (") != std::string::npos);
  CHECK(md.find(", repeated)") != std::string::npos);  // 8 + 16 + 1 tokens needed
  CHECK(md.find("| test | attention | threads | B | weights | KV | t/s | ms/token |") != std::string::npos);
  CHECK(md.find("| pp16 @ d8 | dense | 1 | 1 | bf16 | ") != std::string::npos);
  CHECK(md.find("peak memory ") != std::string::npos);
}

TEST_CASE("model bench rejects bad options", "[bench]") {
  ModelBenchOptions o = small_bench();
  o.format = "xml";
  CHECK_THROWS_WITH(run_model_bench(o), Catch::Contains("format must be md, csv, json or jsonl"));
  o = small_bench();
  o.reps = 0;
  CHECK_THROWS_WITH(run_model_bench(o), Catch::Contains("repetitions must be >= 1"));
  o = small_bench();
  o.parallel = {0};
  CHECK_THROWS_WITH(run_model_bench(o), Catch::Contains("parallel sequences (--parallel) must be >= 1"));
  o = small_bench();
  o.prompt_lens = {0};
  o.gen_lens = {0};
  CHECK_THROWS_WITH(run_model_bench(o), Catch::Contains("nothing to time"));
  o = small_bench();
  o.depths = {-1};
  CHECK_THROWS_WITH(run_model_bench(o), Catch::Contains("depths (-d) must be >= 0"));
  o = small_bench();
  o.settings = {"fast"};
  CHECK_THROWS_WITH(run_model_bench(o), Catch::Contains("bad attention setting 'fast'"));
}

TEST_CASE("mean and sample standard deviation", "[bench]") {
  const MeanSd m = mean_sd({1, 2, 3, 4});
  CHECK(m.mean == 2.5);
  CHECK(m.sd == Approx(std::sqrt(5.0 / 3.0)));
  CHECK(mean_sd({7}).sd == 0);
}

TEST_CASE("model bench on a shape: random weights of a given configuration, random keys and values at depth", "[bench]") {
  ModelBenchOptions o = small_bench();
  o.model.clear();
  o.shape = "llama-3.2-1b:num_hidden_layers=2,hidden_size=64,intermediate_size=96,num_attention_heads=4,"
            "num_key_value_heads=2,head_dim=16,vocab_size=300";
  o.format = "json";
  const nlohmann::json j = nlohmann::json::parse(bench_output(o));
  CHECK(j["model"] == o.shape);
  // pp and tg rows at both depths, for both settings and batch sizes, as with a real model.
  REQUIRE(j["rows"].size() == 2 * 2 * (1 + 2));
  const ModelConfig c = ModelConfig::from_json_text(shape_config_json(o.shape));
  CHECK(c.n_layers == 2);
  CHECK(c.vocab_size == 300);
  CHECK(c.bos_id == -1);  // 128000 does not fit a 300-token vocabulary
  for (const auto& r : j["rows"]) {
    INFO(r.dump());
    CHECK(r["tps_mean"].get<double>() > 0);
    if (r["n_gen"] == 0) continue;
    // Decode at depth d reads the keys and values stored there (d + 1 .. d + 4 positions).
    const int d = r["depth"];
    CHECK(r["dense_kv_bytes_per_token"].get<double>() >=
          double(c.n_layers) * c.n_kv_heads * c.head_dim * 2 * 2 * (d + 1));
  }
  // -f needs a tokenizer, and a shape comes without one.
  o.text = "some text";
  CHECK_THROWS_WITH(run_model_bench(o, stdout), Catch::Contains("no tokenizer"));
}

TEST_CASE("model bench on a shape: unknown names, bad overrides and shapes too big for memory are refused", "[bench][errors]") {
  ModelBenchOptions o = small_bench();
  o.model.clear();
  auto error = [&](const std::string& shape) {
    o.shape = shape;
    return test::error_of([&] { run_model_bench(o, stdout); });
  };
  CHECK_THAT(error("llama-9"), Catch::Contains("unknown shape") && Catch::Contains("llama-3.1-8b"));
  CHECK_THAT(error("llama-3.2-1b:hidden"), Catch::Contains("is not key=value"));
  CHECK_THAT(error("llama-3.2-1b:no_such_field=1"), Catch::Contains("has no field no_such_field"));
  CHECK_THAT(error("llama-3.2-1b:hidden_size=[1"), Catch::Contains("is not JSON"));
  CHECK_THAT(error("/no/such/config.json"), Catch::Contains("cannot read"));
  o.depths = {1 << 24};
  CHECK_THAT(error("llama-3.1-8b"), Catch::Contains("GiB available"));
  o.model = small_model();
  CHECK_THAT(error("llama-3.2-1b"), Catch::Contains("-m/--model or a shape"));
}
