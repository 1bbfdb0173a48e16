// --profile and --trace on the small stories260K model: the profile's phases
// account for the total, and the trace holds an event per phase per forward
// pass, inside that pass. Timings themselves are not asserted.
#include <chrono>
#include <map>
#include <sstream>

#include <nlohmann/json.hpp>

#include "sparq/cli/profile.h"
#include "sparq/engine/trace.h"
#include "test_util.h"

using namespace sparq;

namespace {

struct Run {
  GenerateResult res;
  TraceLog trace;
  double total_s = 0;
};

// Greedy generation with SparQ small enough (r=2 of 8, k=16) to run at S > 16.
void generate_small(Run& run) {
  const auto model = Model::load(test::shared_dir() + "/models/stories260K-hf", LoadOptions{});
  const std::vector<int> prompt = model->tokenizer().encode("Once upon a time there was a little dog", true);
  GenerateOptions g;
  g.n_predict = 24;
  g.ctx = 64;
  g.batch = 4;  // several prefill passes
  g.attention = parse_attention_setting("sparq:r=2,k=16");
  g.sampling.temp = 0;
  g.ignore_eos = true;
  g.trace = &run.trace;
  const auto t0 = std::chrono::steady_clock::now();
  run.res = generate(*model, prompt, g, [](int) { return true; });
  run.total_s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

// The profile table's rows: phase name -> time in ms.
std::map<std::string, double> profile_rows(const std::string& table) {
  std::map<std::string, double> rows;
  std::istringstream in(table);
  for (std::string line; std::getline(in, line);) {
    if (line.rfind("| ", 0) != 0 || line.rfind("| phase ", 0) == 0) continue;
    const size_t a = line.find(" | ", 2);
    const size_t b = line.find(" | ", a + 3);
    rows[line.substr(2, a - 2)] = std::stod(line.substr(a + 3, b - a - 3));
  }
  return rows;
}

}  // namespace

TEST_CASE("profile: the phases add up to the total", "[profile]") {
  SPARQ_REQUIRE_SHARED(test::shared_dir() + "/models/stories260K-hf");
  Run run;
  generate_small(run);
  REQUIRE(run.res.steps.size() == 23);
  const std::string table =
      test::output_of([&](std::FILE* f) { print_profile(f, run.res, 0.0, run.total_s); });
  const std::map<std::string, double> rows = profile_rows(table);
  for (const char* phase : {"embedding", "qkv projection, rope, KV store", "attention", "output projection", "MLP",
                            "logits", "sampling", "tokenizer", "other (loop, output, bookkeeping)", "total"})
    CHECK(rows.count(phase) == 1);
  double top = 0, parts = 0;
  int n_parts = 0;
  for (const auto& [name, ms] : rows) {
    if (name.rfind("· ", 0) == 0) {
      parts += ms;
      ++n_parts;
    } else if (name != "total") {
      top += ms;
    }
  }
  CHECK(n_parts == 5);  // SparQ ran: its four parts and the rest of the attention
  CHECK(rows.at("· sparq step 1 (with component selection)") > 0);
  // Rows print with 3 decimals: allow a rounding per row.
  CHECK(top == Approx(rows.at("total")).margin(0.001 * 12));
  CHECK(parts == Approx(rows.at("attention")).margin(0.001 * 6));
  // The measured phases are disjoint parts of the total, so the rest is not negative.
  CHECK(rows.at("other (loop, output, bookkeeping)") >= -0.001);
  CHECK(rows.at("· dense and prefill attention, setup") >= -0.001);
}

TEST_CASE("trace: an event per phase per forward pass, inside it", "[profile]") {
  SPARQ_REQUIRE_SHARED(test::shared_dir() + "/models/stories260K-hf");
  Run run;
  generate_small(run);
  const nlohmann::json j = nlohmann::json::parse(run.trace.to_json().dump());  // valid JSON text
  const auto& ev = j["traceEvents"];
  std::vector<std::pair<double, double>> passes;
  std::map<std::string, int> count;
  for (const auto& e : ev) {
    if (e["ph"] != "X") continue;
    ++count[e["name"]];
    CHECK(e["dur"].get<double>() >= 0);
    if (e["cat"] == "forward") passes.emplace_back(e["ts"].get<double>(), e["ts"].get<double>() + e["dur"].get<double>());
  }
  const int prefill = count["prefill"], decode = count["decode"];
  CHECK(prefill == (run.res.n_prompt + 3) / 4);  // passes of 4 prompt tokens
  CHECK(decode == 23);
  for (const char* phase : {"embedding", "qkv projection, rope, KV store", "attention", "output projection", "MLP",
                            "logits"})
    CHECK(count[phase] == prefill + decode);
  CHECK(count["sampling"] == 24);
  CHECK(count["sparq step 1 (with component selection)"] > 0);
  CHECK(count["sparq step 3"] == count["sparq step 1 (with component selection)"]);
  for (const auto& e : ev) {
    if (e["ph"] != "X" || (e["cat"] != "phase" && e["cat"] != "attention")) continue;
    const double t0 = e["ts"], t1 = t0 + e["dur"].get<double>();
    bool inside = false;
    for (const auto& [a, b] : passes) inside = inside || (t0 >= a - 1e-3 && t1 <= b + 1e-3);
    CHECK(inside);
  }
}
