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
  // The 5 model shapes at M = 1, 4, 8, 16 through oneDNN for bf16 and f32
  // and through matvec for bf16, q8_0 and q4_0; at 128 and 512 through
  // oneDNN (bf16, f32), and matvec and oneDNN tiles (q8_0, q4_0).
  REQUIRE(j["rows"].size() == (4 * 5 + 2 * 6) * 5);
  int matvec_rows = 0;
  for (const auto& r : j["rows"]) {
    INFO(r.dump());
    const int N = r["N"], K = r["K"], M = r["M"];
    const std::string dtype = r["dtype"];
    const bool quantized = dtype == "q8_0" || dtype == "q4_0";
    if (r["path"] == "matvec") {
      ++matvec_rows;
      CHECK((dtype == "bf16" || quantized));
      CHECK((M <= 16 || quantized));
    } else {
      CHECK(r["path"] == (quantized ? "oneDNN tiles" : "oneDNN"));
      CHECK((M > 16 || !quantized));
    }
    // Per weight: 2 or 4 bytes; 34 or 18 bytes a block of 32 (an f16 scale and the quants).
    const double per = dtype == "bf16" ? 2 : dtype == "f32" ? 4 : dtype == "q8_0" ? 34.0 / 32 : 18.0 / 32;
    const auto bytes = size_t(double(N) * K * per);
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
  CHECK(matvec_rows == (4 + 6 + 6) * 5);  // bf16 at 1-16 rows, q8_0 and q4_0 at 1-512
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
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 1 + (4 * 5 + 2 * 6) * 5);

  o.format = "xml";
  CHECK_THROWS_WITH(run_matmul_bench(o), Catch::Contains("format must be md, csv, json or jsonl"));
  o = quick();
  o.reps = 0;
  CHECK_THROWS_WITH(run_matmul_bench(o), Catch::Contains("--reps must be at least 1"));
}
