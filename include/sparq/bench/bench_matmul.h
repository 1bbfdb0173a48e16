// `sparq-run bench --kernel matmul`: times Linear on the shapes of the shared
// 27M model, Llama-3.2-1B's and two large ones, decode rows (M = 1 to 16) both
// through matvec.h's kernels and through oneDNN, against a plain read of the
// same weight copies timed alongside; prompt rows (M = 128, 512) through oneDNN.
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
  bool large = true;     // also the large shapes (1B's, 4096 x 4096, 11008 x 4096) at M = 1 and 8
  bool progress = true;  // a line per row on stderr as it finishes
};

// Prints the results to out; returns the process exit code. Throws Error on
// bad options.
int run_matmul_bench(const MatmulBenchOptions& o, std::FILE* out = stdout);

}  // namespace sparq
