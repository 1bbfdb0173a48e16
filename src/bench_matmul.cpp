#include "sparq/bench_matmul.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include <fmt/format.h>

#include "sparq/bandwidth.h"
#include "sparq/bench_table.h"
#include "sparq/common.h"
#include "sparq/matmul.h"

namespace sparq {
namespace {

using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point t0) {
  return std::chrono::duration<double>(Clock::now() - t0).count();
}

// Memory-bound rows cycle through enough copies of the weights to exceed any
// last-level cache, so the bytes really come from DRAM as in a model's decode.
constexpr size_t kWorkingSetBytes = size_t(256) << 20;

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

}  // namespace

int run_matmul_bench(int threads, int reps) {
  if (threads < 1) fail("bench: --threads must be at least 1, got {}", threads);
  if (reps < 1) fail("bench: --reps must be at least 1, got {}", reps);
  omp_set_num_threads(threads);

  const Shape model[] = {{"qkv", 768, 512}, {"o", 512, 512}, {"gate_up", 2816, 512},
                         {"down", 512, 1408}, {"lm_head", 8192, 512}};
  const Shape large[] = {{"large", 4096, 4096}, {"large", 11008, 4096}};
  struct Case {
    Shape s;
    int M;
  };
  std::vector<Case> cases;
  for (const Shape& s : model) cases.push_back({s, 1});
  for (const Shape& s : large) cases.push_back({s, 1});
  for (int M : {16, 128, 512})
    for (const Shape& s : model) cases.push_back({s, M});

  std::printf("%s\n", run_facts_note(run_facts()).c_str());
  std::printf("matmul bench: %d thread(s), %d rep(s); time per forward; GB/s of weight bytes read\n", threads, reps);
  std::printf("rows that cycle through copies of the weights read them from DRAM; read: a plain streaming read of "
              "the same copies over the same threads, in the same repetitions; %% of read: GB/s against it\n\n");
  std::printf("| shape N x K | M | dtype | copies | time (us) | GB/s | read GB/s | %% of read | GFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|---|---|\n");
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  double convert_s = 0;
  size_t converted = 0;
  for (DType t : {DType::BF16, DType::F32}) {
    for (const Case& c : cases) {
      const int N = c.s.N, K = c.s.K, M = c.M;
      std::vector<float> w(size_t(N) * K), x(size_t(M) * K), y(size_t(M) * N);
      for (float& v : w) v = dist(rng);
      for (float& v : x) v = dist(rng);
      const size_t bytes = size_t(N) * K * dtype_size(t);
      const size_t copies = M <= 16 ? std::max<size_t>(1, kWorkingSetBytes / bytes) : 1;
      std::vector<Linear> lins;
      lins.reserve(copies);
      const auto t0 = Clock::now();
      WeightArena arena(copies * Linear::arena_bytes(N, K, t));  // huge pages, as a model's weights
      for (size_t i = 0; i < copies; ++i) lins.emplace_back(w.data(), DType::F32, N, K, t, &arena);
      convert_s += seconds_since(t0);
      converted += copies * size_t(N) * K;
      for (const Linear& l : lins) l.forward(x.data(), y.data(), M);  // warm-up, primitive creation
      const bool streamed = copies > 1;
      double mm_s = 0, read_s = 0;
      size_t read_bytes = 0;
      uint64_t sink = 0;
      for (int r = 0; r < reps; ++r) {
        const auto t1 = Clock::now();
        for (const Linear& l : lins) l.forward(x.data(), y.data(), M);
        mm_s += seconds_since(t1);
        if (!streamed) continue;
        const auto t2 = Clock::now();
        sink ^= read_weights(lins, &read_bytes);
        read_s += seconds_since(t2);
      }
      volatile uint64_t keep = sink;
      (void)keep;
      const double per = mm_s / (double(reps) * copies);
      const double gbs = double(lins[0].weight_bytes()) / per * 1e-9;
      std::string read = "| - | -";
      if (streamed) {
        const double read_gbs = double(read_bytes) * reps / read_s * 1e-9;
        read = fmt::format("| {:.1f} | {:.0f}%", read_gbs, 100.0 * gbs / read_gbs);
      }
      std::printf("| %s %d x %d | %d | %s | %zu | %.1f | %.1f %s | %.1f |\n", c.s.what, N, K, M, dtype_name(t), copies,
                  per * 1e6, gbs, read.c_str(), 2.0 * M * N * K / per * 1e-9);
      std::fflush(stdout);
    }
  }
  std::printf("\nweight conversion at construction: %.1f M params/s (%.0f M params in %.2f s)\n",
              converted / convert_s * 1e-6, converted * 1e-6, convert_s);
  return 0;
}

}  // namespace sparq
