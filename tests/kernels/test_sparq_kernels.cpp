// SparQ kernels: every SIMD tier's kernels against the scalar reference on
// random and adversarial inputs (ties, tails, S < k, tiny and huge
// magnitudes), the whole decode at every tier, the thread split against the
// unsplit run, and the errors of the entry points.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <random>
#include <vector>

#include "sparq/util/cpu.h"
#include "sparq/kernels/kv_cache.h"
#include "sparq/kernels/sparq_decode.h"
#include "sparq/kernels/sparq_kernels.h"
#include "cpu_tiers.h"
#include "kv_test_data.h"
#include "test_util.h"

using namespace sparq;
using sparq::test::gaussian;
using sparq::test::make_cache;

namespace {

constexpr int B = kSparqBlock;
const auto& kTypes = test::kAllKVTypes;

// The SIMD tiers here, with their kernel tables.
struct TierKernels {
  CpuTier tier;
  const SparqKernels* k;
};
std::vector<TierKernels> simd_kernels() {
  std::vector<TierKernels> r;
  for (CpuTier t : test::simd_tiers_here()) r.push_back({t, &sparq_kernels(t)});
  return r;
}

struct Threads {
  int saved = omp_get_max_threads();
  explicit Threads(int n) { omp_set_num_threads(n); }
  ~Threads() { omp_set_num_threads(saved); }
};

// Integers in [-a, a] times 2^e: exact in bf16, and dot products of them are
// exact in f32, so both paths see identical scores and identical ties.
std::vector<float> grid(size_t n, int a, int e, std::mt19937& rng) {
  std::uniform_int_distribution<int> ud(-a, a);
  std::vector<float> v(n);
  for (float& x : v) x = std::ldexp(float(ud(rng)), e);
  return v;
}

// r distinct components of [0, d), ascending.
std::vector<int> some_components(int d, int r, std::mt19937& rng) {
  std::vector<int> c(static_cast<size_t>(d));
  std::iota(c.begin(), c.end(), 0);
  std::shuffle(c.begin(), c.end(), rng);
  c.resize(size_t(r));
  std::sort(c.begin(), c.end());
  return c;
}

// n distinct positions of [0, S), ascending.
std::vector<int> some_positions(int S, int n, std::mt19937& rng) { return some_components(S, n, rng); }

// |got - want| <= atol + rtol |want| everywhere; reports the first element that is not.
template <class T>
void require_close(const T* got, const T* want, size_t n, double atol, double rtol, const char* what) {
  size_t i = 0;
  while (i < n && std::abs(double(got[i]) - want[i]) <= atol + rtol * std::abs(double(want[i]))) ++i;
  if (i == n) return;
  INFO(what << "[" << i << "] got=" << got[i] << " want=" << want[i] << " atol=" << atol << " rtol=" << rtol);
  REQUIRE(i == n);
}

uint32_t key(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

// The selection rule, checked directly: m ascending indices, every chosen key
// >= every other key, and among keys equal to the smallest chosen one the
// chosen indices come first.
void require_topk_rule(const std::vector<float>& s, int m, const std::vector<int>& out) {
  const int n = int(s.size());
  REQUIRE(int(out.size()) == m);
  REQUIRE(std::is_sorted(out.begin(), out.end()));
  REQUIRE(std::adjacent_find(out.begin(), out.end()) == out.end());
  REQUIRE(std::all_of(out.begin(), out.end(), [n](int i) { return i >= 0 && i < n; }));
  std::vector<char> chosen(static_cast<size_t>(n), 0);
  uint32_t low = std::numeric_limits<uint32_t>::max();
  for (int i : out) {
    chosen[i] = 1;
    low = std::min(low, key(s[i]));
  }
  int last_low = -1;
  for (int i : out)
    if (key(s[i]) == low) last_low = i;
  int bad = -1;
  for (int i = 0; i < n && bad < 0; ++i)
    if (!chosen[i] && (key(s[i]) > low || (key(s[i]) == low && i < last_low))) bad = i;
  INFO("unchosen index " << bad << " beats or ties ahead of the lowest chosen key " << low);
  REQUIRE(bad == -1);
}

struct Step1Out {
  std::vector<float> e, mx, sum;
  explicit Step1Out(const SparqStep1Args& a) {
    const int nb = (a.S + B - 1) / B;
    e.assign(size_t(nb) * a.n_h * B, -1.0f);
    mx.assign(size_t(nb) * a.n_h, -1.0f);
    sum.assign(size_t(nb) * a.n_h, -1.0f);
  }
};

// Step 1 at every SIMD tier against the reference; x_tol bounds the score difference the summation order
// may make, so e = 2^(x - max) may differ by about ln2 * 2 x_tol.
void compare_step1(const SparqStep1Args& a, double x_tol, const std::vector<TierKernels>& tiers) {
  const int nb = (a.S + B - 1) / B;
  Step1Out r(a);
  ref::sparq_step1(a, 0, nb, r.e.data(), r.mx.data(), r.sum.data());
  for (const TierKernels& tk : tiers) {
    INFO("tier " << cpu_tier_name(tk.tier));
    Step1Out v(a);
    tk.k->step1(a, 0, nb, v.e.data(), v.mx.data(), v.sum.data());
    require_close(v.mx.data(), r.mx.data(), r.mx.size(), x_tol, 1e-6, "block max");
    const double e_tol = 2e-7 + 1.5 * x_tol;
    require_close(v.e.data(), r.e.data(), r.e.size(), e_tol, 1e-6, "e");
    require_close(v.sum.data(), r.sum.data(), r.sum.size(), B * e_tol, 1e-6, "block sum");
    // Blocks are independent: any split of the range gives the same bits.
    if (nb > 1) {
      Step1Out p(a);
      tk.k->step1(a, 0, 1, p.e.data(), p.mx.data(), p.sum.data());
      tk.k->step1(a, 1, nb, p.e.data(), p.mx.data(), p.sum.data());
      REQUIRE(p.e == v.e);
      REQUIRE(p.mx == v.mx);
      REQUIRE(p.sum == v.sum);
  }
  }
}

}  // namespace

TEST_CASE("sparq components: top-r of summed |q| with ties to the lower index, and tau", "[sparq]") {
  // Two heads, d = 6: summed |q| is {3, 5, 3, 5, 1, 3}; the top 3 are 1, 3 and
  // then the lowest-index 3 (component 0).
  const int d = 6, G = 2, r = 3;
  const float q[G * d] = {1, -2, 3, 4, 0, -1, -2, 3, 0, -1, 1, 2};
  int i1[r];
  float qs[G * r];
  sparq_select_components(q, G, d, r, KVType::F32, i1, qs);
  REQUIRE(std::vector<int>(i1, i1 + r) == std::vector<int>{0, 1, 3});
  for (int h = 0; h < G; ++h) {
    double part = 0, total = 0;
    for (int j = 0; j < r; ++j) part += std::abs(q[h * d + i1[j]]);
    for (int c = 0; c < d; ++c) total += std::abs(q[h * d + c]);
    const double inv_tau = 1.0 / std::sqrt(d * part / total);
    for (int j = 0; j < r; ++j)
      REQUIRE(qs[h * r + j] == Approx(q[h * d + i1[j]] * inv_tau * std::numbers::log2e).epsilon(1e-6));
  }
  // For bf16 keys the same values, rounded to bf16 as queries meet such keys.
  int i1b[r];
  float qsb[G * r];
  sparq_select_components(q, G, d, r, KVType::BF16, i1b, qsb);
  REQUIRE(std::vector<int>(i1b, i1b + r) == std::vector<int>(i1, i1 + r));
  for (int j = 0; j < G * r; ++j) REQUIRE(qsb[j] == query_for(KVType::BF16, qs[j]));
  // r = d keeps every component and tau = sqrt(d); a zero head gets zeros.
  const float z[d] = {0, 0, 0, 0, 0, 0};
  int all[d];
  float zs[d];
  sparq_select_components(z, 1, d, d, KVType::F32, all, zs);
  for (int c = 0; c < d; ++c) {
    REQUIRE(all[c] == c);
    REQUIRE(zs[c] == 0.0f);
  }
}

TEST_CASE("sparq step 1: every tier matches the reference on random keys", "[sparq]") {
  const std::vector<TierKernels> tiers = simd_kernels();
  std::mt19937 rng(11);
  for (KVType t : kTypes)
    for (int d : {8, 16, 64, 128})
      for (int G : {1, 2, 3, 4, 5, 8, 11})
        for (int S : {1, 17, 256, 300, 1000, 2100}) {
          if (!test::takes(t, d)) continue;
          const int r = std::vector<int>{1, d / 2 + 1, d}[size_t(S) % 3];
          INFO("type " << kv_type_name(t) << " d " << d << " G " << G << " S " << S << " r " << r);
          const KVCache c = make_cache(1, d, S, t, gaussian(size_t(S) * d, 1.0f, rng),
                                       gaussian(size_t(S) * d, 1.0f, rng));
          const std::vector<int> i1 = some_components(d, r, rng);
          std::vector<float> qs = gaussian(size_t(G) * r, 0.5f, rng);
          for (float& x : qs) x = query_for(t, x);  // the kernels' contract for bf16 keys
          // |x| <= sum_j |qs_j| max|K|; f32 sums of r terms agree to ~r ulp of that.
          double mag = 0;
          for (float x : qs) mag = std::max(mag, double(std::abs(x)) * 5.0 * r);
          compare_step1(SparqStep1Args{c.k_t(0, 0), t, d, S, i1.data(), r, qs.data(), G}, 1e-6 * mag, tiers);
        }
}

TEST_CASE("sparq step 1: exact scores at huge and tiny magnitudes, with ties", "[sparq]") {
  const std::vector<TierKernels> tiers = simd_kernels();
  std::mt19937 rng(12);
  // Keys of 2^60 or 2^-60 with queries scaled the other way (exact products),
  // and keys of 2^6 whose scores span hundreds of octaves: e is mostly 0 or
  // exactly tied at the top.
  const int scales[][2] = {{60, -62}, {-60, 58}, {6, 0}};
  for (KVType t : {KVType::F32, KVType::BF16})  // q8_0's f16 scales cannot hold 2^60: test_kv_q8
    for (const auto& sc : scales)
      for (int G : {1, 4, 8}) {
        const int d = 64, S = 777, r = 9;
        INFO("type " << kv_type_name(t) << " key scale 2^" << sc[0] << " G " << G);
        const KVCache c = make_cache(1, d, S, t, grid(size_t(S) * d, 3, sc[0], rng), grid(size_t(S) * d, 3, 0, rng));
        const std::vector<int> i1 = some_components(d, r, rng);
        const std::vector<float> qs = grid(size_t(G) * r, 4, sc[1], rng);
        compare_step1(SparqStep1Args{c.k_t(0, 0), t, d, S, i1.data(), r, qs.data(), G}, 0.0, tiers);
      }
}

TEST_CASE("sparq weights and mass: every tier matches the reference", "[sparq]") {
  const std::vector<TierKernels> tiers = simd_kernels();
  std::mt19937 rng(13);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (int G : {1, 3, 4, 8, 11})
    for (int nb : {1, 5, 17, 40}) {
      INFO("G " << G << " blocks " << nb);
      const std::vector<float> mx = gaussian(size_t(G) * nb, 20.0f, rng);
      std::vector<float> sum(size_t(G) * nb), e(size_t(nb) * G * B);
      for (float& x : sum) x = 1.0f + 255.0f * unit(rng);
      for (float& x : e) x = unit(rng);
      std::vector<float> wr(sum.size()), wv(sum.size());
      ref::sparq_weights(mx.data(), sum.data(), G, nb, wr.data());
      for (const TierKernels& tk : tiers) {
        INFO("tier " << cpu_tier_name(tk.tier));
        tk.k->weights(mx.data(), sum.data(), G, nb, wv.data());
        require_close(wv.data(), wr.data(), wr.size(), 1e-30, 2e-6, "w");
      }
      for (int n : {1, 15, 16, 17, nb * B / 3, nb * B}) {
        const std::vector<int> idx = some_positions(nb * B, std::min(n, nb * B), rng);
        std::vector<float> ar(static_cast<size_t>(G), 0.5f);  // both add to what is there
        ref::sparq_mass(e.data(), wr.data(), G, nb, idx.data(), int(idx.size()), ar.data());
        for (const TierKernels& tk : tiers) {
          INFO("tier " << cpu_tier_name(tk.tier) << " n " << n);
          std::vector<float> av(static_cast<size_t>(G), 0.5f);
          tk.k->mass(e.data(), wr.data(), G, nb, idx.data(), int(idx.size()), av.data());
          // Sums of n floats in different orders: rounding grows like sqrt(n).
          require_close(av.data(), ar.data(), ar.size(), 1e-30, 1e-6 * (1.0 + std::sqrt(double(n))), "mass");
        }
      }
    }
}

namespace {

// Step 2 with kernels k; mass (when given) gets the selection's mass added.
std::vector<int> run_select(const SparqKernels& k, const std::vector<float>& e, const std::vector<float>& w, int G, int n,
                            int m, std::vector<float>* mass) {
  const int nb = int(w.size()) / G;
  std::vector<uint32_t> scratch(sparq_select_scratch(n));
  std::vector<int> out(static_cast<size_t>(m), -1);
  k.select(e.data(), w.data(), G, nb, n, m, out.data(), mass ? mass->data() : nullptr, scratch.data());
  return out;
}

}  // namespace

TEST_CASE("sparq select: every tier picks what the reference picks, ties to the lower index", "[sparq]") {
  const std::vector<TierKernels> tiers = simd_kernels();
  const SparqKernels& reference = sparq_kernels(CpuTier::portable);
  std::mt19937 rng(14);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  const float inf = std::numeric_limits<float>::infinity();
  // With one head and weights of 1 the scores are e itself: named
  // distributions, several of which defeat the sampled band and take the
  // fallback (periodic spikes, all equal, few distinct values).
  auto make = [&](int kind, int n) {
    std::vector<float> s(static_cast<size_t>(n));
    for (int i = 0; i < n; ++i) {
      switch (kind) {
        case 0: s[i] = unit(rng); break;                                 // distinct
        case 1: s[i] = std::floor(unit(rng) * 8.0f) / 8.0f; break;        // 8 levels
        case 2: s[i] = 0.25f; break;                                      // all tied
        case 3: s[i] = unit(rng) < 0.01f ? unit(rng) : 0.0f; break;       // mostly 0
        case 4: s[i] = float(i) / float(n); break;                        // rising
        case 5: s[i] = i % 64 == 0 ? 1.0f : 0.5f; break;                  // spikes
        case 6: s[i] = i % 1000 == 7 ? 2.0f : unit(rng) * 1e-30f; break;  // spikes, subnormals
        default: {                                                        // odd bit patterns
          const float odd[] = {inf, -0.0f, std::numeric_limits<float>::quiet_NaN(), 1e-45f, -1.0f, 3.0f};
          s[i] = odd[size_t(rng()) % 6];
        }
      }
    }
    return s;
  };
  for (int n : {1, 2, 15, 16, 17, 255, 1000, 1024, 1025, 4096, 10007, 50000})
    for (int kind = 0; kind < 8; ++kind)
      for (int m : {0, 1, n / 16 + 1, n / 2, n - 1, n}) {
        INFO("n " << n << " kind " << kind << " m " << m);
        std::vector<float> e = make(kind, n);
        e.resize((e.size() + B - 1) / B * B, 0.0f);
        const std::vector<float> w(e.size() / B, 1.0f);
        const std::vector<int> r = run_select(reference, e, w, 1, n, m, nullptr);
        // The scores are fma(e, 1, +0): -0 becomes +0, every other value stays.
        std::vector<float> s(e.begin(), e.begin() + n);
        for (float& x : s) x = std::fma(x, 1.0f, 0.0f);
        require_topk_rule(s, m, r);
        for (const TierKernels& tk : tiers) {
          INFO("tier " << cpu_tier_name(tk.tier));
          REQUIRE(run_select(*tk.k, e, w, 1, n, m, nullptr) == r);
        }
      }
  // Several heads: the scores are fused sums in head order on both paths, so
  // the choices agree exactly; the masses of the choice agree to rounding.
  for (int G : {2, 4, 8, 17})
    for (int n : {300, 5000, 33000}) {
      INFO("G " << G << " n " << n);
      const int nb = (n + B - 1) / B;
      std::vector<float> e(size_t(nb) * G * B), w(size_t(G) * nb);
      for (float& x : e) x = unit(rng) * unit(rng);
      for (float& x : w) x = unit(rng) / float(n);
      for (int m : {1, n / 16, n / 3}) {
        std::vector<float> mr(static_cast<size_t>(G), 0.25f);
        const std::vector<int> r = run_select(reference, e, w, G, n, m, &mr);
        for (const TierKernels& tk : tiers) {
          INFO("tier " << cpu_tier_name(tk.tier) << " m " << m);
          std::vector<float> mv(static_cast<size_t>(G), 0.25f);
          REQUIRE(run_select(*tk.k, e, w, G, n, m, &mv) == r);
          require_close(mv.data(), mr.data(), mr.size(), 1e-7, 1e-5, "mass");
        }
      }
    }
}

TEST_CASE("sparq step 3: every tier matches the reference", "[sparq]") {
  const std::vector<TierKernels> tiers = simd_kernels();
  std::mt19937 rng(15);
  for (KVType t : kTypes)
    for (int d : {8, 16, 24, 32, 64, 96, 128})
      for (int G : {1, 2, 4, 7, 8, 11})
        for (int n : {1, 5, 16, 17, 100}) {
          if (!test::takes(t, d)) continue;
          const int S = 300;
          // One case in three at a huge key scale, on the grid so scores stay
          // exact (not q8_0: its f16 scales end at 65504).
          const bool huge = (d + G + n) % 3 == 0 && t != KVType::Q8_0;
          INFO("type " << kv_type_name(t) << " d " << d << " G " << G << " n " << n << " huge " << huge);
          const std::vector<float> k = huge ? grid(size_t(S) * d, 3, 40, rng) : gaussian(size_t(S) * d, 1.0f, rng);
          const KVCache c = make_cache(1, d, S, t, k, gaussian(size_t(S) * d, 1.0f, rng));
          std::vector<float> q = huge ? grid(size_t(G) * d, 2, -40, rng) : gaussian(size_t(G) * d, 0.3f, rng);
          for (float& x : q) x = query_for(t, x);
          const std::vector<int> idx = some_positions(S, n, rng);
          const SparqStep3Args a{c.k_rows(0, 0), c.v_rows(0, 0), t, d, q.data(), G, 1.0f / float(d)};
          const size_t dp = size_t(sparq_dpad(d));
          std::vector<float> scratch(sparq_step3_scratch(G, n, d));
          std::vector<float> mr(static_cast<size_t>(G)), zr(mr.size()), ar(G * dp);
          ref::sparq_step3(a, idx.data(), n, mr.data(), zr.data(), ar.data(), scratch.data());
          for (const TierKernels& tk : tiers) {
            INFO("tier " << cpu_tier_name(tk.tier));
            std::vector<float> mv(mr.size(), -1.0f), zv(mv), av(ar.size(), -1.0f);
            tk.k->step3(a, idx.data(), n, mv.data(), zv.data(), av.data(), scratch.data());
            double mag = 0;
            for (float x : q) mag += std::abs(x);
            const double x_tol = huge ? 0.0 : 1e-6 * mag * 4.0;
            // A SIMD tier's mx is a reference up to 16 above the max: compare what
            // does not depend on it, log2 of the softmax sum and the output.
            std::vector<double> lr(mr.size()), lv(mr.size()), outr(ar.size()), outv(ar.size());
            for (int h = 0; h < G; ++h) {
              REQUIRE(mv[h] >= mr[h] - x_tol * (1 + std::abs(mr[h])));
              REQUIRE(mv[h] <= mr[h] + 16 + x_tol * (1 + std::abs(mr[h])));
              lr[h] = mr[h] + std::log2(double(zr[h]));
              lv[h] = mv[h] + std::log2(double(zv[h]));
              for (size_t j = 0; j < dp; ++j) {
                outr[h * dp + j] = ar[h * dp + j] / double(zr[h]);
                outv[h * dp + j] = av[h * dp + j] / double(zv[h]);
              }
            }
            require_close(lv.data(), lr.data(), lr.size(), 1e-6 + 2 * x_tol, 1e-6, "log2 sum");
            require_close(outv.data(), outr.data(), outr.size(), 4e-6 + 4 * x_tol, 1e-5, "output");
          }
        }
}

namespace {

struct Run {
  std::vector<float> out;
  std::vector<SparqTrace> trace;
  AttnCounters counters;
};

// One decode step of SparQ for each of the caches (one query per cache).
Run run_step(const std::vector<const KVCache*>& caches, const std::vector<float>& q, int n_heads,
             const SparqStep& st) {
  Run r;
  const int d = caches[0]->shape().head_dim;
  r.out.assign(caches.size() * n_heads * d, -7.0f);
  std::vector<DecodeQuery> qs;
  for (size_t i = 0; i < caches.size(); ++i)
    qs.push_back(DecodeQuery{caches[i], caches[i]->length(0), &q[i * n_heads * d], &r.out[i * n_heads * d]});
  sparq_decode_step(qs, 0, n_heads, st, &r.counters, &r.trace);
  return r;
}

void require_same_run(const Run& got, const Run& want, double tol) {
  REQUIRE(got.trace.size() == want.trace.size());
  for (size_t i = 0; i < want.trace.size(); ++i) {
    INFO("item " << i);
    REQUIRE(got.trace[i].i1 == want.trace[i].i1);
    REQUIRE(got.trace[i].i2 == want.trace[i].i2);
    require_close(got.trace[i].alpha.data(), want.trace[i].alpha.data(), want.trace[i].alpha.size(), 1e-5,
                  0.0, "alpha");
  }
  require_close(got.out.data(), want.out.data(), want.out.size(), tol, tol, "out");
}

}  // namespace

TEST_CASE("sparq decode: every SIMD tier equals the scalar path end to end", "[sparq]") {
  const std::vector<CpuTier> tiers = test::simd_tiers_here();
  std::mt19937 rng(16);
  struct Shape {
    int n_kv, G, d, S;
  };
  const Shape shapes[] = {{1, 1, 8, 1}, {2, 4, 16, 33}, {1, 8, 64, 257}, {2, 2, 128, 1000}, {1, 4, 64, 5000}, {1, 3, 32, 40}};
  for (KVType t : kTypes)
    for (const Shape& sh : shapes) {
      if (!test::takes(t, sh.d)) continue;
      const int nh = sh.n_kv * sh.G;
      // Grid keys and queries: exact ties in i1 and in the scores.
      const KVCache c = make_cache(sh.n_kv, sh.d, sh.S, t, grid(size_t(sh.S) * sh.n_kv * sh.d, 4, 0, rng),
                                   gaussian(size_t(sh.S) * sh.n_kv * sh.d, 1.0f, rng));
      const std::vector<float> q = grid(size_t(nh) * sh.d, 3, -2, rng);
      const SparqStep steps[] = {{false, 1, 16, 4, true},
                                 {false, sh.d, sh.S, 0, false},
                                 {false, std::max(1, sh.d / 8), sh.S / 16 + 1, 2, true},
                                 {false, sh.d / 2 + 1, 3 * sh.S + 5, 1, true},
                                 {false, 3, 40, 40, true},
                                 {false, 2, 100, 7, false}};
      for (const SparqStep& st : steps) {
        INFO("type " << kv_type_name(t) << " n_kv " << sh.n_kv << " G " << sh.G << " d " << sh.d << " S " << sh.S
                     << " r " << st.r << " k " << st.k << " l " << st.l << " mean " << st.mean);
        Run want;
        {
          const test::TierScope scope(CpuTier::portable);
          want = run_step({&c}, q, nh, st);
        }
        for (CpuTier tier : tiers) {
          INFO("tier " << cpu_tier_name(tier));
          const test::TierScope scope(tier);
          const Run got = run_step({&c}, q, nh, st);
          require_same_run(got, want, 2e-5);
        }
        for (const SparqTrace& tr : want.trace) {
          REQUIRE(int(tr.i2.size()) == std::min(st.k, sh.S));
          for (int i = 0; i < std::min(st.l, int(tr.i2.size())); ++i)  // the local window is in
            REQUIRE(tr.i2[tr.i2.size() - 1 - i] == sh.S - 1 - i);
        }
      }
    }
}

TEST_CASE("sparq decode: threads splitting one item give the unsplit result, bit for bit", "[sparq]") {
  std::mt19937 rng(17);
  for (KVType t : kTypes) {
    const int d = 64, G = 4, S = 9000;
    std::vector<KVCache> caches;
    for (int i = 0; i < 3; ++i)
      caches.push_back(make_cache(1, d, S + 77 * i, t, gaussian(size_t(S + 77 * i) * d, 1.0f, rng),
                                  gaussian(size_t(S + 77 * i) * d, 1.0f, rng)));
    const std::vector<float> q = gaussian(size_t(3) * G * d, 0.5f, rng);
    const SparqStep st{false, 8, 700, 64, true};
    // One item (split over both threads), and three (two whole, one split).
    for (int items : {1, 3})
      for (CpuTier tier : test::all_tiers_here()) {
        INFO("type " << kv_type_name(t) << " items " << items << " tier " << cpu_tier_name(tier));
        const test::TierScope scope(tier);
        std::vector<const KVCache*> cs;
        for (int i = 0; i < items; ++i) cs.push_back(&caches[size_t(i)]);
        Run one, two;
        {
          Threads th(1);
          one = run_step(cs, q, G, st);
        }
        {
          Threads th(2);
          two = run_step(cs, q, G, st);
        }
        require_same_run(two, one, 0.0);
        // Bit for bit: step 3 has the same slices, merged in the same order.
        REQUIRE(two.out == one.out);
        for (size_t i = 0; i < one.trace.size(); ++i) REQUIRE(two.trace[i].alpha == one.trace[i].alpha);
      }
  }
}

TEST_CASE("sparq decode: counters", "[sparq]") {
  std::mt19937 rng(18);
  const int d = 16, G = 2, n_kv = 2, S = 500;
  const KVCache c = make_cache(n_kv, d, S, KVType::BF16, gaussian(size_t(S) * n_kv * d, 1.0f, rng),
                               gaussian(size_t(S) * n_kv * d, 1.0f, rng));
  const std::vector<float> q = gaussian(size_t(2) * n_kv * G * d, 1.0f, rng);
  const SparqStep st{false, 4, 64, 16, true};
  const Run r = run_step({&c, &c}, q, n_kv * G, st);
  REQUIRE(r.counters.calls == 2);
  REQUIRE(r.counters.kv_bytes == 2 * n_kv * sparq_step_bytes(st, S, d, KVType::BF16));
  REQUIRE(r.counters.dense_bytes == 2 * n_kv * dense_step_bytes(S, d, KVType::BF16));
  REQUIRE(r.counters.t_step1 > 0);
  REQUIRE(r.counters.t_step3 > 0);
}

TEST_CASE("sparq decode: bad input is a clear error", "[sparq]") {
  std::mt19937 rng(19);
  const int d = 16, S = 40;
  const KVCache c = make_cache(2, d, S, KVType::F32, gaussian(size_t(S) * 2 * d, 1.0f, rng),
                               gaussian(size_t(S) * 2 * d, 1.0f, rng));
  std::vector<float> q(size_t(4) * d, 1.0f), out(q.size());
  auto step = [&](SparqStep st, int S_q, int n_heads = 4, int layer = 0) {
    const DecodeQuery dq{&c, S_q, q.data(), out.data()};
    return test::error_of([&] { sparq_decode_step({&dq, 1}, layer, n_heads, st, nullptr); });
  };
  CHECK_THAT(step({false, 0, 8, 2, false}, S), Catch::Contains("r must be in [1, 16]"));
  CHECK_THAT(step({false, 17, 8, 2, false}, S), Catch::Contains("r must be in [1, 16]"));
  CHECK_THAT(step({false, 4, 0, 2, false}, S), Catch::Contains("k must be >= 1"));
  CHECK_THAT(step({false, 4, 8, -1, false}, S), Catch::Contains("local window"));
  CHECK_THAT(step({false, 4, 8, 2, true}, S - 1), Catch::Contains("mean mixing"));
  CHECK_THAT(step({false, 4, 8, 2, false}, S + 1), Catch::Contains("holds 40"));
  CHECK_THAT(step({false, 4, 8, 2, false}, 0), Catch::Contains("holds 40"));
  CHECK_THAT(step({false, 4, 8, 2, false}, S, 3), Catch::Contains("not a multiple of 2 KV heads"));
  CHECK_THAT(step({false, 4, 8, 2, false}, S, 4, 1), Catch::Contains("layer 1 out of range"));
  // The settings entry point refuses a step that resolves to dense.
  SparqSettings dense_here;
  dense_here.ratio = 8;
  const DecodeQuery dq{&c, S, q.data(), out.data()};
  CHECK_THAT(test::error_of([&] { sparq_decode({&dq, 1}, 0, 4, dense_here, nullptr); }),
             Catch::Contains("resolves to dense"));
}
