// `sparq-run bench --kernel attention`: times one decode attention step
// (dense or SparQ) on random data as a model runs it, across enough layers
// that the cache far exceeds the last-level cache, and compares the KV bytes
// read per second with the measured DRAM read bandwidth.
#pragma once
#include <cstdio>
#include <string>
#include <vector>

#include "sparq/kernels/kv_cache.h"
#include "sparq/util/common.h"

namespace sparq {

struct AttentionBenchOptions {
  std::vector<int> seq_lens = {4096, 16384, 32768, 65536, 131072};
  std::vector<int> head_dims = {64, 128};
  std::vector<int> groups = {1, 4};  // query heads per KV head
  int n_kv_heads = 8;
  std::vector<KVType> kv_types = {KVType::BF16};  // each its own cache, all taking turns in each rep
  std::vector<std::string> settings = {"dense", "sparq:8", "sparq:16"};  // parse_attention_setting
  int threads = 0;                 // 0: omp_get_max_threads()
  int reps = 10;                   // timed passes over all layers (after one warm-up pass)
  std::string format = "markdown";  // markdown (or md), csv, json or jsonl
  size_t min_cache_mib = 512;      // dense KV bytes of one step over all layers, at least
  double bandwidth_gbs = 0;        // 0: measure it (1 GiB streaming read)
  uint64_t seed = 1;
};

// Prints the results to out; returns the process exit code. Throws Error on
// bad options.
int run_attention_bench(const AttentionBenchOptions& opt, std::FILE* out = stdout);

}  // namespace sparq
