#include "sparq/bench_matmul.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <random>
#include <vector>

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

  std::printf("matmul bench: %d thread(s), %d rep(s); time per forward; GB/s of weight bytes read\n\n",
              threads, reps);
  std::printf("| shape N x K | M | dtype | copies | time (us) | GB/s | GFLOP/s |\n");
  std::printf("|---|---|---|---|---|---|---|\n");
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
      for (size_t i = 0; i < copies; ++i) lins.emplace_back(w.data(), N, K, t);
      convert_s += seconds_since(t0);
      converted += copies * size_t(N) * K;
      for (const Linear& l : lins) l.forward(x.data(), y.data(), M);  // warm-up, primitive creation
      const auto t1 = Clock::now();
      for (int r = 0; r < reps; ++r)
        for (const Linear& l : lins) l.forward(x.data(), y.data(), M);
      const double per = seconds_since(t1) / (double(reps) * copies);
      std::printf("| %s %d x %d | %d | %s | %zu | %.1f | %.1f | %.1f |\n", c.s.what, N, K, M, dtype_name(t),
                  copies, per * 1e6, double(lins[0].weight_bytes()) / per * 1e-9,
                  2.0 * M * N * K / per * 1e-9);
      std::fflush(stdout);
    }
  }
  std::printf("\nweight conversion at construction: %.1f M params/s (%.0f M params in %.2f s)\n",
              converted / convert_s * 1e-6, converted * 1e-6, convert_s);
  return 0;
}

}  // namespace sparq
