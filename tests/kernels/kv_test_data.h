// Random data and small caches for the kernel tests.
#pragma once
#include <random>
#include <vector>

#include "sparq/kernels/kv_cache.h"

namespace sparq::test {

inline std::vector<float> gaussian(size_t n, float scale, std::mt19937& rng) {
  std::normal_distribution<float> nd(0.0f, scale);
  std::vector<float> v(n);
  for (float& x : v) x = nd(rng);
  return v;
}

// A one-layer cache holding k and v ([S][n_kv][d]) at positions 0..S-1.
inline KVCache make_cache(int n_kv, int d, int S, KVType t, const std::vector<float>& k, const std::vector<float>& v) {
  KVCache c(KVShape{1, n_kv, d, S, t});
  for (int p = 0; p < S; ++p) c.store(0, p, &k[size_t(p) * n_kv * d], &v[size_t(p) * n_kv * d]);
  return c;
}

}  // namespace sparq::test
