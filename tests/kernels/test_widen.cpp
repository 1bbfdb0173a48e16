// widen_block at every tier against the reference, and the reference
// against the packed layout's own index.
#include <cstring>
#include <random>
#include <vector>

#include "sparq/kernels/widen.h"
#include "cpu_tiers.h"
#include "test_util.h"

using namespace sparq;

TEST_CASE("widen_block gives each packed bf16 weight back as f32, at every tier", "[matvec]") {
  const auto tiers = test::simd_tiers_here();
  std::mt19937 rng(5);
  for (auto [N, K] : {std::pair{1, 1}, {64, 16}, {65, 33}, {130, 100}, {192, 64}, {64, 1100}, {7, 48}}) {
    const int kp = matvec_kp(K), blocks = (N + kMatvecBlock - 1) / kMatvecBlock;
    std::vector<uint16_t> w(size_t(blocks) * kp * kMatvecBlock, 0);
    std::vector<float> want(size_t(N) * K);
    for (int n = 0; n < N; ++n)
      for (int k = 0; k < K; ++k) {
        const uint16_t h = uint16_t(rng() & 0xffff);
        w[packed_index(kp, n, k)] = h;
        want[size_t(n) * K + k] = bf16_to_f32(h);
      }
    const PackedBf16 W{w.data(), N, K, kp};
    for (int b = 0; b < blocks; ++b) {
      const int rows = std::min(kMatvecBlock, N - b * kMatvecBlock);
      const size_t elems = size_t(rows) * K, at = size_t(b) * kMatvecBlock * K;
      INFO("N=" << N << " K=" << K << " block " << b);
      std::vector<float> got(elems + 3, -1.0f);  // nothing past the rows is written
      ref::widen_block(W, b, got.data());
      REQUIRE(std::memcmp(got.data(), want.data() + at, elems * 4) == 0);  // bit for bit: NaNs too
      for (CpuTier t : tiers) {
        INFO(cpu_tier_name(t));
        std::vector<float> simd(elems + 3, -1.0f);
        const test::TierScope scope(t);
        widen_block(W, b, simd.data());
        REQUIRE(std::memcmp(simd.data(), got.data(), (elems + 3) * 4) == 0);
      }
    }
  }
}
