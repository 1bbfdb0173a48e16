// matvec_quant.h: q8_0 and q4_0 quantization against llama.cpp's rules and
// error bounds, the layout read back, the scalar reference against a double
// product, and every CPU tier's kernels (product, activation quantizer, bf16
// tiles) against the reference to the bit on odd shapes, batches of 1 to 33
// rows and adversarial blocks.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "sparq/kernels/matvec_quant.h"
#include "sparq/util/common.h"
#include "sparq/util/cpu.h"
#include "cpu_tiers.h"
#include "test_util.h"

using namespace sparq;

namespace {

constexpr QuantFormat kFormats[] = {QuantFormat::Q8_0, QuantFormat::Q4_0};

// Values of a kind: random, all zero, huge (scales near f16's largest), tiny
// (scales in f16's subnormal range or flushed to zero), one large value per
// block among small ones, one-hot, and +-1 (every quant at the end of its
// range: the largest products the integer sums meet).
enum class Kind { random, zero, huge, tiny, outlier, one_hot, extreme };

std::vector<float> values(size_t n, Kind kind, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) {
    const float x = u(rng);
    switch (kind) {
      case Kind::random: v[i] = x; break;
      case Kind::zero: v[i] = 0; break;
      case Kind::huge: v[i] = x * 4.0e5f; break;
      case Kind::tiny: v[i] = x * 1e-6f; break;
      case Kind::outlier: v[i] = i % 32 == 7 ? 100.0f * (x < 0 ? -1 : 1) : 1e-3f * x; break;
      case Kind::one_hot: v[i] = i == n / 3 ? -3.0f : 0.0f; break;
      case Kind::extreme: v[i] = x < 0 ? -1.0f : 1.0f; break;
    }
  }
  return v;
}

struct Packed {
  std::vector<uint8_t> bytes;
  PackedQuant W;
};

Packed pack(const std::vector<float>& w, QuantFormat f, int N, int K) {
  Packed p;
  p.W = PackedQuant{nullptr, f, N, K};
  p.bytes.assign(p.W.bytes(), 0);
  quantize_weights(w.data(), 0, N, p.W, p.bytes.data());
  p.W.w = p.bytes.data();
  return p;
}

}  // namespace

TEST_CASE("quant: blocks follow llama.cpp's rounding", "[quant]") {
  // w[k] = (k - 16) / 16: -1 has the largest magnitude.
  std::vector<float> w(32);
  for (int k = 0; k < 32; ++k) w[k] = float(k - 16) / 16;
  const Packed q8 = pack(w, QuantFormat::Q8_0, 1, 32), q4 = pack(w, QuantFormat::Q4_0, 1, 32);
  // q8_0: d = 1/127, q = round(w * 127); q4_0: d = -1 / -8, q = min(15, trunc(w * 8 + 8.5)) - 8.
  CHECK(stored_scale(q8.W, 0, 0) == f16_to_f32(f32_to_f16(1.0f / 127)));
  CHECK(stored_scale(q4.W, 0, 0) == 0.125f);
  for (int k = 0; k < 32; ++k) {
    INFO("k=" << k);
    CHECK(stored_quant(q8.W, 0, k) - 128 == int(std::round(w[k] * 127)));
    CHECK(stored_quant(q4.W, 0, k) - 8 == std::min(15, int(w[k] * 8 + 8.5f)) - 8);
  }
  // A block whose largest magnitude is positive gets a negative q4_0 scale.
  for (float& v : w) v = -v;
  CHECK(stored_scale(pack(w, QuantFormat::Q4_0, 1, 32).W, 0, 0) == -0.125f);
}

TEST_CASE("quant: dequantized weights are within half a step, rows read back", "[quant]") {
  for (QuantFormat f : kFormats)
    for (Kind kind : {Kind::random, Kind::zero, Kind::outlier, Kind::one_hot, Kind::huge}) {
      const int N = 70, K = 96;
      const auto w = values(size_t(N) * K, kind, 11);
      const Packed p = pack(w, f, N, K);
      REQUIRE(p.W.bytes() == size_t(2) * 3 * quant_record_bytes(f));
      std::vector<float> row(K);
      for (int n = 0; n < N; ++n) {
        dequantize_row(p.W, n, row.data());
        for (int k = 0; k < K; ++k) {
          const float d = std::fabs(stored_scale(p.W, n, k / 32));
          // q4_0's largest positive step is 7 where the block's scale allows 8:
          // values near +max lose up to a whole step there.
          const float bound = f == QuantFormat::Q8_0 ? 0.56f * d : 1.01f * d;
          INFO(quant_name(f) << " kind " << int(kind) << " n=" << n << " k=" << k);
          REQUIRE(std::fabs(row[k] - w[size_t(n) * K + k]) <= bound);
        }
      }
      // Rows past N in the last group stay zero.
      for (int n = N; n < 128; ++n)
        for (int k = 0; k < K; ++k) REQUIRE((stored_quant(p.W, n, k) == 0 && stored_scale(p.W, n, k / 32) == 0));
    }
}

TEST_CASE("quant: the reference product equals a double product of the dequantized values", "[quant]") {
  const int N = 67, K = 160, M = 3;
  for (QuantFormat f : kFormats) {
    const auto w = values(size_t(N) * K, Kind::random, 5);
    const auto x = values(size_t(M) * K, Kind::random, 6);
    const Packed p = pack(w, f, N, K);
    QuantRows xq;
    quantize_rows(x.data(), M, K, f, xq);
    std::vector<float> y(size_t(M) * N), wrow(K);
    ref::matvec_quant(p.W, xq, y.data(), size_t(N), 0, p.W.blocks());
    for (int n = 0; n < N; ++n) {
      dequantize_row(p.W, n, wrow.data());
      for (int m = 0; m < M; ++m) {
        double dot = 0, exact = 0, mag = 0;
        for (int k = 0; k < K; ++k) {
          const size_t b = size_t(m) * (K / 32) + k / 32;
          dot += double(wrow[k]) * xq.d[b] * xq.q[size_t(m) * K + k];
          exact += double(w[size_t(n) * K + k]) * x[size_t(m) * K + k];
          mag += std::fabs(double(w[size_t(n) * K + k]) * x[size_t(m) * K + k]);
        }
        INFO(quant_name(f) << " n=" << n << " m=" << m);
        REQUIRE(std::fabs(y[size_t(m) * N + n] - dot) <= 1e-5 * mag);
        // Against the unquantized product: q8_0 within 1%, q4_0 within 15% of the magnitude.
        REQUIRE(std::fabs(y[size_t(m) * N + n] - exact) <= (f == QuantFormat::Q8_0 ? 0.01 : 0.15) * mag);
      }
    }
  }
}

TEST_CASE("quant: every tier's kernel equals the scalar reference", "[quant]") {
  const int Ns[] = {1, 17, 63, 64, 65, 130};
  const int Ks[] = {32, 64, 96, 1088, 2048};  // 1088, 2048: more records than one L2 chunk
  const int Ms[] = {1, 2, 3, 4, 5, 8, 9, 16, 33, 6, 7};
  const auto tiers = test::simd_tiers_here();
  int trial = 0;
  for (QuantFormat f : kFormats)
    for (int N : Ns)
      for (int K : Ks)
        for (Kind kind :
             {Kind::random, Kind::zero, Kind::huge, Kind::tiny, Kind::outlier, Kind::one_hot, Kind::extreme}) {
          const int M = Ms[trial++ % std::size(Ms)];
          const Packed p = pack(values(size_t(N) * K, kind, uint32_t(trial)), f, N, K);
          const auto x = values(size_t(M) * K, kind == Kind::one_hot ? Kind::random : kind, uint32_t(trial + 7));
          QuantRows xq;
          quantize_rows(x.data(), M, K, f, xq);
          // A part of the groups, into a wider y: the rest must stay untouched.
          const int b0 = p.W.blocks() > 1 ? 1 : 0, b1 = p.W.blocks();
          const size_t ldy = size_t(N) + 5;
          std::vector<float> want(size_t(M) * ldy, -7.0f);
          ref::matvec_quant(p.W, xq, want.data(), ldy, b0, b1);
          for (CpuTier t : tiers) {
            std::vector<float> got(want.size(), -7.0f);
            matvec_kernels(t).matvec_quant(p.W, xq, got.data(), ldy, b0, b1);
            INFO(cpu_tier_name(t) << " " << quant_name(f) << " N=" << N << " K=" << K << " M=" << M << " kind "
                                  << int(kind));
            for (size_t i = 0; i < got.size(); ++i)
              if (std::memcmp(&got[i], &want[i], 4) != 0) {
                INFO("element " << i << " (row " << i / ldy << ", col " << i % ldy << "): " << got[i] << " vs "
                                << want[i]);
                REQUIRE(got[i] == want[i]);
              }
          }
        }
}

TEST_CASE("quant: bf16 tiles of the dequantized weights, every tier", "[quant]") {
  const auto tiers = test::simd_tiers_here();
  for (QuantFormat f : kFormats)
    for (Kind kind : {Kind::random, Kind::zero, Kind::huge, Kind::tiny, Kind::outlier, Kind::extreme}) {
      const int N = 150, K = 96;
      const Packed p = pack(values(size_t(N) * K, kind, 31), f, N, K);
      // Groups 1..2 (rows 64..149, the last group partial): zeros past N.
      std::vector<uint16_t> want(size_t(2) * K * 64, 7);
      ref::dequantize_bf16(p.W, 1, 3, want.data());
      std::vector<float> row(K);
      for (int n = 64; n < 192; ++n) {
        if (n < N) dequantize_row(p.W, n, row.data());
        for (int k = 0; k < K; ++k) {
          INFO(quant_name(f) << " kind " << int(kind) << " n=" << n << " k=" << k);
          const uint16_t w = want[packed_index(K, n - 64, k)];
          if (n < N) REQUIRE(w == f32_to_bf16(row[k]));
          else REQUIRE(bf16_to_f32(w) == 0);  // padding: a zero scale (-0 where the offset is subtracted)
        }
      }
      for (CpuTier t : tiers) {
        // One group past the two, in a buffer one element in: nothing else written, no alignment needed.
        std::vector<uint16_t> buf(want.size() + size_t(K) * 64 + 1, 7);
        matvec_kernels(t).dequantize_bf16(p.W, 1, 3, buf.data() + 1);
        INFO(cpu_tier_name(t) << " " << quant_name(f) << " kind " << int(kind));
        CHECK(std::equal(want.begin(), want.end(), buf.begin() + 1));
        CHECK(buf[0] == 7);
        CHECK(std::all_of(buf.begin() + 1 + ptrdiff_t(want.size()), buf.end(), [](uint16_t v) { return v == 7; }));
      }
    }
}

TEST_CASE("quant: every tier's activation quantization equals the scalar reference", "[quant]") {
  const auto tiers = test::simd_tiers_here();
  for (Kind kind : {Kind::random, Kind::zero, Kind::huge, Kind::tiny, Kind::outlier, Kind::one_hot, Kind::extreme}) {
    const size_t n = 37;
    auto x = values(n * 32 + 1, kind, 9);
    if (kind == Kind::outlier) {  // non-finite blocks and exact halves (ties go to even)
      x[5] = NAN;
      x[40] = -INFINITY;
      for (int k = 0; k < 32; ++k) x[64 + k] = float(k % 2 ? 127 : -(k / 2)) + 0.5f * (k % 4 == 2);
      for (int k = 0; k < 32; ++k) x[96 + k] = k % 3 ? 1e-40f : 0.0f;  // subnormals: 1 / d overflows
      x[130] = INFINITY;
    }
    for (int offset : {8, 128})
      for (size_t skew : {0, 1}) {  // rows of activations need no alignment
        std::vector<int8_t> q0(n * 32), q1(n * 32);
        std::vector<float> d0(n), d1(n);
        std::vector<int32_t> o0(n), o1(n);
        ref::quantize_blocks(x.data() + skew, n, offset, q0.data(), d0.data(), o0.data());
        for (CpuTier t : tiers) {
          matvec_kernels(t).quantize_blocks(x.data() + skew, n, offset, q1.data(), d1.data(), o1.data());
          INFO(cpu_tier_name(t) << " kind " << int(kind) << " offset " << offset << " skew " << skew);
          CHECK(q0 == q1);
          CHECK(o0 == o1);
          CHECK(std::memcmp(d0.data(), d1.data(), n * 4) == 0);
        }
      }
  }
}

TEST_CASE("quant: a row's result does not depend on the rows beside it", "[quant]") {
  const int N = 130, K = 1088, M = 11;
  for (CpuTier t : test::all_tiers_here()) {
    const test::TierScope tier(t);  // through matvec:: and quantize_rows, as matmul calls them
    for (QuantFormat f : kFormats) {
      const Packed p = pack(values(size_t(N) * K, Kind::random, 3), f, N, K);
      const auto x = values(size_t(M) * K, Kind::random, 4);
      QuantRows all_q, one_q;
      quantize_rows(x.data(), M, K, f, all_q);
      std::vector<float> all(size_t(M) * N), one(static_cast<size_t>(N));
      matvec::matvec_quant(p.W, all_q, all.data(), size_t(N), 0, p.W.blocks());
      for (int m = 0; m < M; ++m) {
        quantize_rows(&x[size_t(m) * K], 1, K, f, one_q);
        matvec::matvec_quant(p.W, one_q, one.data(), size_t(N), 0, p.W.blocks());
        INFO(cpu_tier_name(t) << " " << quant_name(f) << " row " << m);
        REQUIRE(std::memcmp(one.data(), &all[size_t(m) * N], size_t(N) * 4) == 0);
      }
    }
  }
}

TEST_CASE("quant: non-finite or too large weights and K off the block are refused, non-finite activations give NaN", "[quant]") {
  std::vector<float> w(64, 0.5f);
  w[40] = NAN;
  std::vector<uint8_t> out(PackedQuant{nullptr, QuantFormat::Q8_0, 1, 64}.bytes());
  CHECK_THROWS_WITH(quantize_weights(w.data(), 0, 1, PackedQuant{nullptr, QuantFormat::Q8_0, 1, 64}, out.data()),
                    Catch::Contains("weight [0][40] is nan"));
  w[40] = 1e7f;  // a q4_0 scale of 1.25e6: past f16's largest
  CHECK_THROWS_WITH(quantize_weights(w.data(), 0, 1, PackedQuant{nullptr, QuantFormat::Q4_0, 1, 64}, out.data()),
                    Catch::Contains("too large for an f16 scale"));
  QuantRows xq;
  CHECK_THROWS_WITH(quantize_rows(w.data(), 1, 48, QuantFormat::Q4_0, xq), Catch::Contains("not a multiple of 32"));
  // An activation block with an infinity gives NaN for that row, as f32 would.
  w.assign(64, 0.5f);
  std::vector<float> x(64, 1.0f);
  x[3] = INFINITY;
  for (CpuTier t : test::all_tiers_here())
    for (QuantFormat f : kFormats) {
      const test::TierScope tier(t);
      const Packed p = pack(w, f, 1, 64);
      quantize_rows(x.data(), 1, 64, f, xq);
      float y = 0;
      matvec::matvec_quant(p.W, xq, &y, 1, 0, 1);
      INFO(cpu_tier_name(t) << " " << quant_name(f));
      CHECK(std::isnan(y));
    }
}
