// KVCache: layout (row-major and transposed copies agree), bf16 rounding, the
// exact running sum of values, truncation, sizes and errors.
#include <cmath>
#include <random>
#include <vector>

#include "sparq/kernels/kv_cache.h"
#include "test_util.h"

using namespace sparq;

namespace {

float elem(const void* base, KVType t, size_t i) {
  return t == KVType::F32 ? static_cast<const float*>(base)[i]
                         : bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
}

float stored(float x, KVType t) { return t == KVType::F32 ? x : bf16_to_f32(f32_to_bf16(x)); }

// Random keys and values for positions [0, n) of one layer: [n][heads][d] each.
struct Rows {
  std::vector<float> k, v;
  Rows(int n, int heads, int d, uint32_t seed) : k(size_t(n) * heads * d), v(k.size()) {
    std::mt19937 rng(seed);
    std::normal_distribution<float> nd(0.f, 3.f);
    for (auto& x : k) x = nd(rng);
    for (auto& x : v) x = nd(rng);
  }
  const float* kp(int p, int heads, int d) const { return &k[size_t(p) * heads * d]; }
  const float* vp(int p, int heads, int d) const { return &v[size_t(p) * heads * d]; }
};

// v_sum as the cache promises it: the stored values summed in position order.
std::vector<float> expected_vsum(const KVCache& c, int layer, int h) {
  const int d = c.shape().head_dim;
  std::vector<double> s(size_t(d), 0.0);
  for (int p = 0; p < c.length(layer); ++p)
    for (int j = 0; j < d; ++j) s[j] += elem(c.v_rows(layer, h), c.shape().type, size_t(p) * d + j);
  return std::vector<float>(s.begin(), s.end());
}

}  // namespace

TEST_CASE("KV cache stores rows, the transposed copy and v_sum", "[kv_cache]") {
  for (KVType t : {KVType::F32, KVType::BF16}) {
    const KVShape shape{.n_layers = 2, .n_kv_heads = 3, .head_dim = 24, .capacity = 600, .type = t};
    const int H = shape.n_kv_heads, d = shape.head_dim, n = 530;  // ends inside the third block
    KVCache c(shape);
    Rows in(n, H, d, 7);
    for (int p = 0; p < n; ++p) c.store(1, p, in.kp(p, H, d), in.vp(p, H, d));
    CHECK(c.length(0) == 0);
    CHECK(c.length(1) == n);
    for (int h = 0; h < H; ++h) {
      for (int p = 0; p < n; ++p)
        for (int j = 0; j < d; ++j) {
          const float k = stored(in.kp(p, H, d)[h * d + j], t);
          REQUIRE(elem(c.k_rows(1, h), t, size_t(p) * d + j) == k);
          REQUIRE(elem(c.v_rows(1, h), t, size_t(p) * d + j) == stored(in.vp(p, H, d)[h * d + j], t));
          const size_t ti = size_t(p / KVCache::kBlock) * d * KVCache::kBlock +
                            size_t(j) * KVCache::kBlock + p % KVCache::kBlock;
          REQUIRE(elem(c.k_t(1, h), t, ti) == k);
        }
      const std::vector<float> want = expected_vsum(c, 1, h);
      for (int j = 0; j < d; ++j) REQUIRE(c.v_sum(1, h)[j] == want[j]);
      for (int j = 0; j < d; ++j) REQUIRE(c.v_sum(0, h)[j] == 0.0f);
    }
    c.clear();
    CHECK(c.length(1) == 0);
    CHECK(c.v_sum(1, 2)[5] == 0.0f);
    c.store(1, 0, in.kp(0, H, d), in.vp(0, H, d));  // a cleared cache starts again at 0
    CHECK(c.length(1) == 1);
    CHECK(c.v_sum(1, 0)[3] == stored(in.vp(0, H, d)[3], t));
  }
}

TEST_CASE("KV cache rounds bf16 to nearest even", "[kv_cache]") {
  const KVShape shape{.n_layers = 1, .n_kv_heads = 1, .head_dim = 4, .capacity = 4, .type = KVType::BF16};
  KVCache c(shape);
  // 1 + 2^-8 is halfway between bf16 1.0 and 1 + 2^-7: ties go to the even 1.0;
  // 1 + 3*2^-8 is halfway between 1 + 2^-7 and 1 + 2^-6: ties go to 1 + 2^-6.
  const float k[4] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 1.0f + 0x1p-8f + 0x1p-20f, -2.5f};
  c.store(0, 0, k, k);
  const auto* kr = static_cast<const uint16_t*>(c.k_rows(0, 0));
  CHECK(bf16_to_f32(kr[0]) == 1.0f);
  CHECK(bf16_to_f32(kr[1]) == 1.0f + 0x1p-6f);
  CHECK(bf16_to_f32(kr[2]) == 1.0f + 0x1p-7f);
  CHECK(bf16_to_f32(kr[3]) == -2.5f);
}

TEST_CASE("KV cache rewrite drops later positions and keeps v_sum exact", "[kv_cache]") {
  for (KVType t : {KVType::F32, KVType::BF16}) {
    const KVShape shape{.n_layers = 1, .n_kv_heads = 2, .head_dim = 8, .capacity = 300, .type = t};
    const int H = 2, d = 8;
    Rows a(280, H, d, 1), b(280, H, d, 2);
    KVCache c(shape), fresh(shape);
    for (int p = 0; p < 280; ++p) c.store(0, p, a.kp(p, H, d), a.vp(p, H, d));
    // Rewind to 100 and continue with other rows: same as a cache that only saw those.
    for (int p = 100; p < 270; ++p) c.store(0, p, b.kp(p, H, d), b.vp(p, H, d));
    for (int p = 0; p < 270; ++p) {
      const Rows& src = p < 100 ? a : b;
      fresh.store(0, p, src.kp(p, H, d), src.vp(p, H, d));
    }
    CHECK(c.length(0) == 270);
    for (int h = 0; h < H; ++h) {
      for (int j = 0; j < d; ++j) REQUIRE(c.v_sum(0, h)[j] == fresh.v_sum(0, h)[j]);
      const std::vector<float> want = expected_vsum(c, 0, h);
      for (int j = 0; j < d; ++j) REQUIRE(c.v_sum(0, h)[j] == want[j]);
      for (int i = 0; i < 270 * d; ++i) {
        REQUIRE(elem(c.k_rows(0, h), t, size_t(i)) == elem(fresh.k_rows(0, h), t, size_t(i)));
        REQUIRE(elem(c.v_rows(0, h), t, size_t(i)) == elem(fresh.v_rows(0, h), t, size_t(i)));
      }
    }
    c.store(0, 0, b.kp(0, H, d), b.vp(0, H, d));  // rewind to the start
    CHECK(c.length(0) == 1);
    CHECK(c.v_sum(0, 1)[2] == stored(b.vp(0, H, d)[d + 2], t));
  }
}

TEST_CASE("KV cache size counts K, V, the transposed K and v_sum", "[kv_cache]") {
  const KVShape s{.n_layers = 3, .n_kv_heads = 2, .head_dim = 64, .capacity = 1000, .type = KVType::BF16};
  const size_t padded = 1024;  // capacity rounded up to whole blocks of 1024
  CHECK(KVCache::kBlock == 1024);
  CHECK(KVCache::bytes_needed(s) == 3 * (3 * 2 * padded * 64 * 2) + 3 * 2 * 64 * 4);
  KVShape f = s;
  f.type = KVType::F32;
  CHECK(KVCache::bytes_needed(f) == 3 * (3 * 2 * padded * 64 * 4) + 3 * 2 * 64 * 4);
  CHECK(KVCache(s).bytes() == KVCache::bytes_needed(s));
}

TEST_CASE("KV cache rejects bad shapes and out-of-order stores", "[kv_cache]") {
  const KVShape s{.n_layers = 2, .n_kv_heads = 1, .head_dim = 4, .capacity = 3, .type = KVType::F32};
  KVCache c(s);
  const float x[4] = {1, 2, 3, 4};
  CHECK_THROWS_WITH(c.store(0, 1, x, x), Catch::Contains("position 1 of layer 0 is not in [0, 0]"));
  CHECK_THROWS_WITH(c.store(2, 0, x, x), Catch::Contains("layer 2 out of range"));
  CHECK_THROWS_WITH(c.store(0, -1, x, x), Catch::Contains("position -1"));
  for (int p = 0; p < 3; ++p) c.store(0, p, x, x);
  CHECK_THROWS_WITH(c.store(0, 3, x, x), Catch::Contains("KV cache full"));
  CHECK(c.length(0) == 3);

  KVShape bad = s;
  bad.head_dim = 0;
  CHECK_THROWS_WITH(KVCache(bad), Catch::Contains("must be positive"));
  for (KVType t : {KVType::F32, KVType::BF16, KVType::Q8_0}) CHECK(parse_kv_type(kv_type_name(t)) == t);
  CHECK_THROWS_WITH(parse_kv_type("f16"), Catch::Contains("unknown KV cache type 'f16' (types: f32, bf16, q8_0)"));
  bad = s;
  bad.n_layers = bad.n_kv_heads = bad.capacity = 1 << 30;
  bad.head_dim = 1 << 20;
  CHECK_THROWS_WITH(KVCache::bytes_needed(bad), Catch::Contains("too large"));
#ifndef __SANITIZE_ADDRESS__  // ASan aborts on huge allocations instead of returning null
  bad = s;
  bad.n_layers = 1 << 12;
  bad.capacity = 1 << 20;
  bad.head_dim = 128;  // 3 TiB
  CHECK_THROWS_WITH(KVCache(bad), Catch::Contains("cannot allocate") && Catch::Contains("MiB for the KV cache"));
#endif
}

TEST_CASE("KV cache copy holds the source's positions and a fresh eviction state", "[kv_cache]") {
  for (const KVType t : {KVType::F32, KVType::BF16}) {
    const KVShape s{.n_layers = 2, .n_kv_heads = 2, .head_dim = 8, .capacity = 1500, .type = t};
    const int n = 1100;  // past one block of the transposed copy
    const Rows r(n + 1, 2, 8, 9);
    KVCache src(s), dst(s);
    for (int l = 0; l < 2; ++l)
      for (int p = 0; p < n; ++p) src.store(l, p, r.kp(p, 2, 8), r.vp(p, 2, 8));
    dst.store(0, 0, r.kp(n, 2, 8), r.vp(n, 2, 8));  // something to overwrite
    dst.eviction(1, 1).seen = 5;
    dst.copy_from(src);
    for (int l = 0; l < 2; ++l)
      for (int h = 0; h < 2; ++h) {
        CHECK(dst.length(l) == n);
        CHECK(dst.eviction(l, h).seen == 0);
        for (size_t i = 0; i < size_t(n) * 8; ++i) {
          REQUIRE(elem(dst.k_rows(l, h), t, i) == elem(src.k_rows(l, h), t, i));
          REQUIRE(elem(dst.v_rows(l, h), t, i) == elem(src.v_rows(l, h), t, i));
        }
        for (int p = 0; p < n; ++p)
          for (int c = 0; c < 8; ++c) {
            const size_t at = size_t(p / KVCache::kBlock) * 8 * KVCache::kBlock + size_t(c) * KVCache::kBlock +
                              p % KVCache::kBlock;
            REQUIRE(elem(dst.k_t(l, h), t, at) == elem(src.k_t(l, h), t, at));
          }
        CHECK(std::vector<float>(dst.v_sum(l, h), dst.v_sum(l, h) + 8) == expected_vsum(src, l, h));
      }
    dst.store(0, n, r.kp(n, 2, 8), r.vp(n, 2, 8));  // appends after the copy, v_sum exact
    CHECK(std::vector<float>(dst.v_sum(0, 1), dst.v_sum(0, 1) + 8) == expected_vsum(dst, 0, 1));
  }
  KVCache a(KVShape{1, 1, 4, 8, KVType::F32}), b(KVShape{1, 1, 4, 9, KVType::F32});
  CHECK_THROWS_WITH(a.copy_from(b), Catch::Contains("shapes differ"));
  KVCache two(KVShape{2, 1, 4, 8, KVType::F32}), other(KVShape{2, 1, 4, 8, KVType::F32});
  const float x[4] = {1, 2, 3, 4};
  two.store(0, 0, x, x);
  CHECK_THROWS_WITH(other.copy_from(two), Catch::Contains("layers hold 1 and 0 positions"));
}
