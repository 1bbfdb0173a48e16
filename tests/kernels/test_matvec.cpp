// matvec.h's kernel at every CPU tier this machine has, on odd shapes,
// batches of 1 to 33 rows, misaligned rows, partial block ranges and
// adversarial values: within a rounding bound of a double sum, and against
// the scalar reference (all tiers add each pair's products in vdpbf16ps's
// order: avx512bf16 equals it to the bit, avx2 and avx512 too but where it
// flushes subnormals); and the packed layout against what oneDNN stores for
// Linear.
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "sparq/kernels/matmul.h"
#include "sparq/kernels/matvec.h"
#include "sparq/util/common.h"
#include "sparq/util/cpu.h"
#include "cpu_tiers.h"
#include "test_util.h"

using namespace sparq;

namespace {

// Values of a kind, as bf16: random, all zero, large and tiny normals,
// cancelling pairs (+v, -v) and one-hot.
enum class Kind { random, zero, large, tiny, cancel, one_hot };

std::vector<uint16_t> values(size_t n, Kind kind, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<uint16_t> v(n, 0);
  for (size_t i = 0; i < n; ++i) {
    float x = u(rng);
    switch (kind) {
      case Kind::random: break;
      case Kind::zero: x = 0; break;
      case Kind::large: x *= 1e18f; break;
      case Kind::tiny: x = (x < 0 ? -1e-18f : 1e-18f) * (1 + std::abs(x)); break;
      case Kind::cancel: x = (i % 2 ? -1.0f : 1.0f) * float(1 + i / 2 % 7); break;
      case Kind::one_hot: x = i == n / 3 ? 3.0f : 0.0f; break;
    }
    v[i] = f32_to_bf16(x);
  }
  return v;
}

// W [N][K] in matvec.h's layout, zeros in the padding.
std::vector<uint16_t> pack(const std::vector<uint16_t>& w, int N, int K) {
  const int kp = matvec_kp(K), blocks = (N + kMatvecBlock - 1) / kMatvecBlock;
  std::vector<uint16_t> out(size_t(blocks) * kp * kMatvecBlock, 0);
  for (int n = 0; n < N; ++n)
    for (int k = 0; k < K; ++k) out[packed_index(kp, n, k)] = w[size_t(n) * K + k];
  return out;
}

// x [M][K] as the kernels take it: rows of kp, zeros past K.
std::vector<uint16_t> pad_rows(const std::vector<uint16_t>& x, int M, int K) {
  const int kp = matvec_kp(K);
  std::vector<uint16_t> out(size_t(M) * kp, 0);
  for (int m = 0; m < M; ++m) std::memcpy(&out[size_t(m) * kp], &x[size_t(m) * K], size_t(K) * 2);
  return out;
}

}  // namespace

TEST_CASE("matvec: bf16 Linear stores its weights in the packed layout", "[matvec]") {
  for (auto [N, K] : {std::pair{1, 1}, {65, 33}, {100, 1000}, {192, 64}}) {
    const auto w = values(size_t(N) * K, Kind::random, uint32_t(N + K));
    const Linear lin(w.data(), DType::BF16, N, K, WeightFormat::BF16);
    const auto want = pack(w, N, K);
    REQUIRE(lin.weight_bytes() == want.size() * 2);
    CHECK(std::memcmp(lin.weight_data(), want.data(), want.size() * 2) == 0);
  }
}

TEST_CASE("matvec: every tier's kernel against a double sum and the scalar reference", "[matvec]") {
  const int Ns[] = {1, 17, 63, 64, 65, 130};
  const int Ks[] = {1, 2, 31, 32, 33, 100, 1100};  // 1100: several of the kernels' L2 chunks
  const int Ms[] = {1, 2, 3, 4, 5, 8, 9, 16, 33, 6, 7};
  const auto tiers = test::all_tiers_here();
  int trial = 0;
  for (int N : Ns)
    for (int K : Ks)
      for (Kind kind : {Kind::random, Kind::zero, Kind::large, Kind::tiny, Kind::cancel, Kind::one_hot}) {
        const int M = Ms[trial++ % std::size(Ms)];
        const auto w = values(size_t(N) * K, kind, uint32_t(trial));
        const auto x = values(size_t(M) * K, kind == Kind::one_hot ? Kind::random : kind, uint32_t(trial + 7));
        const auto wp = pack(w, N, K);
        // x one element into its buffer: rows need no alignment.
        const auto xrows = pad_rows(x, M, K);
        std::vector<uint16_t> xbuf(xrows.size() + 1);
        std::copy(xrows.begin(), xrows.end(), xbuf.begin() + 1);
        const uint16_t* xp = xbuf.data() + 1;
        const PackedBf16 W{wp.data(), N, K, matvec_kp(K)};
        // A part of the blocks, into a wider y: the rest must stay untouched.
        const int b0 = W.blocks() > 1 ? 1 : 0, b1 = W.blocks();
        const size_t ldy = size_t(N) + 5;
        std::vector<float> want(size_t(M) * ldy, -7.0f);
        ref::matvec_bf16(W, xp, M, want.data(), ldy, b0, b1);
        for (CpuTier t : tiers) {
          std::vector<float> got(want.size(), -7.0f);
          matvec_kernels(t).matvec_bf16(W, xp, M, got.data(), ldy, b0, b1);
          INFO(cpu_tier_name(t) << " N=" << N << " K=" << K << " M=" << M << " kind " << int(kind) << " blocks " << b0
                                << ".." << b1);
          for (size_t i = 0; i < got.size(); ++i) {
            const int m = int(i / ldy), n = int(i % ldy);
            INFO("element " << i << " (row " << m << ", col " << n << "): " << got[i] << " vs " << want[i]);
            if (n < b0 * kMatvecBlock || n >= N) {
              REQUIRE(std::memcmp(&got[i], &want[i], 4) == 0);  // untouched
              continue;
            }
            // Each of the K additions rounds once (products of bf16 are exact),
            // by at most 2^-24 of the partial sum: K 2^-23 sum|w x| bounds them
            // all with room for the double sum's own error. A sum in the
            // subnormal range rounds by at most 2^-150 more where it is kept,
            // by less than 2^-126 where it is flushed (portable, avx512bf16).
            double exact = 0, mag = 0;
            for (int k = 0; k < K; ++k) {
              const double p = double(bf16_to_f32(w[size_t(n) * K + k])) * bf16_to_f32(x[size_t(m) * K + k]);
              exact += p;
              mag += std::fabs(p);
            }
            const bool flushes = t == CpuTier::portable || t == CpuTier::avx512bf16;
            const double bound = K * std::ldexp(mag, -23) + K * (flushes ? double(FLT_MIN) : 0x1p-149);
            REQUIRE(std::fabs(double(got[i]) - exact) <= bound);
            // Outside the tiny values no sum gets near the subnormal range.
            if (t == CpuTier::avx512bf16 || kind != Kind::tiny) REQUIRE(std::memcmp(&got[i], &want[i], 4) == 0);
          }
        }
      }
}

TEST_CASE("matvec: a row's result does not depend on the rows beside it", "[matvec]") {
  const int N = 130, K = 1100, M = 11;
  const auto w = values(size_t(N) * K, Kind::random, 3);
  const auto x = values(size_t(M) * K, Kind::random, 4);
  const auto wp = pack(w, N, K);
  const auto xp = pad_rows(x, M, K);
  const PackedBf16 W{wp.data(), N, K, matvec_kp(K)};
  for (CpuTier t : test::all_tiers_here()) {
    const test::TierScope tier(t);  // through matvec::, as matmul calls it
    std::vector<float> all(size_t(M) * N), one(static_cast<size_t>(N));
    matvec::matvec_bf16(W, xp.data(), M, all.data(), size_t(N), 0, W.blocks());
    for (int m = 0; m < M; ++m) {
      matvec::matvec_bf16(W, &xp[size_t(m) * W.kp], 1, one.data(), size_t(N), 0, W.blocks());
      INFO(cpu_tier_name(t) << " row " << m);
      REQUIRE(std::memcmp(one.data(), &all[size_t(m) * N], size_t(N) * 4) == 0);
    }
  }
}
