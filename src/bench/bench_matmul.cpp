#include "sparq/bench/bench_matmul.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "sparq/kernels/bandwidth.h"
#include "sparq/bench/bench_table.h"
#include "sparq/util/common.h"
#include "sparq/kernels/matmul.h"

namespace sparq {
namespace {

using Clock = std::chrono::steady_clock;

struct Shape {
  const char* what;
  int N, K;
};

// A plain streaming read of every copy's weight bytes over the same threads:
// the yardstick for the memory-bound rows, timed in the same repetitions so a
// slow spell of the shared machine hits both alike. Returns a checksum so the
// loads stay; *bytes: what it read. Each copy is split into one part per
// thread, in whole 256-byte steps (read_checksum's unit; weight_data is 64-byte aligned).
uint64_t read_weights(const std::vector<Linear>& lins, size_t* bytes) {
  const int parts = omp_get_max_threads();
  const auto span = [&](size_t i, int part, const char** p) {
    const size_t n = lins[i].weight_bytes() / 256 * 256;
    const size_t each = n / parts / 256 * 256, begin = each * size_t(part);
    *p = static_cast<const char*>(lins[i].weight_data()) + begin;
    return part == parts - 1 ? n - begin : each;
  };
  uint64_t sum = 0;
  size_t total = 0;
  const int64_t items = int64_t(lins.size()) * parts;
#pragma omp parallel for schedule(static) reduction(^ : sum) reduction(+ : total)
  for (int64_t it = 0; it < items; ++it) {
    const char* p;
    const size_t n = span(size_t(it / parts), int(it % parts), &p);
    sum ^= read_checksum(p, n);
    total += n;
  }
  *bytes = total;
  return sum;
}

// matvec: our kernels (Linear::forward_decode); oneDNN: its matmul on the
// stored weights; oneDNN tiles: on bf16 tiles of dequantized weights.
const char* path_name(bool decode, WeightFormat t) {
  return decode ? "matvec" : is_quantized(t) ? "oneDNN tiles" : "oneDNN";
}

std::vector<BenchColumn> columns() {
  return {{"shape N x K", [](const BenchRow& r) {
             return fmt::format("{} {} x {}", r["shape"].get<std::string>(), r["N"].get<int>(), r["K"].get<int>());
           }},
          bench_column("M", "M"),
          bench_column("path", "path"),
          bench_column("dtype", "dtype"),
          bench_column("copies", "copies"),
          bench_column("time (us)", "time_us", 1),
          bench_column("GB/s", "gbs", 1),
          bench_column("read GB/s", "read_gbs", 1),
          bench_column("% of read", "pct_read", 0, 1.0, "%"),
          bench_column("GFLOP/s", "gflops", 1)};
}

}  // namespace

int run_matmul_bench(const MatmulBenchOptions& o, std::FILE* out) {
  if (o.threads < 1) fail("bench: --threads must be at least 1, got {}", o.threads);
  if (o.reps < 1) fail("bench: --reps must be at least 1, got {}", o.reps);
  bench_format(o.format);  // a bad format fails before the work
  omp_set_num_threads(o.threads);

  const Shape model[] = {{"qkv", 768, 512}, {"o", 512, 512}, {"gate_up", 2816, 512},
                         {"down", 512, 1408}, {"lm_head", 8192, 512}};
  const Shape large[] = {{"1B qkv", 3072, 2048}, {"1B gate_up", 16384, 2048}, {"1B down", 2048, 8192},
                         {"large", 4096, 4096}, {"large", 11008, 4096}};
  struct Case {
    Shape s;
    int M;
    bool decode;  // Linear::forward_decode (matvec.h for bf16) instead of forward (oneDNN)
  };
  // Decode rows both ways at 1 to 16 rows (where oneDNN and our kernels
  // cross), prompt rows through oneDNN.
  std::vector<Case> cases;
  for (int M : {1, 4, 8, 16})
    for (bool decode : {true, false}) {
      for (const Shape& s : model) cases.push_back({s, M, decode});
      if (o.large && (M == 1 || M == 8))
        for (const Shape& s : large) cases.push_back({s, M, decode});
    }
  for (int M : {128, 512})
    for (bool decode : {false, true}) {
      for (const Shape& s : model) cases.push_back({s, M, decode});
      if (o.large && M == 512)
        for (const Shape& s : large)
          if (s.what[0] == '1') cases.push_back({s, M, decode});  // the 1B shapes
    }

  BenchTable table;
  table.columns = columns();
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  double convert_s = 0;
  size_t converted = 0;
  set_quant_prompt(QuantPrompt::tiles);  // forward's rows for quantized weights: the tiles, beside matvec
  for (WeightFormat t : {WeightFormat::BF16, WeightFormat::F32, WeightFormat::Q8_0, WeightFormat::Q4_0}) {
    for (const Case& c : cases) {
      if (c.decode && t == WeightFormat::F32) continue;  // f32 decode rows are oneDNN's: the prompt rows show them
      // Prompt-sized rows through our kernels: for the quantized formats, beside their prompt path.
      if (c.decode && c.M > 16 && !is_quantized(t)) continue;
      if (!c.decode && is_quantized(t) && c.M <= 16) continue;
      const int N = c.s.N, K = c.s.K, M = c.M;
      std::vector<float> w(size_t(N) * K), x(size_t(M) * K), y(size_t(M) * N);
      for (float& v : w) v = dist(rng);
      for (float& v : x) v = dist(rng);
      auto forward = [&](const Linear& l) {
        c.decode ? l.forward_decode(x.data(), y.data(), M) : l.forward(x.data(), y.data(), M);
      };
      const auto bytes = size_t(double(N) * K * weight_format_bytes(t));
      const size_t copies = M <= 16 ? std::max<size_t>(1, o.working_set_bytes / bytes) : 1;
      std::vector<Linear> lins;
      lins.reserve(copies);
      const auto t0 = Clock::now();
      WeightArena arena(copies * Linear::arena_bytes(N, K, t));  // huge pages, as a model's weights
      for (size_t i = 0; i < copies; ++i) lins.emplace_back(w.data(), DType::F32, N, K, t, &arena);
      convert_s += seconds_since(t0);
      converted += copies * size_t(N) * K;
      for (const Linear& l : lins) forward(l);  // warm-up, primitive creation
      const bool streamed = copies > 1;
      double mm_s = 0, read_s = 0;
      size_t read_bytes = 0;
      uint64_t sink = 0;
      for (int r = 0; r < o.reps; ++r) {
        const auto t1 = Clock::now();
        for (const Linear& l : lins) forward(l);
        mm_s += seconds_since(t1);
        if (!streamed) continue;
        const auto t2 = Clock::now();
        sink ^= read_weights(lins, &read_bytes);
        read_s += seconds_since(t2);
      }
      volatile uint64_t keep = sink;
      (void)keep;
      const double per = mm_s / (double(o.reps) * copies);
      const double gbs = double(lins[0].weight_bytes()) / per * 1e-9;
      const double read_gbs = streamed ? double(read_bytes) * o.reps / read_s * 1e-9 : 0.0;
      table.rows.push_back({{"shape", c.s.what},
                            {"N", N},
                            {"K", K},
                            {"M", M},
                            {"path", path_name(c.decode, t)},
                            {"dtype", weight_format_name(t)},
                            {"copies", copies},
                            {"time_us", per * 1e6},
                            {"gbs", gbs},
                            {"read_gbs", streamed ? BenchRow(read_gbs) : BenchRow()},
                            {"pct_read", streamed ? BenchRow(100.0 * gbs / read_gbs) : BenchRow()},
                            {"gflops", 2.0 * M * N * K / per * 1e-9}});
      if (o.progress)
        fmt::print(stderr, "bench: {} {} x {} M={} {} {}: {:.1f} us\n", c.s.what, N, K, M, weight_format_name(t),
                   path_name(c.decode, t), per * 1e6);
    }
  }
  set_quant_prompt(QuantPrompt::automatic);
  table.meta = {{"kernel", "matmul"}, {"threads", o.threads}, {"reps", o.reps},
                {"working_set_bytes", o.working_set_bytes}};
  table.notes = {fmt::format("matmul bench: {} thread(s), {} rep(s); time per forward; GB/s of weight bytes read",
                             o.threads, o.reps),
                 "rows that cycle through copies of the weights read them from DRAM; read: a plain streaming read of "
                 "the same copies over the same threads, in the same repetitions; % of read: GB/s against it"};
  table.footer = {fmt::format("weight conversion at construction: {:.1f} M params/s ({:.0f} M params in {:.2f} s)",
                              converted / convert_s * 1e-6, converted * 1e-6, convert_s)};
  add_run_facts(table);
  print_bench_table(out, table, o.format);
  return 0;
}

}  // namespace sparq
