// Next-token sampling with llama.cpp's usual chain: repetition penalty, top-k,
// top-p, min-p, temperature; --temp 0 is greedy.
#pragma once
#include <cstdint>
#include <random>
#include <span>
#include <vector>

namespace sparq {

struct SamplerOptions {
  float temp = 0.8f;
  int top_k = 40;          // 0: off
  float top_p = 0.95f;     // 1: off
  float min_p = 0.05f;     // 0: off
  float repeat_penalty = 1.0f;  // 1: off
  int repeat_last_n = 64;
  uint64_t seed = 0;
  void validate() const;  // throws Error for out-of-range values
};

class Sampler {
 public:
  explicit Sampler(const SamplerOptions& opt);
  // logits are modified (penalties); history is the tokens so far.
  int sample(std::span<float> logits, std::span<const int> history);

 private:
  SamplerOptions opt_;
  std::mt19937_64 rng_;
  std::vector<std::pair<float, int>> cand_;
};

// Index of the largest value; the lowest index wins ties (as argmax does).
int argmax(std::span<const float> x);

}  // namespace sparq
