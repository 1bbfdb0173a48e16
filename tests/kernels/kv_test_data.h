// Random data and small caches for the kernel tests.
#pragma once
#include <algorithm>
#include <cmath>
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

inline constexpr KVType kAllKVTypes[] = {KVType::F32, KVType::BF16, KVType::Q8_0};

// Whether a cache of type t takes head size d (q8_0: whole blocks of 32).
inline bool takes(KVType t, int d) { return t != KVType::Q8_0 || d % 32 == 0; }

// x (rows of whole 32-value blocks for q8_0) as a cache of type t holds it:
// rounded to bf16, or llama.cpp's q8_0 written out from its definition
// (quantize_row_q8_0_ref): per 32 values d = max|x| / 127, q = roundf(x * (1 / d)),
// d kept as f16.
// The transposed copy's q8_0 takes one scale per position: as_stored(x, t, d)
// holds rows of d that way.
inline std::vector<float> as_stored(std::vector<float> x, KVType t, size_t block = 32) {
  if (t == KVType::BF16)
    for (float& v : x) v = bf16_to_f32(f32_to_bf16(v));
  if (t == KVType::Q8_0)
    for (size_t b = 0; b + block <= x.size(); b += block) {
      float amax = 0;
      for (size_t i = b; i < b + block; ++i) amax = std::max(amax, std::fabs(x[i]));
      const float d = amax / 127, id = d != 0 ? 1.0f / d : 0.0f, d16 = f16_to_f32(f32_to_f16(d));
      for (size_t i = b; i < b + block; ++i) x[i] = std::round(x[i] * id) * d16;
    }
  return x;
}

// A query (rows of whole 32-value blocks for q8_0) as keys of type t meet it,
// dequantized: rounded to bf16, or per 32 values qs = max|q| / 127 and
// q / qs rounded to nearest even, times qs.
inline std::vector<float> as_query(std::vector<float> q, KVType t) {
  if (t == KVType::BF16)
    for (float& v : q) v = bf16_to_f32(f32_to_bf16(v));
  if (t == KVType::Q8_0)
    for (size_t b = 0; b + 32 <= q.size(); b += 32) {
      float amax = 0;
      for (size_t i = b; i < b + 32; ++i) amax = std::max(amax, std::fabs(q[i]));
      const float s = amax / 127, inv = s != 0 ? 1.0f / s : 0.0f;
      for (size_t i = b; i < b + 32; ++i) q[i] = std::nearbyint(q[i] * inv) * s;
    }
  return q;
}

// A one-layer cache holding k and v ([S][n_kv][d]) at positions 0..S-1.
inline KVCache make_cache(int n_kv, int d, int S, KVType t, const std::vector<float>& k, const std::vector<float>& v) {
  KVCache c(KVShape{1, n_kv, d, S, t});
  for (int p = 0; p < S; ++p) c.store(0, p, &k[size_t(p) * n_kv * d], &v[size_t(p) * n_kv * d]);
  return c;
}

}  // namespace sparq::test
