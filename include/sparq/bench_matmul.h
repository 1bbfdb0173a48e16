// `sparq-run bench --kernel matmul`: times Linear (oneDNN) on the shapes of the
// shared 27M model and on two large ones, and prints a markdown table.
#pragma once

namespace sparq {

// threads: OpenMP threads for oneDNN; reps: timed passes per row (>= 1).
// Prints to stdout; returns the process exit code. Throws Error on bad arguments.
int run_matmul_bench(int threads, int reps);

}  // namespace sparq
