#include "sparq/engine/sampler.h"

#include <algorithm>
#include <cmath>
#include <unordered_set>

#include "sparq/util/common.h"

namespace sparq {

void SamplerOptions::validate() const {
  if (!(temp >= 0.0f) || !std::isfinite(temp)) fail("--temp must be >= 0, got {}", temp);
  if (top_k < 0) fail("--top-k must be >= 0, got {}", top_k);
  if (!(top_p > 0.0f && top_p <= 1.0f)) fail("--top-p must be in (0, 1], got {}", top_p);
  if (!(min_p >= 0.0f && min_p <= 1.0f)) fail("--min-p must be in [0, 1], got {}", min_p);
  if (!(repeat_penalty > 0.0f) || !std::isfinite(repeat_penalty))
    fail("--repeat-penalty must be > 0, got {}", repeat_penalty);
  if (repeat_last_n < 0) fail("--repeat-last-n must be >= 0, got {}", repeat_last_n);
}

int argmax(std::span<const float> x) {
  int best = 0;
  for (int i = 1; i < int(x.size()); ++i)
    if (x[i] > x[best]) best = i;
  return best;
}

Sampler::Sampler(const SamplerOptions& opt) : opt_(opt), rng_(opt.seed) { opt_.validate(); }

int Sampler::sample(std::span<float> logits, std::span<const int> history) {
  // Repetition penalty as in llama.cpp/CTRL: shrink positive logits, grow negative ones.
  if (opt_.repeat_penalty != 1.0f && opt_.repeat_last_n > 0) {
    const size_t n = std::min<size_t>(history.size(), size_t(opt_.repeat_last_n));
    std::unordered_set<int> seen(history.end() - n, history.end());
    for (int id : seen) {
      if (id < 0 || id >= int(logits.size())) continue;
      float& l = logits[id];
      l = l > 0 ? l / opt_.repeat_penalty : l * opt_.repeat_penalty;
    }
  }
  if (opt_.temp == 0.0f) return argmax(logits);

  cand_.clear();
  for (int i = 0; i < int(logits.size()); ++i) cand_.emplace_back(logits[i], i);
  auto by_logit = [](const auto& a, const auto& b) {
    return a.first > b.first || (a.first == b.first && a.second < b.second);
  };
  size_t n = cand_.size();
  if (opt_.top_k > 0 && size_t(opt_.top_k) < n) {
    std::partial_sort(cand_.begin(), cand_.begin() + opt_.top_k, cand_.end(), by_logit);
    n = size_t(opt_.top_k);
  } else {
    std::sort(cand_.begin(), cand_.end(), by_logit);
  }
  cand_.resize(n);

  // Probabilities at temperature 1 for the top-p / min-p cuts, then temperature.
  std::vector<double> p(n);
  double sum = 0;
  for (size_t i = 0; i < n; ++i) sum += p[i] = std::exp(double(cand_[i].first - cand_[0].first));
  size_t keep = n;
  if (opt_.top_p < 1.0f) {
    double acc = 0;
    for (size_t i = 0; i < n; ++i) {
      acc += p[i] / sum;
      if (acc >= opt_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  if (opt_.min_p > 0.0f) {
    size_t i = 1;
    while (i < keep && p[i] >= opt_.min_p * p[0]) ++i;
    keep = i;
  }
  double tsum = 0;
  for (size_t i = 0; i < keep; ++i)
    tsum += p[i] = std::exp(double(cand_[i].first - cand_[0].first) / opt_.temp);
  double u = std::uniform_real_distribution<double>(0.0, tsum)(rng_);
  for (size_t i = 0; i < keep; ++i) {
    u -= p[i];
    if (u <= 0) return cand_[i].second;
  }
  return cand_[keep - 1].second;
}

}  // namespace sparq
