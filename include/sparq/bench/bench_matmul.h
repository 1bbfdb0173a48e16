// `sparq-run bench --kernel matmul`: times Linear (oneDNN) on the shapes of the
// shared 27M model and on two large ones, the decode rows (M = 1, 16) against
// a plain read of the same weight copies timed alongside.
#pragma once
#include <cstddef>
#include <cstdio>
#include <string>

namespace sparq {

struct MatmulBenchOptions {
  int threads = 1;                 // OpenMP threads for oneDNN
  int reps = 20;                   // timed passes per row (>= 1)
  std::string format = "markdown";  // markdown (or md), csv, json or jsonl
  // Memory-bound rows cycle through copies of the weights filling this many
  // bytes, more than any last-level cache, so they come from DRAM.
  size_t working_set_bytes = size_t(256) << 20;
  bool large = true;     // also the two large shapes (4096 x 4096, 11008 x 4096) at M = 1
  bool progress = true;  // a line per row on stderr as it finishes
};

// Prints the results to out; returns the process exit code. Throws Error on
// bad options.
int run_matmul_bench(const MatmulBenchOptions& o, std::FILE* out = stdout);

}  // namespace sparq
