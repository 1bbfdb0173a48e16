// Forward-pass ops: the scalar references against double-precision formulas,
// and every SIMD tier's kernels against the references, on odd sizes and hard values.
#include <cmath>
#include <cstring>
#include <limits>
#include <numbers>
#include <random>
#include <vector>

#include "sparq/util/common.h"
#include "sparq/util/cpu.h"
#include "sparq/kernels/ops.h"
#include "cpu_tiers.h"
#include "test_util.h"

using namespace sparq;
using sparq::test::simd_tiers_here;
using sparq::test::TierScope;

namespace {

const int kSizes[] = {1, 7, 15, 16, 17, 31, 32, 33, 63, 64, 65, 1000, 4097};
const float kInf = std::numeric_limits<float>::infinity();

std::vector<float> randn(int n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d(0.0f, 1.0f);
  std::vector<float> v(static_cast<size_t>(n));
  for (float& x : v) x = d(rng) * scale;
  return v;
}


void require_close(const std::vector<float>& got, const std::vector<double>& want, double rel, double abs) {
  REQUIRE(got.size() == want.size());
  for (size_t i = 0; i < got.size(); ++i) {
    INFO("i=" << i << " got=" << got[i] << " want=" << want[i]);
    REQUIRE(std::abs(double(got[i]) - want[i]) <= abs + rel * std::abs(want[i]));
  }
}

void require_close(const std::vector<float>& got, const std::vector<float>& want, double rel, double abs) {
  require_close(got, std::vector<double>(want.begin(), want.end()), rel, abs);
}

std::vector<float> inv_freq(int head_dim, double theta) {
  std::vector<float> f(size_t(head_dim / 2));
  for (int i = 0; i < head_dim / 2; ++i) f[i] = float(1.0 / std::pow(theta, 2.0 * i / head_dim));
  return f;
}

}  // namespace

TEST_CASE("rmsnorm matches the double formula and every tier's kernel", "[ops]") {
  const auto tiers = simd_tiers_here();
  const float eps = 1e-5f;
  for (int n : kSizes) {
    for (float scale : {1.0f, 1e-30f, 1e30f}) {  // tiny and huge: squares leave f32 range
      INFO("n=" << n << " scale=" << scale);
      const auto x = randn(n, scale, uint32_t(n));
      const auto w = randn(n, 1.0f, uint32_t(n) + 1);
      double ss = 0;
      for (float v : x) ss += double(v) * v;
      const double r = 1.0 / std::sqrt(ss / n + eps);
      std::vector<double> want(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) want[i] = x[i] * r * w[i];

      std::vector<float> out(static_cast<size_t>(n));
      ref::rmsnorm(out.data(), x.data(), w.data(), n, eps);
      require_close(out, want, 3e-7, 1e-37);
      for (CpuTier t : tiers) {
        INFO(cpu_tier_name(t));
        std::vector<float> a = x;  // in place
        ops_kernels(t).rmsnorm(a.data(), a.data(), w.data(), n, eps);
        require_close(a, out, 3e-7, 1e-37);
      }
    }
  }
}

TEST_CASE("rope angles are cos/sin of the f32 angle pos * inv_freq", "[ops]") {
  const auto f = inv_freq(128, 500000.0);
  std::vector<float> c(f.size()), s(f.size());
  for (int pos : {0, 1, 7, 4095, 131071}) {
    rope_cos_sin(c.data(), s.data(), int(f.size()), pos, f.data());
    for (size_t i = 0; i < f.size(); ++i) {
      const double angle = float(pos) * f[i];  // rounded to f32 first, as transformers does
      INFO("pos=" << pos << " i=" << i);
      REQUIRE(std::abs(c[i] - std::cos(angle)) <= 1e-7);
      REQUIRE(std::abs(s[i] - std::sin(angle)) <= 1e-7);
    }
  }
}

TEST_CASE("rope rotates element i with i + head_dim/2 (rotate_half)", "[ops]") {
  // A quarter turn on the first pair and none on the second: x0 <- -x2, x2 <- x0.
  const float quarter = float(std::numbers::pi / 2);
  const float f[2] = {quarter, 0.0f};
  std::vector<float> x = {1.0f, 2.0f, 3.0f, 4.0f};
  ops::rope(x.data(), 1, 4, 1, f);
  require_close(x, std::vector<double>{-3.0, 2.0, 1.0, 4.0}, 0, 1e-6);
}

TEST_CASE("rope matches the double formula and every tier's kernel", "[ops]") {
  const auto tiers = simd_tiers_here();
  for (int head_dim : {2, 6, 8, 34, 64, 128}) {
    const auto f = inv_freq(head_dim, 10000.0);
    const int half = head_dim / 2;
    for (int n_heads : {1, 3, 8}) {
      for (int pos : {0, 1, 17, 4095, 100000}) {
        INFO("head_dim=" << head_dim << " n_heads=" << n_heads << " pos=" << pos);
        const auto x = randn(n_heads * head_dim, 3.0f, uint32_t(head_dim * 1000 + n_heads));
        std::vector<double> want(x.size());
        for (int h = 0; h < n_heads; ++h)
          for (int i = 0; i < half; ++i) {
            const double angle = float(pos) * f[i];
            const double x1 = x[h * head_dim + i], x2 = x[h * head_dim + half + i];
            want[h * head_dim + i] = x1 * std::cos(angle) - x2 * std::sin(angle);
            want[h * head_dim + half + i] = x2 * std::cos(angle) + x1 * std::sin(angle);
          }
        std::vector<float> c(static_cast<size_t>(half)), s(static_cast<size_t>(half));
        rope_cos_sin(c.data(), s.data(), half, pos, f.data());
        std::vector<float> r = x;
        ref::rope_apply(r.data(), n_heads, head_dim, c.data(), s.data());
        require_close(r, want, 0, 1e-5);  // |x| < 15: f32 cos/sin and products, a few 1e-6
        for (CpuTier t : tiers) {
          INFO(cpu_tier_name(t));
          std::vector<float> a = x;
          ops_kernels(t).rope_apply(a.data(), n_heads, head_dim, c.data(), s.data());
          require_close(a, r, 0, 3e-6);  // FMA: one rounding fewer
          const TierScope scope(t);
          std::vector<float> o = x;
          ops::rope(o.data(), n_heads, head_dim, pos, f.data());
          REQUIRE(o == a);
        }
      }
    }
  }
}

TEST_CASE("rope refuses odd or oversized head sizes", "[ops]") {
  std::vector<float> x(4096, 1.0f), f(2048, 1.0f);
  REQUIRE_THROWS_AS(ops::rope(x.data(), 1, 7, 3, f.data()), Error);
  REQUIRE_THROWS_AS(ops::rope(x.data(), 1, 0, 3, f.data()), Error);
  REQUIRE_THROWS_AS(ops::rope(x.data(), 1, 2 * kMaxRopeHeadDim, 3, f.data()), Error);
}

TEST_CASE("softmax matches the double formula and every tier's kernel", "[ops]") {
  const auto tiers = simd_tiers_here();
  for (int n : kSizes) {
    for (float scale : {1.0f, 30.0f, 1e4f, 1e30f}) {
      for (bool with_inf : {false, true}) {
        INFO("n=" << n << " scale=" << scale << " -inf entries=" << with_inf);
        auto x = randn(n, scale, uint32_t(n) * 7);
        if (with_inf)
          for (int i = 0; i < n; i += 3) x[i] = -kInf;  // x[0] is -inf: n == 1 is all -inf
        double mx = -kInf;
        for (float v : x) mx = std::max(mx, double(v));
        // Relative error allowed: a few ulp, plus the f32 rounding of x - max,
        // which moves exp(x - max) by up to |x - max| * 2^-24 relative.
        std::vector<double> want(static_cast<size_t>(n), 0.0), tol(static_cast<size_t>(n), 0.0);
        if (mx != -kInf) {
          double sum = 0;
          for (int i = 0; i < n; ++i) sum += want[i] = std::exp(double(x[i]) - mx);
          for (int i = 0; i < n; ++i) {
            want[i] /= sum;
            tol[i] = 1e-37 + want[i] * (5e-7 + std::min(104.0, mx - x[i]) * 6e-8);
          }
        }
        std::vector<float> r = x;
        ref::softmax(r.data(), n);
        for (int i = 0; i < n; ++i) {
          INFO("i=" << i << " x=" << x[i] << " got=" << r[i] << " want=" << want[i]);
          REQUIRE(std::abs(r[i] - want[i]) <= tol[i]);
        }
        for (CpuTier t : tiers) {
          INFO(cpu_tier_name(t));
          std::vector<float> a = x;
          ops_kernels(t).softmax(a.data(), n);
          require_close(a, r, 2e-6, 1e-37);
        }
      }
    }
  }
}

TEST_CASE("softmax of ties is uniform", "[ops]") {
  for (int n : {1, 17, 1000}) {
    std::vector<float> x(static_cast<size_t>(n), 12.5f);
    ops::softmax(x.data(), n);
    require_close(x, std::vector<double>(static_cast<size_t>(n), 1.0 / n), 1e-6, 0);
  }
}

TEST_CASE("silu_mul matches the double formula and every tier's kernel", "[ops]") {
  const auto tiers = simd_tiers_here();
  for (int n : kSizes) {
    for (float scale : {1.0f, 10.0f, 100.0f, 1e30f}) {
      INFO("n=" << n << " scale=" << scale);
      const auto g = randn(n, scale, uint32_t(n) * 11);
      const auto u = randn(n, 1.0f, uint32_t(n) * 13);
      std::vector<double> want(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) want[i] = g[i] / (1.0 + std::exp(-double(g[i]))) * u[i];
      std::vector<float> r = g;
      ref::silu_mul(r.data(), u.data(), n);
      // exp(-g) overflows f32 for g < -88.7, giving -0 for about g * e^g.
      require_close(r, want, 6e-7, 1e-30);
      for (CpuTier t : tiers) {
        INFO(cpu_tier_name(t));
        std::vector<float> a = g;
        ops_kernels(t).silu_mul(a.data(), u.data(), n);
        require_close(a, r, 1e-6, 1e-30);
      }
    }
  }
}

TEST_CASE("add is exact, at every tier", "[ops]") {
  const auto tiers = simd_tiers_here();
  for (int n : kSizes) {
    INFO("n=" << n);
    const auto y = randn(n, 1e3f, uint32_t(n) * 17);
    const auto x = randn(n, 1.0f, uint32_t(n) * 19);
    std::vector<float> want(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) want[i] = float(double(y[i]) + x[i]);
    std::vector<float> r = y;
    ref::add(r.data(), x.data(), n);
    REQUIRE(r == want);
    for (CpuTier t : tiers) {
      INFO(cpu_tier_name(t));
      std::vector<float> a = y;
      ops_kernels(t).add(a.data(), x.data(), n);
      REQUIRE(a == want);
      ops_kernels(t).add(a.data(), a.data(), n);  // y == x: doubles
      for (int i = 0; i < n; ++i) REQUIRE(a[i] == 2 * want[i]);
    }
  }
}

TEST_CASE("dot matches the double sum and every tier's kernel", "[ops]") {
  const auto tiers = simd_tiers_here();
  for (int n : kSizes) {
    for (float scale : {1.0f, 1e15f}) {
      INFO("n=" << n << " scale=" << scale);
      const auto a = randn(n, scale, uint32_t(n) * 23);
      const auto b = randn(n, scale, uint32_t(n) * 29);
      double want = 0, mag = 0;
      for (int i = 0; i < n; ++i) {
        want += double(a[i]) * b[i];
        mag += std::abs(double(a[i]) * b[i]);
      }
      const float r = ref::dot(a.data(), b.data(), n);
      REQUIRE(std::abs(r - want) <= 6e-8 * std::abs(want) + 1e-12 * mag);
      for (CpuTier t : tiers) {
        INFO(cpu_tier_name(t));
        // f32 accumulation: each of the 32 or 64 lanes sums about n/32 products at most.
        const double bound = (n / 32.0 + 8) * 6e-8 * mag;
        REQUIRE(std::abs(ops_kernels(t).dot(a.data(), b.data(), n) - want) <= bound);
      }
    }
  }
}

TEST_CASE("to_bf16 rounds to nearest even, and every tier agrees", "[ops]") {
  // Nearest bf16 by comparing the two neighbours in double; ties go to even.
  auto nearest = [](float x) -> uint16_t {
    uint32_t u;
    std::memcpy(&u, &x, 4);
    if (std::isnan(x)) return uint16_t((u >> 16) | 0x40);
    const uint16_t lo = uint16_t(u >> 16);
    if ((u & 0xffffu) == 0) return lo;
    const uint16_t hi = uint16_t(lo + 1);  // next magnitude up (may be inf)
    const double dlo = std::abs(double(bf16_to_f32(lo)) - x), dhi = std::abs(double(bf16_to_f32(hi)) - x);
    if ((u & 0x7fffffffu) >= 0x7f7f8000u) return (u & 0xffffu) >= 0x8000u ? hi : lo;  // at FLT_MAX: inf
    if (dlo != dhi) return dlo < dhi ? lo : hi;
    return (lo & 1) ? hi : lo;
  };
  std::vector<float> x = randn(4097, 100.0f, 31);
  for (uint32_t bits : {0x3f808000u, 0x3f818000u, 0xbf808000u, 0x3f80ffffu, 0x7f7fffffu, 0xff7f8000u,
                        0x7f800000u, 0xff800000u, 0x7fc00001u, 0x7f800001u, 0x00800000u, 0x80000000u}) {
    float f;
    std::memcpy(&f, &bits, 4);
    x.push_back(f);
  }
  const auto tiers = simd_tiers_here();
  for (size_t n : {size_t(1), size_t(15), size_t(16), size_t(17), size_t(31), size_t(32), size_t(33), x.size()}) {
    INFO("n=" << n);
    std::vector<uint16_t> r(n), want(n);
    const float* src = x.data() + (x.size() - n);  // the special values are at the end
    for (size_t i = 0; i < n; ++i) want[i] = nearest(src[i]);
    ref::to_bf16(r.data(), src, n);
    REQUIRE(r == want);
    for (CpuTier t : tiers) {
      INFO(cpu_tier_name(t));
      std::vector<uint16_t> a(n);
      ops_kernels(t).to_bf16(a.data(), src, n);
      REQUIRE(a == r);
    }
  }
  // Subnormals: the BF16 instructions flush them to zero; the widening tiers round them.
  const uint32_t bits[2] = {0x00412345u, 0x80400000u};
  float sub[2];
  std::memcpy(sub, bits, 8);
  for (CpuTier t : tiers) {
    INFO(cpu_tier_name(t));
    uint16_t a[2];
    ops_kernels(t).to_bf16(a, sub, 2);
    const bool flush = t == CpuTier::avx512bf16;
    REQUIRE(a[0] == (flush ? 0x0000 : 0x0041));
    REQUIRE(a[1] == (flush ? 0x8000 : 0x8040));
  }
}

TEST_CASE("ops:: follows the CPU tier", "[ops]") {
  const auto x = randn(1000, 5.0f, 37);
  std::vector<float> r = x, o = x;
  ref::softmax(r.data(), 1000);
  {
    const TierScope scalar(CpuTier::portable);
    ops::softmax(o.data(), 1000);
  }
  REQUIRE(o == r);
  for (CpuTier t : simd_tiers_here()) {
    INFO(cpu_tier_name(t));
    std::vector<float> a = x;
    o = x;
    ops_kernels(t).softmax(a.data(), 1000);
    const TierScope scope(t);
    ops::softmax(o.data(), 1000);
    REQUIRE(o == a);
    REQUIRE(a != r);  // otherwise this test could not tell the paths apart
  }
}

TEST_CASE("a CPU tier the machine lacks is refused, by name", "[ops]") {
  REQUIRE_THROWS_WITH(parse_cpu_tier("avx9"), Catch::Contains("unknown CPU tier 'avx9'") && Catch::Contains("avx512bf16"));
  for (CpuTier t : kCpuTiers)
    if (!cpu_has(t)) REQUIRE_THROWS_WITH(set_cpu_tier(t), Catch::Contains("this CPU has no"));
  REQUIRE(cpu_has(CpuTier::portable));
}
