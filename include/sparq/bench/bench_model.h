// `sparq-run bench` at the model level, after llama-bench: prefill (pp) and
// decode (tg) throughput at given cache depths, for each decode attention
// setting, thread count, number of sequences decoded together and KV type,
// with the bytes each token reads against the measured DRAM read bandwidth.
#pragma once
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "sparq/kernels/kv_cache.h"
#include "sparq/kernels/matmul.h"
#include "sparq/util/common.h"

namespace sparq {

struct ModelBenchOptions {
  std::string model;  // directory or .safetensors file
  std::string shape;  // or a shape for random weights (shape_config_json); depths filled with random K/V
  std::vector<WeightFormat> weight_formats = {WeightFormat::BF16};  // one model each, in turn
  std::vector<int> prompt_lens = {512};  // pp tests: prompt tokens (0: none)
  std::vector<int> gen_lens = {128};     // tg tests: generated tokens (0: none)
  std::vector<int> depths = {0};         // cache positions filled first, untimed
  std::vector<std::string> settings = {"dense", "sparq:8"};  // decode attention (parse_attention_setting)
  std::vector<int> threads = {0};        // 0: all cores
  std::vector<int> parallel = {1};       // sequences processed together
  std::vector<KVType> kv_types = {KVType::BF16};
  int reps = 5;                          // timed repetitions after one warm-up
  int batch = 512;                       // prompt rows per forward pass
  std::string text;                      // token source (text_name names it); empty: pseudo-random ids
  std::string text_name;
  std::string format = "markdown";       // md/markdown, csv, json or jsonl
  double bandwidth_gbs = 0;              // 0: measure it at start
  std::FILE* progress = stderr;          // a line per repetition of each test (null: none)
  bool fixed_threads = false;            // no ThreadGovernor (Model::set_thread_governor)
  uint64_t seed = 1;                     // of the pseudo-random ids
};

// Prints the results to out; returns the process exit code. Throws Error on
// bad options or a model that cannot be loaded.
int run_model_bench(const ModelBenchOptions& opt, std::FILE* out = stdout);

}  // namespace sparq
