// The q8_0 KV cache: its quantizer against llama.cpp's rule written out in
// kv_test_data.h, on random and adversarial rows (constant, one huge value
// in a block, zeros, non-finite, subnormal); the cache's three arrays, v_sum
// and sizes; SparQ's steps 1 and 3 at every tier against the scalar
// reference, and the reference against double, on the same adversarial data
// at lengths that are no multiple of a block.
#include <algorithm>
#include <array>
#include <cmath>
#include <limits>
#include <numbers>
#include <random>
#include <vector>

#include "sparq/kernels/kv_cache.h"
#include "sparq/kernels/sparq_kernels.h"
#include "cpu_tiers.h"
#include "kv_test_data.h"
#include "test_util.h"

using namespace sparq;
using sparq::test::as_stored;
using sparq::test::gaussian;
using sparq::test::make_cache;

namespace {

constexpr int B = kSparqBlock;

// Rows of d values by a named rule, [S][n][d] flattened (n rows per position).
std::vector<float> rows_by(int kind, size_t count, int d, std::mt19937& rng) {
  std::normal_distribution<float> nd;
  std::vector<float> x(count);
  for (size_t i = 0; i < count; ++i) {
    const size_t c = i % size_t(d);
    switch (kind) {
      case 0: x[i] = nd(rng); break;                                       // random
      case 1: x[i] = 0.75f; break;                                          // constant
      case 2: x[i] = c % 32 == 5 ? 4000.0f * (i % 3 ? 1.f : -1.f) : nd(rng); break;  // one huge value a block
      case 3: x[i] = 0.0f; break;                                           // zeros
      case 4: x[i] = i / size_t(d) % 2 ? 0.0f : nd(rng) * 1e3f; break;      // zero rows between large ones
      default: x[i] = std::ldexp(nd(rng), -12); break;                      // small: f16 scales near subnormal
    }
  }
  return x;
}

const char* kKinds[] = {"random", "constant", "one huge value a block", "zeros", "zero rows", "small"};

}  // namespace

TEST_CASE("q8_0 rows: llama.cpp's quants and f16 scales on adversarial blocks", "[kv_cache][q8]") {
  std::mt19937 rng(1);
  for (int kind = 0; kind < 6; ++kind)
    for (int d : {32, 64, 128, 96}) {
      INFO(kKinds[kind] << " d " << d);
      const std::vector<float> x = rows_by(kind, size_t(d) * 7, d, rng);
      const std::vector<float> want = as_stored(x, KVType::Q8_0);
      std::vector<uint8_t> row(kv_row_bytes(KVType::Q8_0, d));
      for (int r = 0; r < 7; ++r) {
        quantize_kv_row(&x[size_t(r) * d], d, row.data());
        for (int c = 0; c < d; ++c) {
          const int8_t q = int8_t(row[size_t(c)]);
          REQUIRE(q >= -127);
          REQUIRE(kv_row_elem(row.data(), KVType::Q8_0, d, 0, c) == want[size_t(r) * d + c]);
        }
        // The block's largest magnitude becomes +-127, or all is 0.
        for (int b = 0; b < d / 32; ++b) {
          int top = 0;
          float amax = 0;
          for (int c = 32 * b; c < 32 * b + 32; ++c) {
            top = std::max(top, std::abs(int(int8_t(row[size_t(c)]))));
            amax = std::max(amax, std::fabs(x[size_t(r) * d + c]));
          }
          REQUIRE(top == (amax > 0 ? 127 : 0));
        }
      }
    }
  // A non-finite value makes its block NaN (as it would make f32 scores) and
  // leaves the other blocks; subnormals too small for 1 / s give zeros.
  std::vector<float> x(64, 1.0f);
  x[3] = std::numeric_limits<float>::infinity();
  x[40] = 1e-40f;
  std::vector<uint8_t> row(kv_row_bytes(KVType::Q8_0, 64));
  quantize_kv_row(x.data(), 64, row.data());
  CHECK(std::isnan(kv_row_elem(row.data(), KVType::Q8_0, 64, 0, 0)));
  CHECK(kv_row_elem(row.data(), KVType::Q8_0, 64, 0, 33) == f16_to_f32(f32_to_f16(1.0f / 127)) * 127);
  std::fill(x.begin(), x.end(), 1e-40f);
  quantize_kv_row(x.data(), 64, row.data());
  for (int c = 0; c < 64; ++c) REQUIRE(kv_row_elem(row.data(), KVType::Q8_0, 64, 0, c) == 0.0f);
}

TEST_CASE("q8_0 cache: rows, the transposed copy with a scale per position, v_sum and sizes", "[kv_cache][q8]") {
  std::mt19937 rng(2);
  const int H = 2, d = 64, n = 1500;  // ends inside the second block of 1024
  const KVShape shape{.n_layers = 2, .n_kv_heads = H, .head_dim = d, .capacity = 1600, .type = KVType::Q8_0};
  const std::vector<float> k = rows_by(2, size_t(n) * H * d, d, rng), v = gaussian(size_t(n) * H * d, 2.0f, rng);
  KVCache c(shape);
  for (int p = 0; p < n; ++p) c.store(1, p, &k[size_t(p) * H * d], &v[size_t(p) * H * d]);
  const std::vector<float> ks = as_stored(k, KVType::Q8_0), vs = as_stored(v, KVType::Q8_0);
  const std::vector<float> kt = as_stored(k, KVType::Q8_0, size_t(d));
  for (int h = 0; h < H; ++h) {
    std::vector<double> sum(size_t(d), 0.0);
    for (int p = 0; p < n; ++p)
      for (int j = 0; j < d; ++j) {
        const size_t i = (size_t(p) * H + h) * d + j;
        REQUIRE(kv_row_elem(c.k_rows(1, h), KVType::Q8_0, d, size_t(p), j) == ks[i]);
        REQUIRE(kv_row_elem(c.v_rows(1, h), KVType::Q8_0, d, size_t(p), j) == vs[i]);
        REQUIRE(kv_t_scale(c.k_t(1, h), KVType::Q8_0, d, size_t(p)) * kv_t_quant(c.k_t(1, h), KVType::Q8_0, d, size_t(p), j) ==
                kt[i]);
        sum[size_t(j)] += vs[i];
      }
    for (int j = 0; j < d; ++j) REQUIRE(c.v_sum(1, h)[j] == float(sum[size_t(j)]));
  }
  // A copy and a truncation keep the bytes and the sum.
  KVCache copy(shape);
  for (int p = 0; p < n; ++p) copy.store(0, p, &k[size_t(p) * H * d], &v[size_t(p) * H * d]);
  c.truncate(0);
  for (int l = 0; l < 2; ++l)
    for (int p = 0; p < n; ++p) c.store(l, p, &k[size_t(p) * H * d], &v[size_t(p) * H * d]);
  KVCache dst(shape);
  dst.copy_from(c);
  for (int h = 0; h < H; ++h) {
    for (int p = 0; p < n; p += 7)
      for (int j = 0; j < d; ++j) {
        REQUIRE(kv_row_elem(dst.k_rows(1, h), KVType::Q8_0, d, size_t(p), j) ==
                kv_row_elem(c.k_rows(1, h), KVType::Q8_0, d, size_t(p), j));
        REQUIRE(kv_t_quant(dst.k_t(0, h), KVType::Q8_0, d, size_t(p), j) ==
                kv_t_quant(copy.k_t(0, h), KVType::Q8_0, d, size_t(p), j));
      }
    for (int j = 0; j < d; ++j) REQUIRE(dst.v_sum(0, h)[j] == copy.v_sum(0, h)[j]);
  }
  c.truncate(700);
  for (int h = 0; h < H; ++h) {
    std::vector<double> sum(size_t(d), 0.0);
    for (int p = 0; p < 700; ++p)
      for (int j = 0; j < d; ++j) sum[size_t(j)] += vs[(size_t(p) * H + h) * d + j];
    for (int j = 0; j < d; ++j) REQUIRE(c.v_sum(1, h)[j] == float(sum[size_t(j)]));
  }

  // Bytes: K and V rows of d quants and d / 32 f16 scales, the transposed
  // copy's d quants and one f16 scale per position, capacity in whole blocks.
  const size_t padded = 2048, heads = 2 * H;
  CHECK(c.bytes() == heads * (2 * padded * (d + d / 16) + padded * (d + 2)) + heads * d * 4);
  for (int hd : {64, 128}) {
    KVShape q8{.n_layers = 32, .n_kv_heads = 8, .head_dim = hd, .capacity = 131072, .type = KVType::Q8_0};
    KVShape bf = q8;
    bf.type = KVType::BF16;
    CHECK(double(KVCache::bytes_needed(q8)) <= 0.55 * double(KVCache::bytes_needed(bf)));
  }
  KVShape odd = shape;
  odd.head_dim = 48;
  CHECK_THROWS_WITH(KVCache(odd), Catch::Contains("q8_0 needs a head size that is a multiple of 32, got 48"));
}

TEST_CASE("q8_0 SparQ steps 1 and 3: every tier against the reference, the reference against double",
          "[sparq][q8]") {
  const std::vector<CpuTier> tiers = test::simd_tiers_here();
  std::mt19937 rng(3);
  for (int kind = 0; kind < 6; ++kind)
    for (int d : {32, 64, 96, 128, 160})
      for (int si = 0; si < 4; ++si) {
        // Every group size from 1 to 8 at each head size, over the kinds.
        const int S = std::array{1, 31, 1025, 2500}[size_t(si)], G = 1 + (kind + 3 * si) % 8, r = std::min(d, 1 + S % 17);
        INFO(kKinds[kind] << " d " << d << " S " << S << " G " << G << " r " << r);
        const std::vector<float> k = rows_by(kind, size_t(S) * d, d, rng), v = gaussian(size_t(S) * d, 1.0f, rng);
        const KVCache c = make_cache(1, d, S, KVType::Q8_0, k, v);
        const std::vector<float> kt = as_stored(k, KVType::Q8_0, size_t(d));
        std::vector<int> i1(static_cast<size_t>(r));
        for (int j = 0; j < r; ++j) i1[size_t(j)] = j * d / r;
        const std::vector<float> qs = gaussian(size_t(G) * r, 0.05f, rng);
        const SparqStep1Args a{c.k_t(0, 0), KVType::Q8_0, d, S, i1.data(), r, qs.data(), G};
        const int nb = (S + B - 1) / B;
        std::vector<float> e(size_t(nb) * G * B), mx(size_t(nb) * G), sum(mx.size());
        ref::sparq_step1(a, 0, nb, e.data(), mx.data(), sum.data());
        // The reference's block max against the scores in double.
        double mag = 0;
        for (float x : qs) mag = std::max(mag, double(std::abs(x)));
        double kmax = 0;
        for (float x : kt) kmax = std::max(kmax, double(std::abs(x)));
        const double x_tol = 1e-6 * r * mag * kmax + 1e-30;
        for (int h = 0; h < G; ++h)
          for (int b = 0; b < nb; ++b) {
            double top = -INFINITY;
            for (int p = b * B; p < std::min(S, (b + 1) * B); ++p) {
              double x = 0;
              for (int j = 0; j < r; ++j) x += double(qs[size_t(h) * r + j]) * kt[size_t(p) * d + i1[size_t(j)]];
              top = std::max(top, x);
            }
            REQUIRE(std::abs(mx[size_t(h) * nb + b] - top) <= x_tol);
          }
        for (CpuTier t : tiers) {
          INFO(cpu_tier_name(t));
          std::vector<float> e2(e.size(), -1.0f), mx2(mx.size()), sum2(sum.size());
          sparq_kernels(t).step1(a, 0, nb, e2.data(), mx2.data(), sum2.data());
          for (size_t i = 0; i < mx.size(); ++i) REQUIRE(std::abs(mx2[i] - mx[i]) <= x_tol);
          for (size_t i = 0; i < e.size(); ++i) REQUIRE(std::abs(e2[i] - e[i]) <= 2e-7 + 1.5 * x_tol + 1e-6 * e[i]);
        }

        // Step 3 over a spread of rows, in double over the stored values.
        const std::vector<float> ks = as_stored(k, KVType::Q8_0), vs = as_stored(v, KVType::Q8_0);
        std::vector<int> idx;
        for (int p = 0; p < S; p += 1 + S / 97) idx.push_back(p);
        const int n = int(idx.size());
        const std::vector<float> q = gaussian(size_t(G) * d, 0.3f, rng), qm = test::as_query(q, KVType::Q8_0);
        const float scale = float(std::numbers::log2e / std::sqrt(double(d)));
        const SparqStep3Args a3{c.k_rows(0, 0), c.v_rows(0, 0), KVType::Q8_0, d, q.data(), G, scale};
        const size_t dp = size_t(sparq_dpad(d));
        std::vector<float> scratch(sparq_step3_scratch(G, n, d)), m(static_cast<size_t>(G)), z(m), acc(static_cast<size_t>(G) * dp);
        const auto outputs = [&](const std::vector<float>& zz, const std::vector<float>& aa) {
          std::vector<double> o(size_t(G) * d);
          for (int h = 0; h < G; ++h)
            for (int j = 0; j < d; ++j) o[size_t(h) * d + j] = aa[size_t(h) * dp + j] / double(zz[size_t(h)]);
          return o;
        };
        std::vector<double> want(size_t(G) * d, 0.0);
        double vmax = 0;
        for (float x : vs) vmax = std::max(vmax, double(std::abs(x)));
        for (int h = 0; h < G; ++h) {
          std::vector<double> s(static_cast<size_t>(n));
          for (int i = 0; i < n; ++i) {
            double dot = 0;
            for (int j = 0; j < d; ++j) dot += double(qm[size_t(h) * d + j]) * ks[size_t(idx[size_t(i)]) * d + j];
            s[size_t(i)] = dot * scale;
          }
          const double top = *std::max_element(s.begin(), s.end());
          double l = 0;
          for (double& x : s) l += x = std::exp2(x - top);
          for (int i = 0; i < n; ++i)
            for (int j = 0; j < d; ++j) want[size_t(h) * d + j] += s[size_t(i)] / l * vs[size_t(idx[size_t(i)]) * d + j];
        }
        ref::sparq_step3(a3, idx.data(), n, m.data(), z.data(), acc.data(), scratch.data());
        double kabs = 0;
        for (float x : ks) kabs = std::max(kabs, double(std::abs(x)));
        const double tol = 1e-5 * vmax * (1 + kabs);
        const std::vector<double> got = outputs(z, acc);
        for (size_t i = 0; i < want.size(); ++i) REQUIRE(std::abs(got[i] - want[i]) <= tol);
        for (CpuTier t : tiers) {
          INFO(cpu_tier_name(t));
          std::vector<float> m2(m.size()), z2(z.size()), acc2(acc.size(), -1.0f);
          sparq_kernels(t).step3(a3, idx.data(), n, m2.data(), z2.data(), acc2.data(), scratch.data());
          const std::vector<double> got2 = outputs(z2, acc2);
          for (size_t i = 0; i < want.size(); ++i) REQUIRE(std::abs(got2[i] - want[i]) <= tol);
        }
      }
}
