// The matmul bench (`sparq-run bench --kernel matmul`): its rows and formats.
// Timings are not asserted, only that each row's figures agree with each other.
#include <nlohmann/json.hpp>

#include "sparq/bench/bench_matmul.h"
#include "sparq/util/build_info.h"
#include "test_util.h"

using namespace sparq;

namespace {

MatmulBenchOptions quick() {
  MatmulBenchOptions o;
  o.reps = 1;
  o.working_set_bytes = size_t(4) << 20;  // decode rows still cycle through copies of the small shapes
  o.large = false;                        // the same code as the model's shapes, 45M parameters to fill
  o.progress = false;
  return o;
}

std::string bench_output(const MatmulBenchOptions& o) {
  return test::output_of([&](std::FILE* f) { CHECK(run_matmul_bench(o, f) == 0); });
}

}  // namespace

TEST_CASE("matmul bench: JSON rows per shape, M and type, with the same-run read", "[bench]") {
  MatmulBenchOptions o = quick();
  o.format = "json";
  const nlohmann::json j = nlohmann::json::parse(bench_output(o));
  CHECK(j["kernel"] == "matmul");
  CHECK(j["build_commit"] == kBuildCommit);
  // The 5 model shapes at M = 1, 4, 8, 16 through oneDNN for both types and
  // through matvec for bf16, and at 128 and 512 through oneDNN.
  REQUIRE(j["rows"].size() == (4 * 3 + 2 * 2) * 5);
  int matvec_rows = 0;
  for (const auto& r : j["rows"]) {
    INFO(r.dump());
    const int N = r["N"], K = r["K"], M = r["M"];
    if (r["path"] == "matvec") {
      ++matvec_rows;
      CHECK(r["dtype"] == "bf16");
      CHECK(M <= 16);
    } else {
      CHECK(r["path"] == "oneDNN");
    }
    const size_t bytes = size_t(N) * K * (r["dtype"] == "bf16" ? 2 : 4);
    const double us = r["time_us"];
    REQUIRE(us > 0);
    // The weights' bytes in that time (oneDNN's layout adds no more than padding), and the flops.
    CHECK(r["gbs"].get<double>() == Approx(bytes / us * 1e-3).epsilon(0.05));
    CHECK(r["gflops"].get<double>() == Approx(2.0 * M * N * K / us * 1e-3));
    const size_t copies = r["copies"];
    CHECK(copies == (M <= 16 ? std::max<size_t>(1, o.working_set_bytes / bytes) : 1));
    // Only rows that cycle through copies are timed against a plain read.
    CHECK(r["read_gbs"].is_null() == (copies == 1));
    if (copies > 1) CHECK(r["pct_read"].get<double>() == Approx(100 * r["gbs"].get<double>() / r["read_gbs"].get<double>()));
  }
  CHECK(matvec_rows == 4 * 5);
}

TEST_CASE("matmul bench: markdown and CSV, and bad options", "[bench]") {
  MatmulBenchOptions o = quick();
  const std::string md = bench_output(o);
  CHECK(md.find(fmt::format("sparq-run {} on ", kBuildCommit)) == 0);
  CHECK(md.find("| shape N x K | M | path | dtype | copies | time (us) | GB/s | read GB/s | % of read | GFLOP/s |") !=
        std::string::npos);
  CHECK(md.find("| qkv 768 x 512 | 1 | matvec | bf16 | ") != std::string::npos);
  CHECK(md.find("| qkv 768 x 512 | 1 | oneDNN | bf16 | ") != std::string::npos);
  CHECK(md.find("| lm_head 8192 x 512 | 512 | oneDNN | f32 | 1 | ") != std::string::npos);
  CHECK(md.find("weight conversion at construction: ") != std::string::npos);
  o.format = "csv";
  const std::string csv = bench_output(o);
  CHECK(csv.rfind("shape,N,K,M,path,dtype,copies,time_us,gbs,read_gbs,pct_read,gflops\n", 0) == 0);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 1 + (4 * 3 + 2 * 2) * 5);

  o.format = "xml";
  CHECK_THROWS_WITH(run_matmul_bench(o), Catch::Contains("format must be md, csv, json or jsonl"));
  o = quick();
  o.reps = 0;
  CHECK_THROWS_WITH(run_matmul_bench(o), Catch::Contains("--reps must be at least 1"));
}
