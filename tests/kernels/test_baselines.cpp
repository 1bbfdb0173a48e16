// The baselines (window, h2o, topk) and SparQ's group rule and budget split:
// their settings and byte counts, and the decode paths against the plain
// double references of baseline_ref.cpp on small adversarial cases (ties,
// S below the budget, budget 1, one-hot attention, GQA groups).
#include <algorithm>
#include <cmath>
#include <numbers>
#include <random>
#include <vector>

#include "sparq/kernels/baseline_decode.h"
#include "sparq/kernels/sparq_decode.h"
#include "sparq/util/cpu.h"
#include "cpu_tiers.h"
#include "kv_test_data.h"
#include "test_util.h"

using namespace sparq;
using sparq::test::gaussian;
using sparq::test::make_cache;

namespace {

using sparq::test::as_stored;
const auto& kTypes = test::kAllKVTypes;

// One KV head's rows [S][d] out of [S][n_kv][d].
std::vector<float> head_rows(const std::vector<float>& x, int S, int n_kv, int d, int kv) {
  std::vector<float> y(size_t(S) * d);
  for (int p = 0; p < S; ++p)
    std::copy_n(&x[(size_t(p) * n_kv + kv) * d], d, &y[size_t(p) * d]);
  return y;
}

void require_near(const float* got, const double* want, size_t n, double tol) {
  for (size_t i = 0; i < n; ++i) {
    INFO("element " << i);
    REQUIRE(std::abs(got[i] - want[i]) <= tol * (1 + std::abs(want[i])));
  }
}

// Decode of one query over the first S positions; out [n_heads][d].
std::vector<float> decode(const KVCache& c, int S, const std::vector<float>& q, int n_heads, const AttentionSettings& a,
                          AttnCounters* counters = nullptr) {
  std::vector<float> out(q.size());
  const DecodeQuery dq{&c, S, q.data(), out.data()};
  attention_decode({&dq, 1}, 0, n_heads, a, counters);
  return out;
}

}  // namespace

TEST_CASE("baseline settings parse, describe themselves and reject bad items", "[attention][settings][baselines]") {
  AttentionSettings a = parse_attention_setting("window:8");
  CHECK((a.sparq && a.method == Method::window && a.sp.ratio == 8 && a.base.sinks == 4));
  CHECK(a.describe() == "window 1/8 sinks=4");
  a = parse_attention_setting("window:k=100,sinks=0");
  CHECK((a.sp.k == 100 && a.sp.ratio == 0 && a.describe() == "window k=100 sinks=0"));
  a = parse_attention_setting("h2o:16,recent=25");
  CHECK((a.method == Method::h2o && a.sp.ratio == 16 && a.base.recent_pct == 25 && a.describe() == "h2o 1/16 recent=25%"));
  a = parse_attention_setting("topk");
  CHECK((a.method == Method::topk && a.sp.ratio == 8 && a.describe() == "topk 1/8"));
  a = parse_attention_setting("topk:k=64,l=8,group=logit");
  CHECK((a.sp.k == 64 && a.sp.local == 8 && a.sp.group == GroupRule::logit));
  CHECK(a.describe() == "topk k=64 l=8 group=logit");
  a = parse_attention_setting("sparq:8,split=25,group=logit");
  CHECK((a.method == Method::sparq && a.sp.split == 25 && a.sp.group == GroupRule::logit));
  CHECK(a.describe() == "sparq 1/8 split=25 group=logit");
  CHECK(starts_attention_setting("h2o:8"));
  CHECK(starts_attention_setting("dense"));
  CHECK_FALSE(starts_attention_setting("group=logit"));
  CHECK_FALSE(starts_attention_setting("windows"));

  for (const char* text : {"window:r=4", "window:8,mean", "h2o:8,sinks=2", "topk:8,recent=3", "window:8,split=25",
                           "h2o:recent=101", "window:sinks=-1", "sparq:8,split=0", "sparq:8,split=100",
                           "sparq:8,group=sum", "topk:8,group=", "h2o:ratio=0", "windows:8", "h2o8", "topk:8,nofallback"})
    CHECK_THROWS_WITH(parse_attention_setting(text),
                      Catch::StartsWith(std::string("bad attention setting '") + text + "'"));
  CHECK_THROWS_WITH(parse_attention_setting("h2o:8,sinks=2"), Catch::Contains("unknown key 'sinks' for h2o"));
  CHECK_THROWS_WITH(parse_attention_setting("sparq:8,group=sum"), Catch::Contains("group must be prob or logit"));
  CHECK_THROWS_WITH(parse_attention_setting("h2o:ratio=0"), Catch::Contains("h2o needs a ratio or k"));
}

TEST_CASE("the budget split moves bytes between r and k and keeps the total", "[attention][settings]") {
  // The defaults are the rules of docs/evaluation.md and of ../shared/eval/README.md's reference.
  CHECK((SparqSettings{}.split == 50 && SparqSettings{}.group == GroupRule::prob));
  SparqSettings s;
  s.ratio = 8;
  for (int split : {25, 50, 75}) {
    s.split = split;
    const SparqStep st = resolve_sparq(s, 65536, 128);
    CHECK(st.r == 128 * split / 400);
    CHECK(st.k == 65536 * (100 - split) / 800);
    // Within a row of 1/8 of dense's elements.
    const double elems = double(65536) * st.r + 2.0 * st.k * 128;
    CHECK(std::abs(elems - 2.0 * 65536 * 128 / 8) <= 128);
  }
}

TEST_CASE("baselines read sparq:N's bytes (window, h2o) or all of K (topk), counted as they run", "[attention][baselines]") {
  const int d = 64;
  for (int N : {4, 8, 16}) {
    const AttentionSettings sq = parse_attention_setting(fmt::format("sparq:{}", N));
    for (int S : {100, 300, 1000, 4096, 10000}) {
      INFO("N " << N << " S " << S);
      const uint64_t sparq = decode_step_bytes(sq, S, d, KVType::BF16, false);
      for (const char* kind : {"window", "h2o"}) {
        const AttentionSettings b = parse_attention_setting(fmt::format("{}:{}", kind, N));
        const uint64_t got = decode_step_bytes(b, S, d, KVType::BF16, false);
        if (decode_step_dense(sq, S, d, false)) {
          CHECK(got == dense_step_bytes(S, d, KVType::BF16));
        } else {
          CHECK(got <= sparq);
          CHECK(got + 2 * d * 2 > sparq);  // within one position of K and V
        }
      }
      const SparqStep st = resolve_sparq(sq.sp, S, d);
      const AttentionSettings tk = parse_attention_setting(fmt::format("topk:{}", N));
      const SparqStep t = resolve_topk(tk.sp, S, d);
      CHECK((t.r == d && t.k == st.k && t.l == 0));
      if (!t.dense) CHECK(decode_step_bytes(tk, S, d, KVType::BF16, false) == (uint64_t(S) * d + 2ull * t.k * d) * 2);
    }
  }
  // h2o's first step reads every position.
  const AttentionSettings h = parse_attention_setting("h2o:8");
  CHECK(decode_step_dense(h, 10000, d, true));
  CHECK(decode_step_bytes(h, 10000, d, KVType::F32, true) == dense_step_bytes(10000, d, KVType::F32));
}

TEST_CASE("window keeps the sinks and the newest positions, whatever the budget", "[attention][baselines]") {
  std::vector<int> p;
  window_positions(10, 5, 2, p);
  CHECK(p == std::vector<int>{0, 1, 7, 8, 9});
  window_positions(10, 1, 4, p);  // budget 1: the query's own position only
  CHECK(p == std::vector<int>{9});
  window_positions(10, 3, 4, p);  // more sinks than the budget allows
  CHECK(p == std::vector<int>{0, 1, 9});
  window_positions(10, 4, 0, p);
  CHECK(p == std::vector<int>{6, 7, 8, 9});
  window_positions(5, 9, 2, p);  // budget over S: every position
  CHECK(p == std::vector<int>{0, 1, 2, 3, 4});
}

TEST_CASE("window and topk decode match their double references", "[attention][baselines]") {
  std::mt19937 rng(17);
  struct Shape {
    int n_kv, group, d, S;
  };
  for (const CpuTier tier : test::all_tiers_here()) {
    const test::TierScope scope(tier);
    for (const KVType t : kTypes)
      for (const Shape sh : {Shape{1, 4, 128, 700}, Shape{2, 1, 64, 1100}, Shape{1, 2, 32, 40}, Shape{2, 4, 16, 2100}}) {
        if (!test::takes(t, sh.d)) continue;
        const int nh = sh.n_kv * sh.group;
        const std::vector<float> k = gaussian(size_t(sh.S) * sh.n_kv * sh.d, 1.0f, rng);
        const std::vector<float> v = gaussian(size_t(sh.S) * sh.n_kv * sh.d, 1.0f, rng);
        const KVCache c = make_cache(sh.n_kv, sh.d, sh.S, t, k, v);
        std::vector<float> q = gaussian(size_t(nh) * sh.d, 2.0f, rng);
        const std::vector<float> ks = as_stored(k, t), vs = as_stored(v, t), qs = test::as_query(q, t);
        const std::vector<float> kt = as_stored(k, t, size_t(sh.d));  // what step 1 ranks by
        for (const char* text : {"window:8", "window:k=1", "window:k=7,sinks=9", "topk:k=5", "topk:k=20,l=4",
                                 "topk:k=9,group=logit", "topk:4,floor=3"}) {
          INFO(cpu_tier_name(tier) << " " << kv_type_name(t) << " " << text << " S " << sh.S << " d " << sh.d
                                              << " group " << sh.group);
          const AttentionSettings a = parse_attention_setting(text);
          AttnCounters n;
          const std::vector<float> out = decode(c, sh.S, q, nh, a, &n);
          for (int kv = 0; kv < sh.n_kv; ++kv) {
            const std::vector<float> K = head_rows(ks, sh.S, sh.n_kv, sh.d, kv), V = head_rows(vs, sh.S, sh.n_kv, sh.d, kv);
            const float* qk = &qs[size_t(kv) * sh.group * sh.d];
            std::vector<double> want(size_t(sh.group) * sh.d);
            if (a.method == Method::window) {
              ref::window_attention(qk, sh.group, sh.d, K.data(), V.data(), sh.S, baseline_budget(a.sp, sh.S, sh.d),
                                    a.base.sinks, want.data());
            } else {
              const SparqStep st = resolve_topk(a.sp, sh.S, sh.d);  // dense: k >= S/2 reads more than dense
              const int kk = st.dense ? sh.S : st.k;
              // Step 1 meets bf16 keys with the query scaled by log2(e)/sqrt(d),
              // then rounded to bf16: the ranking follows that query.
              const double scale = std::numbers::log2e / std::sqrt(double(sh.d));
              std::vector<float> q_rank(qk, qk + size_t(sh.group) * sh.d);
              for (size_t i = 0; i < q_rank.size(); ++i)
                q_rank[i] = float(double(query_for(t, float(q[size_t(kv) * sh.group * sh.d + i] * scale))) / scale);
              const std::vector<float> Kt = head_rows(kt, sh.S, sh.n_kv, sh.d, kv);
              ref::attention_over(qk, sh.group, sh.d, K.data(), V.data(),
                                  ref::topk_positions(q_rank.data(), sh.group, sh.d, Kt.data(), sh.S, kk, st.l, st.group),
                                  want.data());
            }
            require_near(&out[size_t(kv) * sh.group * sh.d], want.data(), want.size(), 2e-4);
          }
          CHECK(n.kv_bytes == uint64_t(sh.n_kv) * decode_step_bytes(a, sh.S, sh.d, t, false));
        }
      }
  }
}

TEST_CASE("topk breaks ties to the lower position and follows one-hot attention", "[attention][baselines]") {
  const int d = 16, S = 300, G = 4;  // k = 6 of 300
  for (const CpuTier tier : test::all_tiers_here()) {
    const test::TierScope scope(tier);
    for (const GroupRule rule : {GroupRule::prob, GroupRule::logit}) {
      // Every key equal but two: all scores tie, so the lowest positions win.
      std::vector<float> k(size_t(S) * d, 0.25f), v(size_t(S) * d);
      for (int p = 0; p < S; ++p) v[size_t(p) * d] = float(p);
      std::fill_n(&k[size_t(200) * d], d, 3.0f);  // one head's one-hot target
      std::fill_n(&k[size_t(50) * d], d, -3.0f);
      const KVCache c = make_cache(1, d, S, KVType::F32, k, v);
      std::vector<float> q(size_t(G) * d, 0.0f);
      std::fill_n(q.begin(), d, 8.0f);              // head 0 puts all its weight on 200
      std::fill_n(q.begin() + d, d, -8.0f);         // head 1 on 50
      AttentionSettings a = parse_attention_setting("topk:k=6");
      a.sp.group = rule;
      const std::vector<int> want = ref::topk_positions(q.data(), G, d, k.data(), S, 6, 0, rule);
      // Summed weights rank 200 and 50 first (heads 0 and 1 each hold one),
      // then the ties in position order; summed logits cancel there (+96 and
      // -96), so every position ties and the lowest six win.
      CHECK(want == (rule == GroupRule::prob ? std::vector<int>{0, 1, 2, 3, 50, 200} : std::vector<int>{0, 1, 2, 3, 4, 5}));
      std::vector<double> ref_out(size_t(G) * d);
      ref::attention_over(q.data(), G, d, k.data(), v.data(), want, ref_out.data());
      const std::vector<float> out = decode(c, S, q, G, a);
      INFO(cpu_tier_name(tier) << (rule == GroupRule::prob ? " prob" : " logit"));
      require_near(out.data(), ref_out.data(), ref_out.size(), 1e-5);
      CHECK(out[0] == Approx(rule == GroupRule::prob ? 200.0f : 2.5f));  // head 0: position 200 only, or 0..5 evenly
    }
  }
}

TEST_CASE("h2o follows its step-by-step reference, evicting for good", "[attention][baselines]") {
  std::mt19937 rng(5);
  struct Case {
    const char* setting;
    int n_kv, group, d, S0, steps;
    bool ties;
  };
  for (const Case cs : {Case{"h2o:k=6,recent=50", 1, 4, 16, 4, 30, false}, Case{"h2o:k=1", 2, 1, 8, 3, 10, false},
                        Case{"h2o:k=9,recent=0", 1, 2, 32, 12, 20, false}, Case{"h2o:k=5,recent=40", 1, 4, 8, 2, 25, true},
                        Case{"h2o:k=50", 1, 4, 16, 3, 20, false}, Case{"h2o:k=7,recent=30", 2, 2, 64, 5, 15, false}}) {
    for (const KVType t : kTypes) {
      if (!test::takes(t, cs.d)) continue;
      INFO(cs.setting << " " << kv_type_name(t));
      const AttentionSettings a = parse_attention_setting(cs.setting);
      const int nh = cs.n_kv * cs.group, S1 = cs.S0 + cs.steps;
      std::vector<float> k = gaussian(size_t(S1) * cs.n_kv * cs.d, 1.0f, rng);
      if (cs.ties) std::fill(k.begin(), k.end(), 0.5f);  // every score equal: the older position goes first
      const std::vector<float> v = gaussian(size_t(S1) * cs.n_kv * cs.d, 1.0f, rng);
      const std::vector<float> ks = as_stored(k, t), vs = as_stored(v, t);
      KVCache c(KVShape{1, cs.n_kv, cs.d, S1, t});
      std::vector<ref::H2O> refs(size_t(cs.n_kv));
      for (int p = 0; p < S1; ++p) {
        c.store(0, p, &k[size_t(p) * cs.n_kv * cs.d], &v[size_t(p) * cs.n_kv * cs.d]);
        const int S = p + 1;
        if (S < cs.S0) continue;
        const std::vector<float> q = as_stored(gaussian(size_t(nh) * cs.d, 1.5f, rng), t == KVType::BF16 ? t : KVType::F32);
        AttnCounters n;
        const std::vector<float> out = decode(c, S, q, nh, a, &n);
        const int budget = baseline_budget(a.sp, S, cs.d);
        uint64_t bytes = 0;
        for (int kv = 0; kv < cs.n_kv; ++kv) {
          const std::vector<float> K = head_rows(ks, S, cs.n_kv, cs.d, kv), V = head_rows(vs, S, cs.n_kv, cs.d, kv);
          std::vector<double> want(size_t(cs.group) * cs.d);
          const std::vector<int> kept = refs[size_t(kv)].step(&q[size_t(kv) * cs.group * cs.d], cs.group, cs.d, K.data(),
                                                               V.data(), S, budget, h2o_recent(budget, a.base.recent_pct),
                                                               want.data());
          INFO("S " << S << " KV head " << kv);
          CHECK(c.eviction(0, kv).kept == kept);
          CHECK(int(kept.size()) == (S == cs.S0 ? S : std::min(S, budget)));
          CHECK(kept.back() == S - 1);  // the query's own position is always read
          require_near(&out[size_t(kv) * cs.group * cs.d], want.data(), want.size(), 1e-4);
          bytes += 2 * kept.size() * kv_row_bytes(t, cs.d);
        }
        CHECK(n.kv_bytes == bytes);
        CHECK(n.kv_bytes == uint64_t(cs.n_kv) * decode_step_bytes(a, S, cs.d, t, S == cs.S0));
        CHECK(n.dense_fallbacks == (decode_step_dense(a, S, cs.d, S == cs.S0) ? 1u : 0u));
      }
      // Dropping positions drops the state: the next step seeds again.
      c.truncate(S1 - 1);
      CHECK(c.eviction(0, 0).seen == 0);
    }
  }
}

TEST_CASE("h2o keeps evicted positions out and starts over when positions are dropped", "[attention][baselines]") {
  EvictionState st;
  CHECK(h2o_prepare(st, 6, 3, 1));  // the first step seeds: every position, nothing evicted
  CHECK(st.kept == std::vector<int>{0, 1, 2, 3, 4, 5});
  st.score = {0.5f, 0.1f, 0.3f, 0.1f, 0.9f, 0.0f};
  CHECK_FALSE(h2o_prepare(st, 7, 3, 1));  // 7 kept, 3 allowed: the 4 lowest of 0..5 go (1 and 3 tie: both go)
  CHECK(st.kept == std::vector<int>{0, 4, 6});
  CHECK_FALSE(h2o_prepare(st, 8, 3, 2));
  CHECK(st.kept.size() == 3);
  CHECK(std::find(st.kept.begin(), st.kept.end(), 1) == st.kept.end());  // never back
  CHECK(h2o_prepare(st, 4, 3, 1));  // a shorter sequence: a new state
  CHECK(st.kept == std::vector<int>{0, 1, 2, 3});
  CHECK(h2o_recent(10, 50) == 5);
  CHECK(h2o_recent(10, 0) == 1);
  CHECK(h2o_recent(1, 100) == 1);
}

TEST_CASE("h2o needs queries over the whole cache", "[attention][baselines][errors]") {
  const KVCache c = make_cache(1, 8, 20, KVType::F32, std::vector<float>(160, 1.0f), std::vector<float>(160, 1.0f));
  const std::vector<float> q(8, 1.0f);
  CHECK_THROWS_WITH(decode(c, 10, q, 1, parse_attention_setting("h2o:k=4")),
                    Catch::Contains("h2o: the query must cover all 20 positions of layer 0"));
}

TEST_CASE("the logit group rule ranks positions by the group's summed approximate logits", "[attention][sparq]") {
  // With r = d the approximate logits are exact: SparQ's selection must be
  // the reference's top-k under either rule, on random GQA data.
  std::mt19937 rng(11);
  const int d = 32, G = 4, S = 1500;
  const std::vector<float> k = gaussian(size_t(S) * d, 1.0f, rng), v = gaussian(size_t(S) * d, 1.0f, rng);
  const KVCache c = make_cache(1, d, S, KVType::F32, k, v);
  for (const CpuTier tier : test::all_tiers_here()) {
    const test::TierScope scope(tier);
    for (const GroupRule rule : {GroupRule::prob, GroupRule::logit})
      for (int rep = 0; rep < 3; ++rep) {
        const std::vector<float> q = gaussian(size_t(G) * d, 2.0f, rng);
        std::vector<float> out(q.size());
        SparqStep st;
        st.r = d;
        st.k = 40;
        st.l = 5;
        st.group = rule;
        std::vector<SparqTrace> trace;
        const DecodeQuery dq{&c, S, q.data(), out.data()};
        sparq_decode_step({&dq, 1}, 0, G, st, nullptr, &trace);
        INFO(cpu_tier_name(tier) << (rule == GroupRule::prob ? " prob" : " logit") << " rep " << rep);
        CHECK(trace.at(0).i2 == ref::topk_positions(q.data(), G, d, k.data(), S, 40, 5, rule));
        for (float alpha : trace[0].alpha) CHECK((alpha > 0 && alpha <= 1.0001f));
      }
  }
}

TEST_CASE("layer=L runs a method at one layer and dense attention at the others, except=L the reverse", "[attention][settings]") {
  const AttentionSettings a = parse_attention_setting("window:k=3,layer=1");
  CHECK((a.only_layer == 1 && a.describe() == "window k=3 sinks=4 layer=1"));
  CHECK_THROWS_WITH(parse_attention_setting("sparq:8,layer=-1"), Catch::Contains("layer must be >= 0"));
  CHECK_THROWS_WITH(parse_attention_setting("h2o:8,except=-2"), Catch::Contains("except must be >= 0"));
  const AttentionSettings x = parse_attention_setting("sparq:8,except=0");
  CHECK((x.except_layer == 0 && x.describe() == "sparq 1/8 except=0" && !x.runs_at(0) && x.runs_at(1)));
  std::mt19937 rng(3);
  const int d = 16, S = 50;
  KVCache c(KVShape{2, 1, d, S, KVType::F32});
  const std::vector<float> k = gaussian(size_t(S) * d, 1.0f, rng), v = gaussian(size_t(S) * d, 1.0f, rng);
  for (int l = 0; l < 2; ++l)
    for (int p = 0; p < S; ++p) c.store(l, p, &k[size_t(p) * d], &v[size_t(p) * d]);
  const std::vector<float> q = gaussian(size_t(2) * d, 1.0f, rng);
  for (int layer = 0; layer < 2; ++layer) {
    std::vector<float> got(q.size()), dense(q.size()), window(q.size());
    const DecodeQuery g{&c, S, q.data(), got.data()}, dn{&c, S, q.data(), dense.data()}, w{&c, S, q.data(), window.data()};
    AttnCounters n;
    attention_decode({&g, 1}, layer, 2, a, &n);
    attention_decode({&dn, 1}, layer, 2, AttentionSettings{}, nullptr);
    attention_decode({&w, 1}, layer, 2, parse_attention_setting("window:k=3"), nullptr);
    CHECK(got == (layer == 1 ? window : dense));
    CHECK(n.kv_bytes == (layer == 1 ? 2u * 3 * d * 4 : dense_step_bytes(S, d, KVType::F32)));
    CHECK(n.dense_fallbacks == 0);
    std::vector<float> rev(q.size());
    const DecodeQuery e{&c, S, q.data(), rev.data()};
    attention_decode({&e, 1}, layer, 2, parse_attention_setting("window:k=3,except=1"), nullptr);
    CHECK(rev == (layer == 1 ? dense : window));
  }
}
