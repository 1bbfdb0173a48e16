#include "sparq/bench/bench_data.h"

#include <cmath>
#include <vector>

namespace sparq {

void fill_cache(KVCache& c, int S, Rng& rng) {
  const KVShape& s = c.shape();
  const size_t n = size_t(s.n_kv_heads) * s.head_dim;
  std::vector<float> scale(n), k(n), v(n);
  for (float& x : scale) x = std::exp(0.5f * rng.normal());
  for (int l = 0; l < s.n_layers; ++l)
    for (int p = 0; p < S; ++p) {
      for (size_t i = 0; i < n; ++i) {
        k[i] = scale[i] * rng.normal();
        v[i] = rng.normal();
      }
      c.store(l, p, k.data(), v.data());
    }
}

}  // namespace sparq
