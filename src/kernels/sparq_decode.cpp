// SparQ decode: runs the kernels of sparq_kernels.h for every (query, KV
// head), over threads, and counts bytes and phase times.
#include "sparq/kernels/sparq_decode.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <numbers>
#include <numeric>
#include <utility>

#include "sparq/util/cpu.h"
#include "sparq/util/work_team.h"
#include "sparq/kernels/sparq_kernels.h"

namespace sparq {

namespace ref {
extern const SparqKernels kSparq = {sparq_step1, sparq_weights, sparq_select, sparq_mass, sparq_step3};
}  // namespace ref
namespace avx2 {
extern const SparqKernels kSparq;
}  // namespace avx2
namespace avx512 {
extern const SparqKernels kSparq;
}  // namespace avx512
namespace avx512bf16 {
extern const SparqKernels kSparq;
}  // namespace avx512bf16

const SparqKernels& sparq_kernels(CpuTier t) {
  return for_tier(t, ref::kSparq, avx2::kSparq, avx512::kSparq, avx512bf16::kSparq);
}

void sparq_select_components(const float* q, int n_h, int d, int r, KVType type, int* i1, float* qs) {
  thread_local std::vector<std::pair<double, int>> order;  // (-sum |q_c|, c): ascending = wanted
  order.resize(size_t(d));
  for (int c = 0; c < d; ++c) {
    double s = 0;
    for (int h = 0; h < n_h; ++h) s += std::abs(double(q[size_t(h) * d + c]));
    order[c] = {-s, c};
  }
  std::nth_element(order.begin(), order.begin() + (r - 1), order.end());
  std::sort(order.begin(), order.begin() + r, [](const auto& a, const auto& b) { return a.second < b.second; });
  for (int j = 0; j < r; ++j) i1[j] = order[j].second;
  for (int h = 0; h < n_h; ++h) {
    const float* qh = q + size_t(h) * d;
    double part = 0, total = 0;
    for (int j = 0; j < r; ++j) part += std::abs(double(qh[i1[j]]));
    for (int c = 0; c < d; ++c) total += std::abs(double(qh[c]));
    // 1/tau, with log2(e) folded in for the kernels' exp2.
    const double scale = part > 0 ? std::sqrt(total / (d * part)) * std::numbers::log2e : 0.0;
    for (int j = 0; j < r; ++j) qs[size_t(h) * r + j] = query_for(type, float(qh[i1[j]] * scale));
  }
}

namespace {

constexpr int B = kSparqBlock;

// Caches shorter than this run one (query, KV head) per thread even when that
// leaves threads idle: splitting costs a few more loops.
constexpr int kMinSplit = 4096;

// Step 3 runs in slices of this many rows, each fetched into L2 in one burst
// of prefetches before the kernel reads it: 15-20% faster than one call whose
// own prefetches run 32 rows ahead (S = 32k, d = 64, group 4, 2 threads on a
// Zen 5). A split item's slices are the work team's items.
constexpr int kSliceRows = 128;

using Kernels = SparqKernels;

const Kernels& kernels() { return sparq_kernels(); }

// Grows v to at least n elements; never shrinks, so steady state allocates nothing.
template <class T>
T* grow(std::vector<T>& v, size_t n) {
  if (v.size() < n) v.resize(n);
  return v.data();
}

// One (query, KV head) with its step.
struct Item {
  const DecodeQuery* q;
  int kv;
  int r, k, l;  // k capped at S, l at k
  bool mean;
  GroupRule group;
  SparqTrace* trace;
};

// Scratch of one item, shared by the threads that split it.
struct ItemScratch {
  std::vector<int> i1, i2;
  std::vector<float> qs, qs1, q3, e, mx, sum, w, w_sel, alpha;
  std::vector<uint32_t> topk;
  std::vector<float> part_m, part_z, part_acc;  // per slice of step 3: [G], [G], [G][dpad]
};

ItemScratch& item_scratch() {
  thread_local ItemScratch s;
  return s;
}

std::vector<float>& step3_scratch() {
  thread_local std::vector<float> s;
  return s;
}

struct PhaseTimes {
  double step1 = 0, topk = 0, step3 = 0, mix = 0;
  void add(const PhaseTimes& o, double scale) {
    step1 += o.step1 * scale;
    topk += o.topk * scale;
    step3 += o.step3 * scale;
    mix += o.mix * scale;
  }
};

// [begin, end) of part p's share of n, in multiples of unit.
std::pair<int, int> share(int n, int unit, int p, int parts) {
  const int units = (n + unit - 1) / unit;
  const int b = int(int64_t(units) * p / parts) * unit, e = int(int64_t(units) * (p + 1) / parts) * unit;
  return {std::min(b, n), std::min(e, n)};
}

// One item's step, phase by phase, so that a split item can run its steps 1
// and 3 in parts over the work team: step 1 over ranges of blocks of
// positions, step 3 over slices of the selected rows, each into a partial
// softmax of its own that merge() combines.
class ItemStep {
 public:
  ItemStep(const Item& it, int layer, int n_heads, ItemScratch& x)
      : it_(it), x_(x), cache_(*it.q->cache), layer_(layer) {
    const KVShape& sh = cache_.shape();
    d_ = sh.head_dim;
    G_ = n_heads / sh.n_kv_heads;
    nb_ = (it.q->S + B - 1) / B;
    n_ = it.q->S - it.l;  // m of the first n positions, then the last l
    m_ = it.k - it.l;
    want_alpha_ = it.mean || it.trace;
    scores_ = m_ < n_ && (m_ > 0 || want_alpha_);
    // Step 1's heads: the group's (prob rule); or, for the logit rule, one
    // more whose query is the sum of theirs, since the sum of the heads'
    // approximate logits is that query's logit (the group's heads are still
    // scored when alpha is wanted).
    logit_ = it.group == GroupRule::logit;
    H1_ = !logit_ ? G_ : want_alpha_ ? G_ + 1 : 1;
    const int G = G_, d = d_, dp = sparq_dpad(d), H1 = H1_;
    const float* q = it.q->q + size_t(it.kv) * G * d;
    grow(x.i1, size_t(it.r));
    grow(x.qs, size_t(G) * it.r);
    grow(x.q3, size_t(G) * d);
    grow(x.i2, size_t(it.k));
    grow(x.alpha, size_t(G) + 1);
    grow(x.qs1, size_t(H1) * it.r);
    grow(x.part_m, size_t(slices()) * G);
    grow(x.part_z, size_t(slices()) * G);
    grow(x.part_acc, size_t(slices()) * G * dp);
    if (scores_) {
      grow(x.e, size_t(nb_) * H1 * B);
      grow(x.mx, size_t(nb_) * H1);
      grow(x.sum, size_t(nb_) * H1);
      grow(x.w, size_t(nb_) * H1);
      if (logit_) grow(x.w_sel, size_t(nb_) * H1);
      grow(x.topk, sparq_select_scratch(n_));
    }
    sparq_select_components(q, G, d, it.r, sh.type, x.i1.data(), x.qs.data());
    float* qs1 = x.qs1.data();
    if (H1 != 1 || !logit_) std::copy_n(x.qs.data(), size_t(G) * it.r, qs1);  // the group's heads are scored
    if (logit_)
      for (int j = 0; j < it.r; ++j) {
        float v = 0;
        for (int h = 0; h < G; ++h) v += x.qs[size_t(h) * it.r + j];
        qs1[size_t(H1 - 1) * it.r + j] = query_for(sh.type, v);
      }
    for (size_t i = 0; i < size_t(G) * d; ++i) x.q3[i] = query_for(sh.type, q[i]);  // as dense does
  }

  int blocks() const { return nb_; }
  int slices() const { return (it_.k + kSliceRows - 1) / kSliceRows; }  // it.k >= 1

  // Step 1: approximate scores from r components of every key, blocks [b0, b1).
  void step1(int b0, int b1) {
    if (!scores_ || b0 >= b1) return;
    const SparqStep1Args a{cache_.k_t(layer_, it_.kv), cache_.shape().type, d_, it_.q->S, x_.i1.data(), it_.r,
                           x_.qs1.data(), H1_};
    kernels().step1(a, b0, b1, x_.e.data(), x_.mx.data(), x_.sum.data());
  }

  // Step 2: the top m of the first n positions, plus the local window; alpha
  // is the step-1 softmax mass of the selection.
  void select() {
    const Kernels& K = kernels();
    const int G = G_, H1 = H1_, nb = nb_, S = it_.q->S;
    if (scores_) {
      K.weights(x_.mx.data(), x_.sum.data(), H1, nb, x_.w.data());
      if (logit_) {  // select by the summed head alone: the others weigh 0
        std::fill_n(x_.w_sel.data(), size_t(H1 - 1) * nb, 0.0f);
        std::copy_n(x_.w.data() + size_t(H1 - 1) * nb, nb, x_.w_sel.data() + size_t(H1 - 1) * nb);
      }
    }
    int* i2 = x_.i2.data();
    float* alpha = want_alpha_ ? x_.alpha.data() : nullptr;
    if (alpha) std::fill_n(alpha, H1, 0.0f);
    if (m_ >= n_) {
      std::iota(i2, i2 + S, 0);
      if (alpha) std::fill_n(alpha, H1, 1.0f);
    } else {
      if (m_ > 0 && !logit_) K.select(x_.e.data(), x_.w.data(), G, nb, n_, m_, i2, alpha, x_.topk.data());
      if (m_ > 0 && logit_) {
        K.select(x_.e.data(), x_.w_sel.data(), H1, nb, n_, m_, i2, nullptr, x_.topk.data());
        if (alpha) K.mass(x_.e.data(), x_.w.data(), H1, nb, i2, m_, alpha);
      }
      std::iota(i2 + m_, i2 + it_.k, n_);
      if (alpha) K.mass(x_.e.data(), x_.w.data(), H1, nb, i2 + m_, it_.k - m_, alpha);
    }
  }

  // Step 3: exact attention over slice p of the selected rows, into partial
  // p, its rows fetched into L2 in one burst first.
  void step3(int p) {
    const int r0 = p * kSliceRows, r1 = std::min(it_.k, r0 + kSliceRows);
    const SparqStep3Args a = step3_args();
    const size_t row = kv_row_bytes(a.type, d_);
    for (int i = r0; i < r1; ++i)
      for (size_t o = 0; o < row; o += 64) {
        __builtin_prefetch(static_cast<const char*>(a.k_rows) + size_t(x_.i2[i]) * row + o, 0, 2);
        __builtin_prefetch(static_cast<const char*>(a.v_rows) + size_t(x_.i2[i]) * row + o, 0, 2);
      }
    float* scratch = grow(step3_scratch(), sparq_step3_scratch(G_, r1 - r0, d_));
    kernels().step3(a, x_.i2.data() + r0, r1 - r0, &x_.part_m[size_t(p) * G_], &x_.part_z[size_t(p) * G_],
                    &x_.part_acc[size_t(p) * G_ * sparq_dpad(d_)], scratch);
  }

  // Merges the slices' partial softmaxes, then mixes with the mean of V.
  void merge() {
    const int parts = slices();
    const int G = G_, d = d_, dp = sparq_dpad(d), S = it_.q->S;
    const float* vsum = cache_.v_sum(layer_, it_.kv);
    for (int h = 0; h < G; ++h) {
      float top = -std::numeric_limits<float>::infinity();
      for (int p = 0; p < parts; ++p) top = std::max(top, x_.part_m[size_t(p) * G + h]);
      float* out = it_.q->out + (size_t(it_.kv) * G + h) * d;
      std::fill(out, out + d, 0.0f);
      float z = 0;
      for (int p = 0; p < parts; ++p) {
        const float f = std::exp2(x_.part_m[size_t(p) * G + h] - top);
        z += f * x_.part_z[size_t(p) * G + h];
        const float* acc = &x_.part_acc[(size_t(p) * G + h) * dp];
        for (int c = 0; c < d; ++c) out[c] += f * acc[c];
      }
      const float mass = it_.mean ? x_.alpha[h] : 1.0f;
      for (int c = 0; c < d; ++c) {
        out[c] *= mass / z;
        if (it_.mean) out[c] += (1.0f - mass) * vsum[c] / float(S);
      }
    }
    if (it_.trace) {
      it_.trace->i1.assign(x_.i1.begin(), x_.i1.begin() + it_.r);
      it_.trace->i2.assign(x_.i2.begin(), x_.i2.begin() + it_.k);
      it_.trace->alpha.assign(x_.alpha.begin(), x_.alpha.begin() + G);
    }
  }

 private:
  SparqStep3Args step3_args() const {
    return SparqStep3Args{cache_.k_rows(layer_, it_.kv), cache_.v_rows(layer_, it_.kv), cache_.shape().type, d_,
                          x_.q3.data(), G_, float(std::numbers::log2e / std::sqrt(double(d_)))};
  }

  const Item& it_;
  ItemScratch& x_;
  const KVCache& cache_;
  int layer_, d_ = 0, G_ = 0, nb_ = 0, n_ = 0, m_ = 0, H1_ = 0;
  bool want_alpha_ = false, scores_ = false, logit_ = false;
};

// Runs one item on `threads` threads: on more than one (an item too large
// for one thread), step 1 in parts and step 3's slices over the work team,
// the rest on this thread between them.
void run_item(const Item& it, int layer, int n_heads, int threads, PhaseTimes& t) {
  // More parts than threads, so a thread the OS holds back leaves little undone.
  const int parts = threads > 1 ? 4 * threads : 1;
  double t0 = omp_get_wtime();
  ItemStep s(it, layer, n_heads, item_scratch());
  parallel_items(parts, threads, [&](int p) {
    const auto [b0, b1] = share(s.blocks(), 1, p, parts);
    s.step1(b0, b1);
  });
  double t1 = omp_get_wtime();
  s.select();
  double t2 = omp_get_wtime();
  parallel_items(s.slices(), threads, [&](int p) { s.step3(p); });
  double t3 = omp_get_wtime();
  s.merge();
  t.add({t1 - t0, t2 - t1, t3 - t2, omp_get_wtime() - t3}, 1.0);
}

void check(const DecodeQuery& q, int layer, int n_heads, const SparqStep& st) {
  check_decode_query(q, layer, n_heads, "sparq");
  const KVShape& s = q.cache->shape();
  if (st.mean && q.S != q.cache->length(layer))
    fail("sparq: mean mixing needs the query over all {} positions of layer {} (the mean of V covers them), got {}",
         q.cache->length(layer), layer, q.S);
  if (st.r < 1 || st.r > s.head_dim) fail("sparq: r must be in [1, {}], got {}", s.head_dim, st.r);
  if (st.k < 1) fail("sparq: k must be >= 1, got {}", st.k);
  if (st.l < 0) fail("sparq: local window must be >= 0, got {}", st.l);
}

void run(std::span<const DecodeQuery> queries, const SparqStep* steps, int layer, int n_heads,
         AttnCounters* counters, std::vector<SparqTrace>* trace) {
  thread_local std::vector<Item> items_of_thread;
  std::vector<Item>& items = items_of_thread;  // a plain reference is shared in the parallel region
  items.clear();
  for (size_t i = 0; i < queries.size(); ++i) {
    const DecodeQuery& q = queries[i];
    const SparqStep& st = steps[i];
    check(q, layer, n_heads, st);
    const int k = std::min(st.k, q.S);
    for (int kv = 0; kv < q.cache->shape().n_kv_heads; ++kv)
      items.push_back(Item{&q, kv, st.r, k, std::min(st.l, k), st.mean, st.group, nullptr});
  }
  if (trace) {
    trace->assign(items.size(), SparqTrace{});
    for (size_t i = 0; i < items.size(); ++i) items[i].trace = &(*trace)[i];
  }
  const int n_items = int(items.size());
  const int threads = team_threads();
  // Whole items go one per thread; the last n_items % threads are split over
  // all threads, unless one of them is too short to repay the extra loops.
  int whole = n_items - n_items % threads;
  for (int i = whole; i < n_items; ++i)
    if (items[i].q->S < kMinSplit) whole = n_items;

  thread_local std::vector<PhaseTimes> times_of_thread;
  std::vector<PhaseTimes>& times = times_of_thread;
  times.assign(size_t(whole), PhaseTimes{});
  parallel_items(whole, [&](int i) { run_item(items[i], layer, n_heads, 1, times[i]); });
  // Per-thread times averaged over the threads, as the whole items ran side by side.
  PhaseTimes total;
  for (const PhaseTimes& t : times) total.add(t, 1.0 / std::min(threads, std::max(whole, 1)));
  for (int i = whole; i < n_items; ++i) run_item(items[i], layer, n_heads, threads, total);
  if (!counters) return;
  for (size_t i = 0; i < queries.size(); ++i) {
    const KVShape& s = queries[i].cache->shape();
    SparqStep st = steps[i];
    st.k = std::min(st.k, queries[i].S);
    st.l = std::min(st.l, st.k);
    counters->calls += 1;
    counters->kv_bytes += uint64_t(s.n_kv_heads) * sparq_step_bytes(st, queries[i].S, s.head_dim, s.type);
    counters->dense_bytes += uint64_t(s.n_kv_heads) * dense_step_bytes(queries[i].S, s.head_dim, s.type);
  }
  counters->t_step1 += total.step1;
  counters->t_topk += total.topk;
  counters->t_step3 += total.step3;
  counters->t_mix += total.mix;
}

}  // namespace

void sparq_decode(std::span<const DecodeQuery> queries, int layer, int n_heads,
                  const SparqSettings& settings, AttnCounters* counters) {
  thread_local std::vector<SparqStep> steps;
  steps.clear();
  for (const DecodeQuery& q : queries) {
    if (!q.cache) fail("sparq: query without cache");
    const SparqStep st = resolve_sparq(settings, q.S, q.cache->shape().head_dim);
    if (st.dense) fail("sparq: the step at S={} resolves to dense attention", q.S);
    steps.push_back(st);
  }
  run(queries, steps.data(), layer, n_heads, counters, nullptr);
}

void sparq_decode_steps(std::span<const DecodeQuery> queries, std::span<const SparqStep> steps, int layer,
                        int n_heads, AttnCounters* counters) {
  if (steps.size() != queries.size()) fail("sparq: {} steps for {} queries", steps.size(), queries.size());
  for (const SparqStep& st : steps)
    if (st.dense) fail("sparq: a step resolves to dense attention");
  run(queries, steps.data(), layer, n_heads, counters, nullptr);
}

void sparq_decode_step(std::span<const DecodeQuery> queries, int layer, int n_heads,
                       const SparqStep& step, AttnCounters* counters, std::vector<SparqTrace>* trace) {
  thread_local std::vector<SparqStep> steps;
  steps.assign(queries.size(), step);
  run(queries, steps.data(), layer, n_heads, counters, trace);
}

}  // namespace sparq
