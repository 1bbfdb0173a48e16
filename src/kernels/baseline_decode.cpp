// window and H2O decode attention (baseline_decode.h): their position rules,
// H2O's eviction, and the runs over (query, KV head) items.
#include "sparq/kernels/baseline_decode.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <mutex>
#include <numbers>
#include <numeric>

#include "sparq/kernels/sparq_kernels.h"
#include "sparq/util/cpu.h"
#include "sparq/util/work_team.h"

namespace sparq {
namespace {

// Runs f(item index, thread scratch) over every (query, KV head), threads
// taking whole items.
template <class F>
void for_items(std::span<const DecodeQuery> queries, F&& f) {
  const int nkv = queries[0].cache->shape().n_kv_heads;
  const int items = int(queries.size()) * nkv;
  parallel_items(items, [&](int i) { f(queries[size_t(i / nkv)], i % nkv); });
}

// Adds the bytes of one (query, KV head) (H2O's heads keep their own
// positions); calls and dense fallbacks count once per query, at KV head 0.
void count(AttnCounters* c, const DecodeQuery& q, int kv, uint64_t bytes, bool dense) {
  if (!c) return;
  const KVShape& s = q.cache->shape();
  static std::mutex mutex;  // items run on several threads
  std::lock_guard lock(mutex);
  c->kv_bytes += bytes;
  c->dense_bytes += dense_step_bytes(q.S, s.head_dim, s.type);
  if (kv == 0) {
    c->calls += 1;
    if (dense) c->dense_fallbacks += 1;
  }
}

}  // namespace

void window_positions(int S, int budget, int sinks, std::vector<int>& out) {
  const int b = std::clamp(budget, 1, S);
  const int first = std::clamp(sinks, 0, b - 1);
  out.resize(size_t(b));
  std::iota(out.begin(), out.begin() + first, 0);
  std::iota(out.begin() + first, out.end(), S - (b - first));
}

int h2o_recent(int budget, int recent_pct) {
  return std::clamp(int(int64_t(budget) * recent_pct / 100), 1, std::max(budget, 1));
}

bool h2o_prepare(EvictionState& st, int S, int budget, int recent) {
  if (st.seen > S) st = EvictionState{};
  const bool seed = st.seen == 0;
  for (int p = st.seen; p < S; ++p) {
    st.kept.push_back(p);
    st.score.push_back(0.0f);
  }
  st.seen = S;
  const size_t excess = st.kept.size() > size_t(budget) ? st.kept.size() - size_t(budget) : 0;
  if (seed || excess == 0) return seed;
  // Candidates: kept positions older than the recent window, lowest score
  // first (then the older); the first `excess` of them go.
  thread_local std::vector<int> cand;
  cand.clear();
  for (int i = 0; i < int(st.kept.size()) && st.kept[i] < S - recent; ++i) cand.push_back(i);
  const size_t n = std::min(excess, cand.size());
  const auto before = [&](int a, int b) { return st.score[a] != st.score[b] ? st.score[a] < st.score[b] : a < b; };
  std::nth_element(cand.begin(), cand.begin() + long(n), cand.end(), before);
  thread_local std::vector<char> gone;
  gone.assign(st.kept.size(), 0);
  for (size_t j = 0; j < n; ++j) gone[size_t(cand[j])] = 1;
  size_t w = 0;
  for (size_t i = 0; i < st.kept.size(); ++i)
    if (!gone[i]) {
      st.kept[w] = st.kept[i];
      st.score[w] = st.score[i];
      ++w;
    }
  st.kept.resize(w);
  st.score.resize(w);
  return false;
}

void attend_rows(const KVCache& cache, int layer, int kv_head, const float* q, int n_h, const int* idx, int n,
                 float* out, float* prob) {
  const KVShape& sh = cache.shape();
  const int d = sh.head_dim;
  const void* K = cache.k_rows(layer, kv_head);
  const void* V = cache.v_rows(layer, kv_head);
  const float scale = float(1.0 / std::sqrt(double(d)));
  thread_local std::vector<float> x;
  x.resize(size_t(n));
  for (int h = 0; h < n_h; ++h) {
    const float* qh = q + size_t(h) * d;
    float m = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; ++i) {
      float dot = 0;
      for (int c = 0; c < d; ++c) dot += qh[c] * kv_row_elem(K, sh.type, d, size_t(idx[i]), c);
      x[size_t(i)] = dot * scale;
      m = std::max(m, x[size_t(i)]);
    }
    float z = 0;
    for (int i = 0; i < n; ++i) z += x[size_t(i)] = std::exp(x[size_t(i)] - m);
    float* oh = out + size_t(h) * d;
    std::fill(oh, oh + d, 0.0f);
    for (int i = 0; i < n; ++i) {
      const float p = x[size_t(i)] / z;
      if (prob) prob[i] += p;
      for (int c = 0; c < d; ++c) oh[c] += p * kv_row_elem(V, sh.type, d, size_t(idx[i]), c);
    }
  }
}

void window_decode(std::span<const DecodeQuery> queries, int layer, int n_heads, const AttentionSettings& a,
                   AttnCounters* counters) {
  if (queries.empty()) return;
  for_items(queries, [&](const DecodeQuery& q, int kv) {
    const KVShape& sh = q.cache->shape();
    const int d = sh.head_dim, G = n_heads / sh.n_kv_heads, dp = sparq_dpad(d);
    const int budget = baseline_budget(a.sp, q.S, d);
    if (budget >= q.S) fail("window: the step at S={} reads every position (dense)", q.S);
    thread_local std::vector<int> idx;
    thread_local std::vector<float> q3, mx, z, acc, scratch;
    window_positions(q.S, budget, a.base.sinks, idx);
    const int n = int(idx.size());
    q3.resize(size_t(G) * d);
    mx.resize(size_t(G));
    z.resize(size_t(G));
    acc.resize(size_t(G) * dp);
    scratch.resize(sparq_step3_scratch(G, n, d));
    const float* qk = q.q + size_t(kv) * G * d;
    for (size_t i = 0; i < q3.size(); ++i) q3[i] = query_for(sh.type, qk[i]);
    const SparqStep3Args args{q.cache->k_rows(layer, kv), q.cache->v_rows(layer, kv), sh.type, d, q3.data(), G,
                              float(std::numbers::log2e / std::sqrt(double(d)))};
    sparq_kernels().step3(args, idx.data(), n, mx.data(), z.data(), acc.data(), scratch.data());
    for (int h = 0; h < G; ++h) {
      float* out = q.out + (size_t(kv) * G + h) * d;
      for (int c = 0; c < d; ++c) out[c] = acc[size_t(h) * dp + c] / z[size_t(h)];
    }
    count(counters, q, kv, 2 * uint64_t(n) * kv_row_bytes(sh.type, d), false);
  });
}

void h2o_decode(std::span<const DecodeQuery> queries, int layer, int n_heads, const AttentionSettings& a,
                AttnCounters* counters) {
  if (queries.empty()) return;
  for (const DecodeQuery& q : queries)
    if (q.S != q.cache->length(layer))
      fail("h2o: the query must cover all {} positions of layer {} (its state follows the sequence), got {}",
           q.cache->length(layer), layer, q.S);
  for_items(queries, [&](const DecodeQuery& q, int kv) {
    const KVShape& sh = q.cache->shape();
    const int d = sh.head_dim, G = n_heads / sh.n_kv_heads;
    const int budget = baseline_budget(a.sp, q.S, d);
    EvictionState& st = q.cache->eviction(layer, kv);
    h2o_prepare(st, q.S, budget, h2o_recent(budget, a.base.recent_pct));
    thread_local std::vector<float> q3, prob;
    q3.resize(size_t(G) * d);
    const float* qk = q.q + size_t(kv) * G * d;
    for (size_t i = 0; i < q3.size(); ++i) q3[i] = query_for(sh.type, qk[i]);
    const int n = int(st.kept.size());
    prob.assign(size_t(n), 0.0f);
    attend_rows(*q.cache, layer, kv, q3.data(), G, st.kept.data(), n, q.out + size_t(kv) * G * d, prob.data());
    for (int i = 0; i < n; ++i) st.score[size_t(i)] += prob[size_t(i)];
    count(counters, q, kv, 2 * uint64_t(n) * kv_row_bytes(sh.type, d), n >= q.S);
  });
}

}  // namespace sparq
