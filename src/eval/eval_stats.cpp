#include "eval_stats.h"

#include <unistd.h>

#include <algorithm>

#include <fmt/format.h>

#include "sparq/util/common.h"

namespace sparq {

double log_prob(const float* logits, size_t V, int id) {
  const float mx = *std::max_element(logits, logits + V);
  double sum = 0;
  for (size_t i = 0; i < V; ++i) sum += std::exp(double(logits[i]) - mx);
  return double(logits[id]) - mx - std::log(sum);
}

Progress::Progress(size_t total, bool quiet)
    : total_(total),
      live_(!quiet && isatty(STDERR_FILENO)),
      start_(std::chrono::steady_clock::now()),
      last_(start_) {}

void Progress::update(size_t done, size_t tokens) {
  const auto now = std::chrono::steady_clock::now();
  if (!live_ || now - last_ < std::chrono::milliseconds(250)) return;
  last_ = now;
  const double s = std::chrono::duration<double>(now - start_).count();
  const double eta = done ? s * double(total_ - done) / double(done) : 0.0;
  fmt::print(stderr, "\r[{}/{}] {:.1f} tokens/s, ETA {:.0f} s   ", done, total_, tokens / s, eta);
}

void Progress::finish(size_t done, size_t tokens) {
  const double s = seconds_since(start_);
  fmt::print(stderr, "{}[{}/{}] done in {:.1f} s, {:.1f} tokens/s\n", live_ ? "\r" : "", done, total_, s,
             s > 0 ? tokens / s : 0.0);
}

}  // namespace sparq
