// Plain double-precision references of window, topk and H2O over dense
// arrays, written from the methods' definitions for the tests to hold the
// decode paths to.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

#include "sparq/kernels/baseline_decode.h"

namespace sparq::ref {
namespace {

double score(const float* q, const float* K, int d, int p) {
  double s = 0;
  for (int c = 0; c < d; ++c) s += double(q[c]) * K[size_t(p) * d + c];
  return s / std::sqrt(double(d));
}

}  // namespace

void attention_over(const float* q, int n_h, int d, const float* K, const float* V, const std::vector<int>& idx,
                    double* out, std::vector<double>* prob) {
  if (prob) prob->assign(idx.size(), 0.0);
  for (int h = 0; h < n_h; ++h) {
    const float* qh = q + size_t(h) * d;
    std::vector<double> x(idx.size());
    double m = -std::numeric_limits<double>::infinity();
    for (size_t i = 0; i < idx.size(); ++i) m = std::max(m, x[i] = score(qh, K, d, idx[i]));
    double z = 0;
    for (double& v : x) z += v = std::exp(v - m);
    double* oh = out + size_t(h) * d;
    std::fill(oh, oh + d, 0.0);
    for (size_t i = 0; i < idx.size(); ++i) {
      if (prob) (*prob)[i] += x[i] / z;
      for (int c = 0; c < d; ++c) oh[c] += x[i] / z * V[size_t(idx[i]) * d + c];
    }
  }
}

void window_attention(const float* q, int n_h, int d, const float* K, const float* V, int S, int budget, int sinks,
                      double* out) {
  std::vector<int> idx;
  for (int p = 0; p < S; ++p) {
    const int b = std::min(budget, S), first = std::min(sinks, b - 1);
    if (p < first || p >= S - (b - first)) idx.push_back(p);
  }
  attention_over(q, n_h, d, K, V, idx, out);
}

std::vector<int> topk_positions(const float* q, int n_h, int d, const float* K, int S, int k, int l,
                                GroupRule rule) {
  k = std::min(k, S);
  l = std::min(l, k);
  const int n = S - l;
  std::vector<double> s(size_t(S), 0.0);
  for (int h = 0; h < n_h; ++h) {
    std::vector<double> x(static_cast<size_t>(S));
    for (int p = 0; p < S; ++p) x[size_t(p)] = score(q + size_t(h) * d, K, d, p);
    if (rule == GroupRule::prob) {
      const double m = *std::max_element(x.begin(), x.end());
      double z = 0;
      for (double& v : x) z += v = std::exp(v - m);
      for (double& v : x) v /= z;
    }
    for (int p = 0; p < S; ++p) s[size_t(p)] += x[size_t(p)];
  }
  std::vector<int> idx(static_cast<size_t>(n));
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int a, int b) { return s[size_t(a)] > s[size_t(b)]; });
  idx.resize(size_t(k - l));
  for (int p = n; p < S; ++p) idx.push_back(p);
  std::sort(idx.begin(), idx.end());
  return idx;
}

std::vector<int> H2O::step(const float* q, int n_h, int d, const float* K, const float* V, int S, int budget,
                           int recent, double* out) {
  const bool seed = score_.empty();
  score_.resize(size_t(S), 0.0);
  evicted_.resize(size_t(S), false);
  auto kept = [&] {
    std::vector<int> k;
    for (int p = 0; p < S; ++p)
      if (!evicted_[size_t(p)]) k.push_back(p);
    return k;
  };
  std::vector<int> idx = kept();
  // One at a time: the lowest accumulated score outside the recent window,
  // the older first among equals.
  while (!seed && int(idx.size()) > budget) {
    int worst = -1;
    for (int p : idx)
      if (p < S - recent && (worst < 0 || score_[size_t(p)] < score_[size_t(worst)])) worst = p;
    evicted_[size_t(worst)] = true;
    idx = kept();
  }
  std::vector<double> prob;
  attention_over(q, n_h, d, K, V, idx, out, &prob);
  for (size_t i = 0; i < idx.size(); ++i) score_[size_t(idx[i])] += prob[i];
  return idx;
}

}  // namespace sparq::ref
