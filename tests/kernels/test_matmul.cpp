// Linear (oneDNN for prompt rows, matvec.h for bf16 decode rows) against a
// double-precision product on odd shapes. For bf16
// compute the reference uses the bf16-rounded weights and activations, so the
// only error left is f32 accumulation and the tolerance can be its bound.
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <random>
#include <vector>

#include "sparq/util/common.h"
#include "sparq/kernels/matmul.h"
#include "sparq/util/cpu.h"
#include "test_util.h"

using namespace sparq;

namespace {

std::vector<float> uniform(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> d(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

WeightFormat format_of(DType t) { return t == DType::BF16 ? WeightFormat::BF16 : WeightFormat::F32; }

float round_to(DType t, float x) { return t == DType::BF16 ? bf16_to_f32(f32_to_bf16(x)) : x; }

// y = x . W^T checked row by row against double sums of the (rounded) inputs;
// the bound is the worst case of K-term f32 accumulation. Also checks that
// nothing past y[M * N] is written. Both paths: prompt rows and decode rows.
void check_forward(const Linear& lin, const std::vector<float>& w, DType t, int M, uint32_t seed) {
  const int N = lin.rows(), K = lin.cols();
  const auto x = uniform(size_t(M) * K, seed);
  for (bool decode : {false, true}) {
    INFO((decode ? "decode" : "prompt") << " rows");
    std::vector<float> y(size_t(M) * N + 1, 0.0f);
    y.back() = 12345.0f;
    decode ? lin.forward_decode(x.data(), y.data(), M) : lin.forward(x.data(), y.data(), M);
    REQUIRE(y.back() == 12345.0f);
    for (int m = 0; m < M; ++m)
      for (int n = 0; n < N; ++n) {
        double want = 0, mag = 0;
        for (int k = 0; k < K; ++k) {
          const double p = double(round_to(t, x[size_t(m) * K + k])) * round_to(t, w[size_t(n) * K + k]);
          want += p;
          mag += std::abs(p);
        }
        const double tol = (K + 2) * std::ldexp(1.0, -24) * mag + 1e-30;
        const float got = y[size_t(m) * N + n];
        if (std::abs(got - want) > tol) {
          INFO(dtype_name(t) << " N=" << N << " K=" << K << " M=" << M << " row " << m << " col " << n
                             << ": got " << got << " want " << want << " tol " << tol);
          REQUIRE(std::abs(got - want) <= tol);
        }
      }
  }
}

}  // namespace

TEST_CASE("Linear matches a double-precision product on odd shapes", "[matmul]") {
  const int dims[] = {1, 3, 17, 64, 100, 513};
  const int extra_m[] = {2, 5, 130};  // each meets every N and every K once per 3 pairs
  for (DType t : {DType::F32, DType::BF16}) {
    int pair = 0;
    for (int N : dims)
      for (int K : dims) {
        const auto w = uniform(size_t(N) * K, uint32_t(N * 1000 + K));
        const Linear lin(w.data(), N, K, format_of(t));
        REQUIRE(lin.weight_bytes() >= size_t(N) * K * dtype_size(t));
        // One set of weights for every M; the second M = 1 comes from the cache.
        for (int M : {1, 33, extra_m[pair++ % 3], 1}) check_forward(lin, w, t, M, uint32_t(M * 7 + N));
      }
  }
}

TEST_CASE("Linear gives back its rows from the blocked layout, from bf16 or f32 weights", "[matmul]") {
  // Shapes around oneDNN's block sizes (16, 32, 64) and the model's embedding.
  for (auto [N, K] : {std::pair{1, 1}, {5, 3}, {33, 17}, {64, 100}, {130, 64}, {1000, 512}, {8192, 96}})
    for (DType compute : {DType::F32, DType::BF16})
      for (DType given : {DType::F32, DType::BF16}) {
        std::vector<float> w = uniform(size_t(N) * K, uint32_t(N + K));
        std::vector<uint16_t> w16(w.size());
        for (size_t i = 0; i < w.size(); ++i) {
          w16[i] = f32_to_bf16(w[i]);
          if (given == DType::BF16) w[i] = bf16_to_f32(w16[i]);
        }
        const Linear lin(given == DType::BF16 ? static_cast<const void*>(w16.data()) : w.data(), given, N, K,
                         format_of(compute));
        std::vector<float> row(static_cast<size_t>(K));
        for (int n = 0; n < N; n += (n % 7 == 6 ? 1 + N / 9 : 1)) {
          lin.row(n, row.data());
          for (int k = 0; k < K; ++k)
            if (row[k] != round_to(compute, w[size_t(n) * K + k])) {
              INFO(dtype_name(given) << " weights, " << dtype_name(compute) << " compute, N=" << N << " K=" << K
                                     << " row " << n << " element " << k);
              REQUIRE(row[k] == round_to(compute, w[size_t(n) * K + k]));
            }
        }
        if (given == DType::BF16 && compute == DType::BF16) check_forward(lin, w, compute, 3, 11);
        REQUIRE_THROWS_AS(lin.row(N, row.data()), Error);
        REQUIRE_THROWS_AS(lin.row(-1, row.data()), Error);
      }
}

TEST_CASE("Linear on a model-sized shape, after a thread-count change, and moved", "[matmul]") {
  const int N = 768, K = 512;
  const auto w = uniform(size_t(N) * K, 99);
  std::vector<Linear> lins;
  lins.emplace_back(w.data(), N, K, WeightFormat::BF16);
  lins.emplace_back(w.data(), N, K, WeightFormat::F32);  // moves the first one
  const int threads = omp_get_max_threads();
  for (int th : {1, threads}) {
    omp_set_num_threads(th);
    check_forward(lins[0], w, DType::BF16, 1, 5);
    check_forward(lins[1], w, DType::F32, 16, 6);
  }
  omp_set_num_threads(threads);
}

TEST_CASE("Linear places its weights in an arena, one layer after another", "[matmul]") {
  const int shapes[][2] = {{768, 512}, {17, 33}, {512, 1408}};
  size_t bytes = 0;
  for (auto [N, K] : shapes) bytes += Linear::arena_bytes(N, K, WeightFormat::BF16);
  WeightArena arena(bytes);
  std::vector<Linear> lins;
  std::vector<std::vector<float>> ws;
  for (auto [N, K] : shapes) {
    ws.push_back(uniform(size_t(N) * K, uint32_t(N + K)));
    lins.emplace_back(ws.back().data(), DType::F32, N, K, WeightFormat::BF16, &arena);
    CHECK(Linear::arena_bytes(N, K, WeightFormat::BF16) >= lins.back().weight_bytes());
    CHECK(reinterpret_cast<uintptr_t>(lins.back().weight_data()) % 64 == 0);
  }
  CHECK(arena.used() == bytes);
  for (size_t i = 0; i < lins.size(); ++i) {
    check_forward(lins[i], ws[i], DType::BF16, 1, 7);
    check_forward(lins[i], ws[i], DType::BF16, 5, 8);
  }
  // Earlier layers are untouched by later ones: rows read back as stored.
  std::vector<float> row(512);
  lins[0].row(3, row.data());
  for (int k = 0; k < 512; ++k) REQUIRE(row[k] == round_to(DType::BF16, ws[0][3 * 512 + k]));
  CHECK_THROWS_WITH(Linear(ws[1].data(), DType::F32, 17, 33, WeightFormat::BF16, &arena), Catch::Contains("weight arena"));
}

TEST_CASE("Linear rejects bad shapes, f16 weights, quantized rows off the block and empty batches", "[matmul]") {
  const std::vector<float> w(12, 1.0f);
  REQUIRE_THROWS_AS(Linear(w.data(), 0, 12, WeightFormat::BF16), Error);
  REQUIRE_THROWS_AS(Linear(w.data(), 3, -4, WeightFormat::F32), Error);
  REQUIRE_THROWS_AS(Linear(w.data(), DType::F16, 3, 2, WeightFormat::BF16), Error);
  REQUIRE_THROWS_WITH(Linear(w.data(), 3, 4, WeightFormat::Q4_0), Catch::Contains("q4_0 needs a multiple of 32 columns"));
  REQUIRE_THROWS_WITH(Linear::arena_bytes(3, 40, WeightFormat::Q8_0), Catch::Contains("q8_0 needs a multiple of 32"));
  const Linear lin(w.data(), 3, 4, WeightFormat::F32);
  float x[4] = {}, y[3] = {};
  REQUIRE_THROWS_AS(lin.forward(x, y, 0), Error);
  REQUIRE_THROWS_AS(lin.forward_decode(x, y, 0), Error);
}

TEST_CASE("Linear on q8_0 and q4_0 weights: rows, bytes, both paths and the arena", "[matmul][quant]") {
  const int N = 130, K = 320;
  const auto w = uniform(size_t(N) * K, 21);
  std::vector<uint16_t> w16(w.size());
  for (size_t i = 0; i < w.size(); ++i) w16[i] = f32_to_bf16(w[i]);
  for (WeightFormat f : {WeightFormat::Q8_0, WeightFormat::Q4_0}) {
    INFO(weight_format_name(f));
    WeightArena arena(Linear::arena_bytes(N, K, f));
    const Linear lin(w16.data(), DType::BF16, N, K, f, &arena);
    CHECK(lin.format() == f);
    // 64-row groups: 3 of them, K / 32 records each.
    const size_t record = f == WeightFormat::Q8_0 ? 128 + 64 * 32 : 128 + 64 * 16;
    CHECK(lin.weight_bytes() == 3 * (K / 32) * record);
    CHECK(lin.row_bytes() * 64 == (K / 32) * record);
    CHECK(double(lin.weight_bytes()) == weight_format_bytes(f) * 3 * 64 * K);
    CHECK(arena.used() == Linear::arena_bytes(N, K, f));
    // Rows come back within a quantization step of the bf16 weights.
    std::vector<float> row(K);
    for (int n : {0, 63, 64, 129}) {
      lin.row(n, row.data());
      for (int k = 0; k < K; ++k) REQUIRE(std::abs(row[k] - bf16_to_f32(w16[size_t(n) * K + k])) <= (f == WeightFormat::Q8_0 ? 0.005 : 0.15));
    }
    // Decode rows: int8 activations against the quants, close to the product
    // of the bf16 weights. Prompt rows: oneDNN on the dequantized weights,
    // rounded to bf16 with the activations at the avx512bf16 tier, exact
    // (f32) below it, as exact as f32 sums allow.
    const DType tile_type = cpu_tier() == CpuTier::avx512bf16 ? DType::BF16 : DType::F32;
    const int M = 6;
    const auto x = uniform(size_t(M) * K, 22);
    std::vector<float> yp(size_t(M) * N), yd(size_t(M) * N), yi(size_t(M) * N);
    set_quant_prompt(QuantPrompt::tiles);
    lin.forward(x.data(), yp.data(), M);
    set_quant_prompt(QuantPrompt::int8);  // prompt rows on the decode kernels: the same results
    lin.forward(x.data(), yi.data(), M);
    set_quant_prompt(QuantPrompt::automatic);
    lin.forward_decode(x.data(), yd.data(), M);
    REQUIRE(yi == yd);
    for (int n = 0; n < N; ++n) {
      lin.row(n, row.data());
      for (int m = 0; m < M; ++m) {
        double want = 0, mag = 0, tile = 0, tile_mag = 0;
        for (int k = 0; k < K; ++k) {
          const double p = double(x[size_t(m) * K + k]) * bf16_to_f32(w16[size_t(n) * K + k]);
          want += p;
          mag += std::abs(p);
          const double t = double(round_to(tile_type, x[size_t(m) * K + k])) * round_to(tile_type, row[k]);
          tile += t;
          tile_mag += std::abs(t);
        }
        INFO("row " << m << " col " << n);
        REQUIRE(std::abs(yd[size_t(m) * N + n] - want) <= (f == WeightFormat::Q8_0 ? 0.01 : 0.1) * mag);
        REQUIRE(std::abs(yp[size_t(m) * N + n] - tile) <= (K + 2) * std::ldexp(1.0, -24) * tile_mag + 1e-30);
      }
    }
  }
}
