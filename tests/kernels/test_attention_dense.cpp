// Dense decode attention (the kernels of every CPU tier, f32 and bf16 caches,
// thread split), prefill, the settings rules (resolve_sparq, parsing, byte
// counts, counters) and the attention bench's report. References: a double-precision scalar attention
// written here, and the float64 dense outputs in ../shared/golden/sparq.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sparq/kernels/attention.h"
#include "sparq/kernels/attention_dense.h"
#include "sparq/kernels/bandwidth.h"
#include "sparq/bench/bench_attention.h"
#include "sparq/util/cpu.h"
#include "sparq/io/safetensors.h"
#include "cpu_tiers.h"
#include "kv_test_data.h"
#include "test_util.h"

using namespace sparq;

namespace {

// Keys and values of one layer, as store() takes them: [S][n_kv][d].
struct KV {
  int S, nkv, d;
  std::vector<float> k, v;
  KV(int S_, int nkv_, int d_) : S(S_), nkv(nkv_), d(d_), k(size_t(S_) * nkv_ * d_), v(k.size()) {}
  void fill(KVCache& c, int layer = 0) const {
    for (int p = 0; p < S; ++p) c.store(layer, p, &k[size_t(p) * nkv * d], &v[size_t(p) * nkv * d]);
  }
  // The values a cache of type t holds.
  KV as_stored(KVType t) const {
    KV r = *this;
    r.k = test::as_stored(k, t);
    r.v = test::as_stored(v, t);
    return r;
  }
};

KV random_kv(int S, int nkv, int d, float scale, uint32_t seed) {
  KV kv(S, nkv, d);
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  for (float& x : kv.k) x = nd(rng);
  for (float& x : kv.v) x = nd(rng);
  return kv;
}

std::vector<float> random_q(int n, float scale, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> nd(0.f, scale);
  std::vector<float> q(static_cast<size_t>(n));
  for (float& x : q) x = nd(rng);
  return q;
}

// Softmax(q.k / sqrt(d)) . V over the first S positions, in double, with
// keys, values and q as a cache of type t holds or meets them. abs_v, if
// given, gets the same weighted sum of |v|.
std::vector<double> reference(const std::vector<float>& q_given, const KV& kv_given, int S, int n_heads, KVType t,
                              std::vector<double>* abs_v = nullptr) {
  const KV kv = kv_given.as_stored(t);
  const std::vector<float> q = test::as_query(q_given, t);
  const int d = kv.d, group = n_heads / kv.nkv;
  std::vector<double> out(size_t(n_heads) * d, 0.0), s(static_cast<size_t>(S));
  if (abs_v) abs_v->assign(out.size(), 0.0);
  for (int h = 0; h < n_heads; ++h) {
    const int kh = h / group;
    for (int p = 0; p < S; ++p) {
      double dot = 0;
      for (int c = 0; c < d; ++c) dot += double(q[size_t(h) * d + c]) * kv.k[(size_t(p) * kv.nkv + kh) * d + c];
      s[p] = dot / std::sqrt(double(d));
    }
    const double m = *std::max_element(s.begin(), s.end());
    double l = 0;
    for (double& x : s) l += x = std::exp(x - m);
    for (int p = 0; p < S; ++p)
      for (int c = 0; c < d; ++c) {
        const double x = kv.v[(size_t(p) * kv.nkv + kh) * d + c];
        out[size_t(h) * d + c] += s[p] / l * x;
        if (abs_v) (*abs_v)[size_t(h) * d + c] += s[p] / l * std::abs(x);
      }
  }
  return out;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(double(a[i]) - b[i]));
  return m;
}

const AttentionSettings kDense{};

// The kernel tiers to check: portable always, and each SIMD tier the CPU
// has (a WARN names those it lacks).
std::vector<CpuTier> kernel_tiers() { return test::all_tiers_here(); }

struct Threads {  // sets the OpenMP thread count for one scope
  int saved = omp_get_max_threads();
  explicit Threads(int n) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(saved); }
};

// How far n prefill outputs exceed what they may differ from the double
// reference (<= 0: within): tol, plus, for bf16 caches, the avx512bf16 kernel's
// bf16 weights (each within 2^-8 relative, so an output within 2^-8 of the
// weighted sum of |v|). A non-finite output exceeds it.
double prefill_excess(const float* out, const std::vector<double>& want, const std::vector<double>& abs_v, KVType t,
                      double tol) {
  double worst = 0;
  for (size_t j = 0; j < want.size(); ++j) {
    const double bound = tol + (t == KVType::BF16 ? std::ldexp(abs_v[j], -8) : 0.0);
    worst = std::max(worst, std::abs(double(out[j]) - want[j]) - bound);
    if (!std::isfinite(out[j])) worst = 1;
  }
  return worst;
}

// Prefill of T tokens from position p0 at layer 0 (queries [T][n_heads][d])
// against the double reference, token by token, within prefill_excess's bound.
void check_prefill(const KVCache& c, const KV& kv, int p0, int T, int n_heads, const std::vector<float>& q,
                   double tol) {
  const int d = c.shape().head_dim;
  const KVType t = c.shape().type;
  std::vector<float> out(q.size());
  attention_prefill(c, 0, p0, T, n_heads, q.data(), size_t(n_heads) * d, out.data());
  std::vector<double> abs_v;
  for (int i = 0; i < T; ++i) {
    const size_t o = size_t(i) * n_heads * d;
    const std::vector<float> qi(q.begin() + long(o), q.begin() + long(o) + n_heads * d);
    const std::vector<double> want = reference(qi, kv, p0 + i + 1, n_heads, t, &abs_v);
    CAPTURE(i);
    REQUIRE(prefill_excess(&out[o], want, abs_v, t, tol) <= 0);
  }
}

std::vector<float> decode(const KVCache& c, int S, int n_heads, const std::vector<float>& q) {
  std::vector<float> out(q.size());
  const DecodeQuery dq{&c, S, q.data(), out.data()};
  attention_decode({&dq, 1}, 0, n_heads, kDense, nullptr);
  return out;
}

}  // namespace

// d = 33: an odd head size leaves the last component without a bf16 partner.
TEST_CASE("dense decode matches a double reference on all shapes", "[attention]") {
  const int kS[] = {1, 2, 15, 16, 17, 255, 256, 257, 1000, 4100};
  const int nkv = 2, maxS = 4100;
  for (CpuTier tier : kernel_tiers()) {
    const test::TierScope scope(tier);
    for (KVType t : test::kAllKVTypes)
      for (int d : {8, 33, 64, 96, 128})
        for (int group : {1, 4}) {
          if (!test::takes(t, d)) continue;
          CAPTURE(cpu_tier_name(tier), kv_type_name(t), d, group);
          const int nh = nkv * group;
          const KV kv = random_kv(maxS, nkv, d, 1.0f, uint32_t(d * 10 + group));
          KVCache c(KVShape{1, nkv, d, maxS, t});
          kv.fill(c);
          // One batch: a query per S, each over the first S positions.
          std::vector<std::vector<float>> qs, outs;
          std::vector<DecodeQuery> batch;
          for (int S : kS) {
            qs.push_back(random_q(nh * d, 1.5f, uint32_t(S)));
            outs.emplace_back(size_t(nh) * d);
          }
          for (size_t i = 0; i < qs.size(); ++i) batch.push_back(DecodeQuery{&c, kS[i], qs[i].data(), outs[i].data()});
          attention_decode(batch, 0, nh, kDense, nullptr);
          for (size_t i = 0; i < qs.size(); ++i) {
            CAPTURE(kS[i]);
            CHECK(max_abs_diff(outs[i], reference(qs[i], kv, kS[i], nh, t)) < 2e-5);
          }
        }
  }
}

TEST_CASE("dense decode handles groups that take several kernel passes", "[attention]") {
  const int d = 64, nkv = 2, S = 600;
  for (CpuTier tier : kernel_tiers()) {
    const test::TierScope scope(tier);
    for (int group : {2, 3, 8, 12}) {
      CAPTURE(cpu_tier_name(tier), group);
      const KV kv = random_kv(S, nkv, d, 1.0f, uint32_t(group));
      KVCache c(KVShape{1, nkv, d, S, KVType::BF16});
      kv.fill(c);
      const std::vector<float> q = random_q(nkv * group * d, 1.5f, 2);
      CHECK(max_abs_diff(decode(c, S, nkv * group, q), reference(q, kv, S, nkv * group, KVType::BF16)) < 2e-5);
    }
  }
}

TEST_CASE("dense decode matches the golden dense outputs", "[attention][golden]") {
  const std::string path = test::shared_dir() + "/golden/sparq/vectors.safetensors";
  SPARQ_REQUIRE_SHARED(path);
  SafetensorsFile f(path);
  const auto tensor = [&](const std::string& name) {
    const TensorRef* t = f.find(name);
    REQUIRE(t);
    return t;
  };
  int cases = 0;
  for (const TensorRef& dense : f.tensors()) {
    const std::string& name = dense.name;
    if (name.size() < 6 || name.compare(name.size() - 6, 6, ".dense") != 0) continue;
    const std::string input = name.substr(0, name.size() - 6);
    const TensorRef* K = tensor(input + ".K");
    const TensorRef* V = tensor(input + ".V");
    const TensorRef* Q = tensor(input + ".q");
    REQUIRE(K->dtype == DType::F32);
    const int S = int(K->shape[0]), nkv = int(K->shape[1]), d = int(K->shape[2]), nh = int(Q->shape[0]);
    const auto* want = static_cast<const double*>(dense.data);
    REQUIRE(dense.nbytes == size_t(nh) * d * sizeof(double));
    std::vector<float> q(static_cast<const float*>(Q->data), static_cast<const float*>(Q->data) + size_t(nh) * d);
    for (CpuTier tier : kernel_tiers()) {
      const test::TierScope scope(tier);
      for (KVType t : {KVType::F32, KVType::BF16}) {
        CAPTURE(input, cpu_tier_name(tier), kv_type_name(t));
        KVCache c(KVShape{1, nkv, d, S, t});
        const auto* k = static_cast<const float*>(K->data);
        const auto* v = static_cast<const float*>(V->data);
        for (int p = 0; p < S; ++p) c.store(0, p, k + size_t(p) * nkv * d, v + size_t(p) * nkv * d);
        const std::vector<float> out = decode(c, S, nh, q);
        double diff = 0;
        for (size_t i = 0; i < out.size(); ++i) diff = std::max(diff, std::abs(double(out[i]) - want[i]));
        // Tolerances of golden/sparq/cases.json: f32 1e-4, bf16 cache 2e-2.
        CHECK(diff <= (t == KVType::F32 ? 1e-4 : 2e-2));
      }
    }
    ++cases;
  }
  CHECK(cases == 5);
}

TEST_CASE("dense decode split over threads equals the unsplit result", "[attention]") {
  for (CpuTier tier : kernel_tiers()) {
    const test::TierScope scope(tier);
    for (KVType t : test::kAllKVTypes)
      for (int S : {2048, 3001, 5000}) {
        CAPTURE(cpu_tier_name(tier), kv_type_name(t), S);
        const int d = 64, group = 4;
        const KV kv = random_kv(S, 1, d, 1.0f, 3);
        KVCache c(KVShape{1, 1, d, S, t});
        kv.fill(c);
        const std::vector<float> q = random_q(group * d, 2.0f, 4);
        std::vector<float> one, two, three;
        {
          Threads th(1);
          one = decode(c, S, group, q);
        }
        {
          Threads th(2);
          two = decode(c, S, group, q);
        }
        {
          Threads th(3);
          three = decode(c, S, group, q);
        }
        const std::vector<double> ref(one.begin(), one.end());
        CHECK(max_abs_diff(two, ref) < 1e-6);
        CHECK(max_abs_diff(three, ref) < 1e-6);
        CHECK(max_abs_diff(one, reference(q, kv, S, group, t)) < 2e-5);
      }
  }
}

TEST_CASE("dense decode and prefill handle adversarial keys", "[attention]") {
  const int d = 64, nkv = 1, group = 4, S = 1100;
  std::mt19937 rng(9);
  std::normal_distribution<float> nd;
  // Each case fills keys from a rule; values stay random.
  struct Case {
    const char* what;
    float (*key)(int p, int c, float noise);
    float qscale;
  };
  const Case cases[] = {
      {"all keys equal (uniform weights)", [](int, int c, float) { return 0.25f * float(c % 7); }, 1.0f},
      {"large magnitudes (one-hot softmax)", [](int, int, float n) { return 300.0f * n; }, 30.0f},
      {"scores rising with position (max moves every block)",
       [](int p, int c, float) { return 0.01f * float(p) * (c % 2 ? 1.f : -1.f); }, 1.0f},
      {"scores falling with position", [](int p, int c, float) { return 0.01f * float(S - p) * (c % 2 ? 1.f : -1.f); },
       1.0f},
      {"tiny values", [](int, int, float n) { return 1e-30f * n; }, 1e-6f},
  };
  for (const Case& cs : cases) {
    KV kv(S, nkv, d);
    for (int p = 0; p < S; ++p)
      for (int c = 0; c < d; ++c) kv.k[size_t(p) * d + c] = cs.key(p, c, nd(rng));
    for (float& x : kv.v) x = nd(rng);
    std::vector<float> q(size_t(group) * d);
    for (int h = 0; h < group; ++h)
      for (int c = 0; c < d; ++c) q[size_t(h) * d + c] = cs.qscale * (h == 0 ? (c % 2 ? 1.f : -1.f) : nd(rng));
    for (CpuTier tier : kernel_tiers()) {
      const test::TierScope scope(tier);
      for (KVType t : test::kAllKVTypes) {
        CAPTURE(cs.what, cpu_tier_name(tier), kv_type_name(t));
        KVCache c(KVShape{1, nkv, d, S, t});
        kv.fill(c);
        const std::vector<float> out = decode(c, S, group, q);
        for (float x : out) REQUIRE(std::isfinite(x));
        CHECK(max_abs_diff(out, reference(q, kv, S, group, t)) < 5e-5);
        // The same keys through prefill: the last tokens, each with this q.
        const int T = 70;
        std::vector<float> qs;
        for (int i = 0; i < T; ++i) qs.insert(qs.end(), q.begin(), q.end());
        check_prefill(c, kv, S - T, T, group, qs, 5e-5);
      }
    }
  }
}

TEST_CASE("prefill matches a double reference on all shapes", "[attention]") {
  struct Shape {
    int d, group, p0, T;
  };
  // Odd head sizes, MHA and GQA, prompts from the start and after a cache,
  // tokens that fill several 64-vector tiles and key blocks.
  const Shape shapes[] = {{8, 1, 0, 70}, {33, 4, 0, 45}, {64, 4, 300, 45}, {64, 1, 0, 130},
                          {80, 2, 17, 66}, {128, 6, 1000, 20}};
  const int nkv = 2;
  for (CpuTier tier : kernel_tiers()) {
    const test::TierScope scope(tier);
    for (const Shape& sh : shapes)
      for (KVType t : test::kAllKVTypes) {
        if (!test::takes(t, sh.d)) continue;
        CAPTURE(cpu_tier_name(tier), kv_type_name(t), sh.d, sh.group, sh.p0, sh.T);
        const int S = sh.p0 + sh.T, nh = nkv * sh.group;
        const KV kv = random_kv(S, nkv, sh.d, 1.0f, uint32_t(sh.d + sh.T));
        KVCache c(KVShape{1, nkv, sh.d, S, t});
        kv.fill(c);
        check_prefill(c, kv, sh.p0, sh.T, nh, random_q(sh.T * nh * sh.d, 1.5f, uint32_t(sh.p0)), 2e-5);
      }
  }
}

TEST_CASE("prefill kernels take query vectors with any last positions", "[attention]") {
  // Unordered, repeated and first-position limits, more vectors than a tile.
  const int d = 64, S = 200, n = 150;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int> pos(0, S - 1);
  std::vector<int> last(n);
  for (int& x : last) x = pos(rng);
  last[0] = 0;
  last[1] = last[2] = S - 1;
  const std::vector<float> q = random_q(n * d, 1.5f, 6);
  const KV kv = random_kv(S, 1, d, 1.0f, 7);
  for (CpuTier tier : kernel_tiers())
    for (KVType t : test::kAllKVTypes) {
      CAPTURE(cpu_tier_name(tier), kv_type_name(t));
      KVCache c(KVShape{1, 1, d, S, t});
      kv.fill(c);
      std::vector<float> out(q.size());
      std::vector<const float*> qp;
      std::vector<float*> op;
      // The kernel takes queries as q8_0 keys meet them (attention_prefill quantizes them).
      const std::vector<float> qk = t == KVType::Q8_0 ? test::as_query(q, t) : q;
      for (int i = 0; i < n; ++i) {
        qp.push_back(&qk[size_t(i) * d]);
        op.push_back(&out[size_t(i) * d]);
      }
      const PrefillSpan span{c.k_rows(0, 0), c.v_rows(0, 0), t, d, n, qp.data(), last.data(), op.data()};
      dense_kernels(tier).prefill_attention(span);
      std::vector<double> abs_v;
      for (int i = 0; i < n; ++i) {
        const std::vector<float> qi(q.begin() + i * d, q.begin() + (i + 1) * d);
        const std::vector<double> want = reference(qi, kv, last[i] + 1, 1, t, &abs_v);
        CAPTURE(i, last[i]);
        REQUIRE(prefill_excess(&out[size_t(i) * d], want, abs_v, t, 2e-5) <= 0);
      }
    }
}

TEST_CASE("prefill reads queries at a stride and equals decode for f32 caches", "[attention]") {
  const int d = 64, nkv = 2, group = 4, nh = nkv * group, p0 = 300, T = 45;
  for (CpuTier tier : kernel_tiers()) {
    const test::TierScope scope(tier);
    for (KVType t : test::kAllKVTypes) {
      CAPTURE(cpu_tier_name(tier), kv_type_name(t));
      const KV kv = random_kv(p0 + T, nkv, d, 1.0f, 11);
      KVCache c(KVShape{2, nkv, d, p0 + T, t});
      kv.fill(c, 1);
      const std::vector<float> q = random_q(T * nh * d, 1.0f, 12);
      std::vector<float> out(q.size()), packed(q.size());
      // Queries spaced as in the model's qkv rows, the gaps holding junk.
      const size_t stride = size_t(nh + 2 * nkv) * d;
      std::vector<float> spaced(T * stride, std::numeric_limits<float>::quiet_NaN());
      for (int i = 0; i < T; ++i) std::copy_n(&q[size_t(i) * nh * d], nh * d, &spaced[i * stride]);
      attention_prefill(c, 1, p0, T, nh, spaced.data(), stride, out.data());
      attention_prefill(c, 1, p0, T, nh, q.data(), size_t(nh) * d, packed.data());
      CHECK(out == packed);
      // f32 weights (f32 caches, and every tier but avx512bf16's bf16 weights)
      // give decode's results.
      if (t == KVType::F32 || tier != CpuTier::avx512bf16)
        for (int i = 0; i < T; ++i) {
          const std::vector<float> qi(q.begin() + i * nh * d, q.begin() + (i + 1) * nh * d);
          std::vector<float> want(qi.size());
          const DecodeQuery dq{&c, p0 + i + 1, qi.data(), want.data()};
          attention_decode({&dq, 1}, 1, nh, kDense, nullptr);
          for (int j = 0; j < nh * d; ++j) REQUIRE(out[size_t(i) * nh * d + j] == Approx(want[j]).margin(1e-6));
        }
      // The first prompt token sees only itself: its output is its value row.
      std::vector<float> first(size_t(nh) * d);
      attention_prefill(c, 1, 0, 1, nh, q.data(), size_t(nh) * d, first.data());
      for (int h = 0; h < nh; ++h)
        for (int j = 0; j < d; ++j) REQUIRE(first[size_t(h) * d + j] == kv.as_stored(t).v[size_t(h / group) * d + j]);
    }
  }
}

TEST_CASE("attention rejects bad queries with a clear error", "[attention]") {
  KVCache c(KVShape{2, 2, 16, 64, KVType::F32});
  const KV kv = random_kv(10, 2, 16, 1.0f, 1);
  kv.fill(c);
  std::vector<float> q(4 * 16), out(q.size());
  auto run = [&](int S, int layer, int nh) {
    const DecodeQuery dq{&c, S, q.data(), out.data()};
    attention_decode({&dq, 1}, layer, nh, kDense, nullptr);
  };
  CHECK_THROWS_WITH(run(11, 0, 4), Catch::Contains("query over 11 positions but layer 0 holds 10"));
  CHECK_THROWS_WITH(run(0, 0, 4), Catch::Contains("query over 0 positions"));
  CHECK_THROWS_WITH(run(5, 2, 4), Catch::Contains("layer 2 out of range"));
  CHECK_THROWS_WITH(run(5, 0, 3), Catch::Contains("3 query heads is not a multiple of 2 KV heads"));
  CHECK_THROWS_WITH(attention_prefill(c, 0, 8, 3, 4, q.data(), 4 * 16, out.data()),
                    Catch::Contains("prompt positions 8..10 but layer 0 holds 10"));
  CHECK_NOTHROW(run(10, 0, 4));
}

TEST_CASE("resolve_sparq applies the ratio rule, caps and the dense fallback", "[attention][settings]") {
  SparqSettings s;
  s.ratio = 8;
  SparqStep st = resolve_sparq(s, 4096, 64);  // r = 64/8, k = max(4096/16, 128), l = k/4
  CHECK((st.r == 8 && st.k == 256 && st.l == 64 && !st.dense && !st.mean));
  st = resolve_sparq(s, 1000, 64);  // 1000/16 = 62 < floor 128
  CHECK((st.r == 8 && st.k == 128 && st.l == 32 && !st.dense));
  // Near the break-even point: S*r + 2*k*d against 2*S*d.
  st = resolve_sparq(s, 137, 64);  // 137*8 + 2*128*64 = 17480 < 2*137*64 = 17536
  CHECK((st.k == 128 && !st.dense));
  st = resolve_sparq(s, 136, 64);  // 136*8 + 2*128*64 = 17472 >= 2*136*64 = 17408
  CHECK((st.k == 128 && st.dense));
  st = resolve_sparq(s, 128, 64);  // k = S: as many bytes as dense
  CHECK((st.k == 128 && st.dense));
  st = resolve_sparq(s, 100, 64);  // k capped at S
  CHECK((st.k == 100 && st.l == 25 && st.dense));
  st = resolve_sparq(s, 40000, 4);  // r never below 1
  CHECK((st.r == 1 && st.k == 2500));

  s.k_floor = 16;
  s.local = 7;
  s.mean_mixing = true;
  st = resolve_sparq(s, 1000, 64);
  CHECK((st.k == 62 && st.l == 7 && st.mean));
  s.local = 500;  // local capped at k
  CHECK(resolve_sparq(s, 1000, 64).l == 62);

  SparqSettings e{.r = 100, .k = 5000, .local = -1, .ratio = 0, .k_floor = 128, .mean_mixing = false};
  st = resolve_sparq(e, 3000, 64);  // explicit values, capped at d and S: exactly dense
  CHECK((st.r == 64 && st.k == 3000 && st.l == 750 && st.dense));
  e.r = 4;
  e.k = 300;
  st = resolve_sparq(e, 3000, 64);
  CHECK((st.r == 4 && st.k == 300 && st.l == 75 && !st.dense));
  SparqSettings half{.r = 16, .k = 0, .local = -1, .ratio = 4, .k_floor = 128, .mean_mixing = false};
  st = resolve_sparq(half, 8000, 128);  // r explicit, k from the ratio
  CHECK((st.r == 16 && st.k == 1000));
  half.r = 0;
  half.k = 50;
  st = resolve_sparq(half, 8000, 128);  // k explicit, r from the ratio
  CHECK((st.r == 32 && st.k == 50 && st.l == 12));

  CHECK(dense_step_bytes(1000, 64, KVType::BF16) == 2 * 1000 * 64 * 2);
  CHECK(dense_step_bytes(1000, 64, KVType::F32) == 2 * 1000 * 64 * 4);
  const SparqStep p{.dense = false, .r = 8, .k = 256, .l = 64, .mean = false};
  CHECK(sparq_step_bytes(p, 4096, 64, KVType::BF16) == 4096 * 8 * 2 + 2 * 256 * 64 * 2);
  SparqStep pm = p;
  pm.mean = true;
  CHECK(sparq_step_bytes(pm, 4096, 64, KVType::F32) == 4096 * 8 * 4 + 2 * 256 * 64 * 4 + 64 * 4);
}

TEST_CASE("SparQ settings are validated", "[attention][settings]") {
  SparqSettings ok;
  ok.ratio = 8;
  CHECK_NOTHROW(ok.validate());
  SparqSettings s = ok;
  s.r = -1;
  CHECK_THROWS_WITH(s.validate(), Catch::Contains("r must be >= 0") && Catch::Contains("-1"));
  s = ok;
  s.k = -2;
  CHECK_THROWS_WITH(s.validate(), Catch::Contains("k must be >= 0"));
  s = ok;
  s.local = -3;
  CHECK_THROWS_WITH(s.validate(), Catch::Contains("local window"));
  s = ok;
  s.ratio = -8;
  CHECK_THROWS_WITH(s.validate(), Catch::Contains("ratio must be >= 0"));
  s = ok;
  s.k_floor = 0;
  CHECK_THROWS_WITH(s.validate(), Catch::Contains("k floor"));
  s = ok;
  s.ratio = 0;
  s.r = 8;  // k missing and no ratio
  CHECK_THROWS_WITH(s.validate(), Catch::Contains("needs r and k, or a ratio"));
  CHECK_THROWS_WITH(resolve_sparq(s, 1000, 64), Catch::Contains("needs r and k"));
  s.k = 64;
  CHECK_NOTHROW(s.validate());
}

TEST_CASE("attention settings parse and describe themselves", "[attention][settings]") {
  AttentionSettings a = parse_attention_setting("dense");
  CHECK((!a.sparq && a.describe() == "dense"));
  a = parse_attention_setting("sparq");
  CHECK((a.sparq && a.sp.ratio == 8 && a.sp.r == 0 && a.sp.k == 0 && a.describe() == "sparq 1/8"));
  a = parse_attention_setting("sparq:16");
  CHECK((a.sp.ratio == 16 && a.describe() == "sparq 1/16"));
  a = parse_attention_setting("sparq:r=8,k=512");
  CHECK((a.sp.r == 8 && a.sp.k == 512 && a.sp.ratio == 0 && a.sp.local == -1));
  CHECK(a.describe() == "sparq r=8 k=512 l=128");
  a = parse_attention_setting("sparq:r=8,k=512,l=32,mean");
  CHECK((a.sp.local == 32 && a.sp.mean_mixing && a.describe() == "sparq r=8 k=512 l=32 mean"));
  a = parse_attention_setting("sparq:4,r=16,floor=64");
  CHECK((a.sp.ratio == 4 && a.sp.r == 16 && a.sp.k_floor == 64 && a.describe() == "sparq 1/4 r=16 floor=64"));
  a = parse_attention_setting("sparq:ratio=2,k=100");
  CHECK((a.sp.ratio == 2 && a.sp.k == 100 && a.describe() == "sparq 1/2 k=100 l=25"));

  a = parse_attention_setting("sparq:r=8");  // k from the default ratio
  CHECK((a.sp.r == 8 && a.sp.k == 0 && a.sp.ratio == 8 && a.describe() == "sparq 1/8 r=8"));

  for (const char* text : {"Dense", "sparq:", "sparq:x", "sparq:ratio=0,r=8", "sparq:r=8,k=", "sparq:8,,mean", "sparq:q=3", "sparq:8,",
                           "sparq:-4", "sparq:r=1,k=2,l=-5", "sparq:99999999999", "sparse"})
    CHECK_THROWS_WITH(parse_attention_setting(text),
                      Catch::StartsWith(std::string("bad attention setting '") + text + "'"));
  CHECK_THROWS_WITH(parse_attention_setting("sparq:ratio=0,r=8"), Catch::Contains("needs r and k, or a ratio"));
  CHECK_THROWS_WITH(parse_attention_setting("sparq:8,"), Catch::Contains("empty item"));
  CHECK_THROWS_WITH(parse_attention_setting("sparq:q=3"), Catch::Contains("unknown key 'q'"));
}

TEST_CASE("decode counters count calls, bytes and dense fallbacks", "[attention][settings]") {
  const int d = 32, nkv = 2, nh = 4;
  KVCache c(KVShape{1, nkv, d, 200, KVType::BF16});
  random_kv(100, nkv, d, 1.0f, 5).fill(c);
  const std::vector<float> q = random_q(nh * d, 1.0f, 6);
  std::vector<float> o1(q.size()), o2(q.size());
  const DecodeQuery batch[2] = {{&c, 100, q.data(), o1.data()}, {&c, 60, q.data(), o2.data()}};
  AttnCounters dense, fallback;
  attention_decode(batch, 0, nh, kDense, &dense);
  const uint64_t bytes = nkv * (dense_step_bytes(100, d, KVType::BF16) + dense_step_bytes(60, d, KVType::BF16));
  CHECK((dense.calls == 2 && dense.kv_bytes == bytes && dense.dense_bytes == bytes && dense.dense_fallbacks == 0));
  CHECK(dense.seconds > 0);
  // S below the k floor: SparQ would read as much as dense, so dense runs.
  attention_decode(batch, 0, nh, parse_attention_setting("sparq:8"), &fallback);
  CHECK((fallback.calls == 2 && fallback.kv_bytes == bytes && fallback.dense_fallbacks == 2));
  AttnCounters sum = dense;
  sum.t_step1 = 1;
  sum.add(fallback);
  CHECK((sum.calls == 4 && sum.kv_bytes == 2 * bytes && sum.dense_bytes == 2 * bytes && sum.dense_fallbacks == 2));
  CHECK(sum.seconds == dense.seconds + fallback.seconds);
  CHECK(sum.t_step1 == 1);
}

namespace {

std::string bench_output(const AttentionBenchOptions& o) {
  return test::output_of([&](std::FILE* f) { CHECK(run_attention_bench(o, f) == 0); });
}

}  // namespace

TEST_CASE("attention bench reports bytes, speedups and its formats", "[attention][bench]") {
  AttentionBenchOptions o;
  o.seq_lens = {300};
  o.head_dims = {16};
  o.groups = {2};
  o.n_kv_heads = 2;
  o.settings = {"sparq:r=4,k=64", "dense"};
  o.reps = 2;
  o.min_cache_mib = 1;
  o.bandwidth_gbs = 50;  // not measured: the test stays fast
  o.format = "json";
  const nlohmann::json j = nlohmann::json::parse(bench_output(o));
  CHECK(j["bandwidth_gbs"] == 50.0);
  REQUIRE(j["rows"].size() == 3);
  const auto& sparse = j["rows"][0];
  const auto& dense = j["rows"][1];
  const auto& read = j["rows"][2];  // the plain read of dense's bytes, timed alongside
  CHECK(read["setting"] == "read");
  // each of the 2 KV heads' k_t and v_rows, read in 256-byte steps
  CHECK(read["kv_bytes"] == double(2 * 2 * (dense_step_bytes(300, 16, KVType::BF16) / 2 / 256 * 256)));
  CHECK(read["pct_read"] == 100.0);
  CHECK(read["speedup_vs_dense"].get<double>() == Approx(dense["ms_mean"].get<double>() / read["ms_mean"].get<double>()));
  CHECK(sparse["pct_read"].get<double>() == Approx(100 * sparse["gbs"].get<double>() / read["gbs"].get<double>()));
  CHECK(dense["setting"] == "dense");
  CHECK(dense["kv_bytes"] == double(2 * dense_step_bytes(300, 16, KVType::BF16)));
  CHECK(dense["speedup_vs_dense"] == 1.0);
  CHECK(dense["layers"].get<int>() * 2 * dense_step_bytes(300, 16, KVType::BF16) >= (size_t(1) << 20));
  const SparqStep st = resolve_sparq(parse_attention_setting("sparq:r=4,k=64").sp, 300, 16);
  REQUIRE(!st.dense);
  CHECK(sparse["kv_bytes"] == double(2 * sparq_step_bytes(st, 300, 16, KVType::BF16)));
  CHECK(sparse["speedup_vs_dense"].get<double>() ==
        Approx(dense["ms_mean"].get<double>() / sparse["ms_mean"].get<double>()));
  CHECK(sparse["pct_bandwidth"].get<double>() == Approx(100 * sparse["gbs"].get<double>() / 50));

  o.format = "csv";
  const std::string csv = bench_output(o);
  CHECK(std::count(csv.begin(), csv.end(), '\n') == 4);
  CHECK(csv.rfind("setting,kv_type,S,d,group,layers,ms_mean", 0) == 0);
  o.format = "markdown";
  const std::string md = bench_output(o);
  CHECK(md.find("random data") != std::string::npos);
  CHECK(md.find("measured read bandwidth 50.0 GB/s") != std::string::npos);
  CHECK(md.find("| dense | bf16 | 300 | 16 | 2 |") != std::string::npos);

  // KV types take turns: each its own rows, read and dense speedups, and the
  // later ones timed against the first.
  o.format = "json";
  o.head_dims = {32};
  o.kv_types = {KVType::BF16, KVType::Q8_0};
  const nlohmann::json two = nlohmann::json::parse(bench_output(o));
  REQUIRE(two["rows"].size() == 6);
  CHECK(two["kv_type"] == "bf16,q8_0");
  for (int i = 0; i < 3; ++i) {
    const auto& b = two["rows"][i];
    const auto& q = two["rows"][i + 3];
    CHECK(b["kv_type"] == "bf16");
    CHECK(q["kv_type"] == "q8_0");
    CHECK(q["setting"] == b["setting"]);
    CHECK(b["speedup_vs_first_kv"].is_null());
    if (i < 2) CHECK(q["speedup_vs_first_kv"].get<double>() == Approx(b["ms_mean"].get<double>() / q["ms_mean"].get<double>()));
  }
  CHECK(two["rows"][4]["kv_bytes"] == double(2 * dense_step_bytes(300, 32, KVType::Q8_0)));
  CHECK(two["rows"][5]["kv_bytes"] == double(2 * 2 * (300 * kv_row_bytes(KVType::Q8_0, 32) / 256 * 256)));
  CHECK(two["rows"][3]["kv_bytes"] == double(2 * sparq_step_bytes(resolve_sparq(parse_attention_setting("sparq:r=4,k=64").sp, 300, 32), 300, 32, KVType::Q8_0)));
  o.head_dims = {16};
  o.kv_types = {KVType::BF16};

  o.format = "xml";
  CHECK_THROWS_WITH(run_attention_bench(o), Catch::Contains("format must be md, csv, json or jsonl"));
  o.format = "csv";
  o.settings = {"fast"};
  CHECK_THROWS_WITH(run_attention_bench(o), Catch::Contains("bad attention setting 'fast'"));
  o.settings = {"dense"};
  o.reps = 0;
  CHECK_THROWS_WITH(run_attention_bench(o), Catch::Contains("reps must be >= 1"));
  o.reps = 1;
  o.seq_lens = {};
  CHECK_THROWS_WITH(run_attention_bench(o), Catch::Contains("no sequence lengths"));
}

TEST_CASE("gather probe measures rows and rejects odd row sizes", "[attention][bench]") {
  CHECK_THROWS_WITH(measure_gather_bandwidth_gbs(1, 100, 16), Catch::Contains("multiple of 64 bytes"));
  CHECK_THROWS_WITH(measure_gather_bandwidth_gbs(1, 128, 0), Catch::Contains("every >= 1"));
  const double g = measure_gather_bandwidth_gbs(2, 128, 16);
  CHECK(g > 0.1);
  CHECK(std::isfinite(g));
}
