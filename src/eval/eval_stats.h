// Small pieces the evaluation runs share: running mean with standard error,
// log-probabilities from logits, and the progress line on stderr.
#pragma once
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>

namespace sparq {

struct MeanStat {
  double sum = 0, sum2 = 0;
  size_t n = 0;
  void add(double x) {
    sum += x;
    sum2 += x * x;
    ++n;
  }
  double mean() const { return n ? sum / double(n) : 0.0; }
  // Standard error of the mean (sample standard deviation / sqrt(n)).
  double se() const {
    if (n < 2) return 0.0;
    const double var = (sum2 - sum * sum / double(n)) / double(n - 1);
    return std::sqrt(std::max(var, 0.0) / double(n));
  }
};

// log softmax(logits)[id], in double.
double log_prob(const float* logits, size_t V, int id);

// "done/total, tokens/s, ETA" redrawn in place on a terminal; on a pipe or
// with quiet, only the final line.
class Progress {
 public:
  Progress(size_t total, bool quiet);
  void update(size_t done, size_t tokens);
  void finish(size_t done, size_t tokens);

 private:
  size_t total_;
  bool live_;
  std::chrono::steady_clock::time_point start_, last_;
};

}  // namespace sparq
