// The decode/prefill entry points: SparQ and topk steps go to sparq_decode,
// window and h2o to baseline_decode, dense ones to the dense kernels here,
// split over threads by (query, KV head) and, when those are too few, by
// positions. The settings' rules are in attention_settings.cpp.
#include "sparq/kernels/attention.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <numbers>
#include <numeric>
#include <vector>

#include "sparq/kernels/attention_dense.h"
#include "sparq/kernels/baseline_decode.h"
#include "sparq/util/cpu.h"
#include "sparq/util/region_error.h"
#include "sparq/util/work_team.h"
#include "sparq/kernels/sparq_decode.h"
#include "sparq/kernels/sparq_kernels.h"

namespace sparq {

void AttnCounters::add(const AttnCounters& o) {
  calls += o.calls;
  dense_fallbacks += o.dense_fallbacks;
  kv_bytes += o.kv_bytes;
  dense_bytes += o.dense_bytes;
  seconds += o.seconds;
  t_step1 += o.t_step1;
  t_topk += o.t_topk;
  t_step3 += o.t_step3;
  t_mix += o.t_mix;
}

namespace {

// Ranges shorter than this are not split over threads: the merge would cost
// more than the parallelism gains.
constexpr int kMinSplit = 1024;

// Below this many K and V elements to read (tens of microseconds of work),
// waking the thread team costs more than it saves.
constexpr int64_t kMinParallel = int64_t(1) << 18;

// Prefill's query vectors, flattened over (KV head, token, head in group).
struct PrefillWork {
  std::vector<const float*> q;
  std::vector<float*> out;
  std::vector<int> last;
  std::vector<float> qm;  // q8_0: the queries as its keys meet them
};

// One piece of dense work: positions [p0, p1) of one (query, KV head).
struct Task {
  int query, kv_head, p0, p1;
  int slot;   // where the partial result goes
  int item;   // (query, KV head) index; its pieces are slots [first, first + pieces)
};

struct DenseWork {
  std::vector<Task> tasks;
  std::vector<int> first, pieces;  // per item
  std::vector<float> m, l, acc;    // per slot: [group], [group], [group][d]
};

// Each tier's dense kernels; avx512bf16 keeps its hand-written ones.
const DenseKernels kRefDense{ref::dense_partial, ref::prefill_attention};
const DenseKernels kAvx2Dense{avx2::dense_partial, avx2::prefill_attention};
const DenseKernels kAvx512Dense{avx512::dense_partial, avx512::prefill_attention};
const DenseKernels kAvx512Bf16Dense{avx512bf16::dense_partial, avx512bf16::prefill_attention};

// Dense decode attention for all queries (validated by the caller).
void dense_decode(std::span<const DecodeQuery> queries, int layer, int n_heads) {
  thread_local DenseWork work;  // reused: no allocation once grown
  DenseWork& w = work;           // the caller's, shared with the team (not each thread's own)
  const KVShape& shape0 = queries[0].cache->shape();
  const int nkv = shape0.n_kv_heads, group = n_heads / nkv, d = shape0.head_dim;
  for (const DecodeQuery& q : queries)
    if (q.cache->shape().n_kv_heads != nkv || q.cache->shape().head_dim != d)
      fail("attention: queries of one batch must share the KV head count and head size");
  const int threads = team_threads();
  const int items = int(queries.size()) * nkv;
  // Split positions when the items cannot keep every thread busy equally;
  // nsplit makes items * nsplit a multiple of the thread count.
  const int nsplit = items >= 4 * threads ? 1 : threads / std::gcd(items, threads);

  w.tasks.clear();
  w.first.resize(size_t(items));
  w.pieces.resize(size_t(items));
  int slots = 0;
  for (int i = 0; i < items; ++i) {
    const int qi = i / nkv, S = queries[qi].S;
    const int n = std::clamp(S / kMinSplit, 1, nsplit);
    w.first[i] = slots;
    w.pieces[i] = n;
    for (int c = 0; c < n; ++c) {
      // Piece bounds on whole k_t blocks, so the kernels' loads stay aligned.
      constexpr int B = KVCache::kBlock;
      const int p0 = c == 0 ? 0 : int(int64_t(S) * c / n) / B * B;
      const int p1 = c == n - 1 ? S : int(int64_t(S) * (c + 1) / n) / B * B;
      w.tasks.push_back(Task{qi, i % nkv, p0, p1, slots++, i});
    }
  }
  // Largest first, so the dynamic schedule ends balanced.
  std::sort(w.tasks.begin(), w.tasks.end(),
            [](const Task& a, const Task& b) { return a.p1 - a.p0 > b.p1 - b.p0; });
  w.m.resize(size_t(slots) * group);
  w.l.resize(size_t(slots) * group);
  w.acc.resize(size_t(slots) * group * d);

  int64_t elems = 0;
  for (const DecodeQuery& q : queries) elems += int64_t(q.S) * nkv * d * 2;
  const int ntasks = int(w.tasks.size());
  const int team = elems < kMinParallel ? 1 : std::min(threads, ntasks);
  const CpuTier tier = cpu_tier();  // one tier for the whole call
  parallel_items(ntasks, team, [&](int t) {
    const Task& k = w.tasks[t];
    const DecodeQuery& q = queries[k.query];
    const DenseSpan span{q.cache->k_rows(layer, k.kv_head), q.cache->k_t(layer, k.kv_head),
                         q.cache->v_rows(layer, k.kv_head),
                         q.cache->shape().type, d, group, q.q + size_t(k.kv_head) * group * d,
                         k.p0, k.p1};
    const size_t s = size_t(k.slot) * group;
    dense_partial(tier, span, DensePartial{&w.m[s], &w.l[s], &w.acc[s * d]});
  });
  // Merge the pieces: rescale each to the common max, then normalise.
  for (int i = 0; i < items; ++i) {
    const DecodeQuery& q = queries[i / nkv];
    for (int h = 0; h < group; ++h) {
      const size_t s0 = size_t(w.first[i]) * group + h;
      float m = -std::numeric_limits<float>::infinity();
      for (int c = 0; c < w.pieces[i]; ++c) m = std::max(m, w.m[s0 + size_t(c) * group]);
      float* out = q.out + (size_t(i % nkv) * group + h) * d;
      std::fill(out, out + d, 0.0f);
      float l = 0;
      for (int c = 0; c < w.pieces[i]; ++c) {
        const size_t s = s0 + size_t(c) * group;
        const float f = std::exp(w.m[s] - m);
        l += f * w.l[s];
        for (int j = 0; j < d; ++j) out[j] += f * w.acc[s * d + j];
      }
      for (int j = 0; j < d; ++j) out[j] /= l;
    }
  }
}

}  // namespace

const DenseKernels& dense_kernels(CpuTier t) {
  return for_tier(t, kRefDense, kAvx2Dense, kAvx512Dense, kAvx512Bf16Dense);
}

void dense_partial(CpuTier t, const DenseSpan& s, const DensePartial& out) {
  if (s.type != KVType::Q8_0 || t == CpuTier::portable) return dense_kernels(t).dense_partial(s, out);
  thread_local std::vector<int> rows;  // 0, 1, 2, ...: the span's rows are rows.data() + p0 on
  thread_local std::vector<float> mx, z, acc, scratch;
  const int n = s.p1 - s.p0, d = s.d, dp = sparq_dpad(d);
  if (rows.size() < size_t(s.p1)) {
    rows.resize(size_t(s.p1));
    std::iota(rows.begin(), rows.end(), 0);
  }
  mx.resize(size_t(s.group));
  z.resize(size_t(s.group));
  acc.resize(size_t(s.group) * dp);
  scratch.resize(sparq_step3_scratch(s.group, n, d));
  const SparqStep3Args a{s.k, s.v, s.type, d, s.q, s.group, float(std::numbers::log2e / std::sqrt(double(d)))};
  sparq_kernels(t).step3(a, rows.data() + s.p0, n, mx.data(), z.data(), acc.data(), scratch.data());
  // Step 3's scores are in log2 units; a partial's m is in natural ones.
  for (int h = 0; h < s.group; ++h) {
    out.m[h] = mx[size_t(h)] * std::numbers::ln2_v<float>;
    out.l[h] = z[size_t(h)];
    std::copy_n(&acc[size_t(h) * dp], d, out.acc + size_t(h) * d);
  }
}

void check_decode_query(const DecodeQuery& q, int layer, int n_heads, const char* who) {
  if (!q.cache || !q.q || !q.out) fail("{}: query without cache, q or output", who);
  const KVShape& s = q.cache->shape();
  if (layer < 0 || layer >= s.n_layers) fail("{}: layer {} out of range [0, {})", who, layer, s.n_layers);
  if (n_heads <= 0 || n_heads % s.n_kv_heads != 0)
    fail("{}: {} query heads is not a multiple of {} KV heads", who, n_heads, s.n_kv_heads);
  if (q.S < 1 || q.S > q.cache->length(layer))
    fail("{}: query over {} positions but layer {} holds {}", who, q.S, layer, q.cache->length(layer));
}

void attention_decode(std::span<const DecodeQuery> queries, int layer, int n_heads,
                      const AttentionSettings& settings, AttnCounters* counters) {
  const auto t0 = std::chrono::steady_clock::now();
  if (queries.empty()) return;
  for (const DecodeQuery& q : queries) check_decode_query(q, layer, n_heads, "attention");
  thread_local std::vector<DecodeQuery> sparse, dense;
  thread_local std::vector<SparqStep> steps;
  sparse.clear();
  dense.clear();
  steps.clear();
  const Method method = settings.method;
  const bool here = settings.runs_at(layer);
  for (const DecodeQuery& q : queries) {
    const int d = q.cache->shape().head_dim;
    bool sp = settings.sparq && here;
    if (sp && method == Method::sparq) steps.push_back(resolve_sparq(settings.sp, q.S, d));
    if (sp && method == Method::topk) steps.push_back(resolve_topk(settings.sp, q.S, d));
    if (sp && method == Method::window) sp = baseline_budget(settings.sp, q.S, d) < q.S;
    if (!steps.empty() && steps.back().dense) {
      steps.pop_back();
      sp = false;
    }
    (sp ? sparse : dense).push_back(q);
  }
  if (!sparse.empty()) {
    if (method == Method::window) window_decode(sparse, layer, n_heads, settings, counters);
    else if (method == Method::h2o) h2o_decode(sparse, layer, n_heads, settings, counters);  // seeds or evicts itself
    else sparq_decode_steps(sparse, steps, layer, n_heads, counters);
  }
  if (!dense.empty()) dense_decode(dense, layer, n_heads);
  if (!counters) return;
  for (const DecodeQuery& q : dense) {
    const KVShape& s = q.cache->shape();
    const uint64_t bytes = uint64_t(s.n_kv_heads) * dense_step_bytes(q.S, s.head_dim, s.type);
    counters->calls += 1;
    counters->kv_bytes += bytes;
    counters->dense_bytes += bytes;
    if (settings.sparq && here) counters->dense_fallbacks += 1;
  }
  counters->seconds += seconds_since(t0);
}

void attention_prefill(const KVCache& cache, int layer, int p0, int T, int n_heads, const float* q,
                       size_t q_stride, float* out) {
  if (T <= 0) return;
  const KVShape& sh = cache.shape();
  if (layer < 0 || layer >= sh.n_layers) fail("attention: layer {} out of range [0, {})", layer, sh.n_layers);
  if (p0 < 0 || int64_t(p0) + T > cache.length(layer))
    fail("attention: prompt positions {}..{} but layer {} holds {}", p0, int64_t(p0) + T - 1, layer,
         cache.length(layer));
  if (!q || !out) fail("attention: prompt without queries or output");
  if (n_heads <= 0 || n_heads % sh.n_kv_heads != 0)
    fail("attention: {} query heads is not a multiple of {} KV heads", n_heads, sh.n_kv_heads);
  const int nkv = sh.n_kv_heads, group = n_heads / nkv, d = sh.head_dim;

  // The query vectors of each KV head, token by token (token t sees
  // positions [0, p0 + t]), cut into tiles of consecutive vectors.
  thread_local PrefillWork work;
  PrefillWork& w = work;  // the caller's, shared with the team
  const int per_head = T * group;
  const size_t total = size_t(nkv) * per_head;
  w.q.resize(total);
  w.out.resize(total);
  w.last.resize(total);
  // q8_0 keys meet each query quantized, as in decode (kv_query_as_met).
  const bool q8 = sh.type == KVType::Q8_0;
  w.qm.resize(q8 ? size_t(T) * n_heads * d : 0);
  for (int t = 0; t < T && q8; ++t)
    for (int h = 0; h < n_heads; ++h)
      kv_query_as_met(q + t * q_stride + size_t(h) * d, d, &w.qm[(size_t(t) * n_heads + h) * d]);
  for (int kv = 0; kv < nkv; ++kv)
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < group; ++g) {
        const size_t i = size_t(kv) * per_head + size_t(t) * group + g, head = size_t(kv) * group + g;
        w.q[i] = q8 ? &w.qm[(size_t(t) * n_heads + head) * d] : q + t * q_stride + head * d;
        w.out[i] = out + (size_t(t) * n_heads + head) * d;
        w.last[i] = p0 + t;
      }
  // Tiles of up to 64 vectors (the kernel's most), as even as multiples of
  // 16 allow (a 16-vector tile costs ~1.4x more per vector than wider ones),
  // and more of them while threads would sit idle.
  const int threads = team_threads();
  const auto width_for = [&](int tiles) { return ((per_head + tiles - 1) / tiles + 15) / 16 * 16; };
  int tiles = (per_head + 63) / 64;
  while (nkv * tiles < threads && width_for(tiles) > 16) ++tiles;
  const int width = width_for(tiles);
  const int per_kv = (per_head + width - 1) / width, ntiles = nkv * per_kv;
  const int64_t elems = int64_t(n_heads) * (int64_t(T) * p0 + int64_t(T) * (T + 1) / 2) * d * 2;
  const int team = elems < kMinParallel ? 1 : std::min(threads, ntiles);
  // On OpenMP's threads, as the prompt's matrix products beside it: on the
  // work team, llama-27m-prose's pp512 ran 11% slower (a third set of threads
  // for the OS to place at each hand-over).
  RegionError err;  // a kernel's scratch may fail to grow
  const auto kernel = dense_kernels(cpu_tier()).prefill_attention;
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (team > 1)
  for (int j = 0; j < ntiles; ++j) {
    // Later tokens see more positions: their tiles first, so the schedule ends balanced.
    const int kv = j % nkv, i0 = (per_kv - 1 - j / nkv) * width;
    const size_t b = size_t(kv) * per_head + i0;
    const PrefillSpan span{cache.k_rows(layer, kv), cache.v_rows(layer, kv), sh.type, d,
                           std::min(width, per_head - i0), &w.q[b], &w.last[b], &w.out[b]};
    err.guard([&] { kernel(span); });
  }
  err.rethrow();
}

}  // namespace sparq
