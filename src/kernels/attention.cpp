// Attention settings and their rules, and the decode/prefill entry points:
// SparQ steps go to sparq_decode, dense ones to the dense kernels here, split
// over threads by (query, KV head) and, when those are too few, by positions.
#include "sparq/kernels/attention.h"

#include <omp.h>

#include <algorithm>
#include <charconv>
#include <chrono>
#include <cmath>
#include <limits>
#include <numeric>
#include <vector>

#include "sparq/kernels/attention_dense.h"
#include "sparq/util/cpu.h"
#include "sparq/util/region_error.h"
#include "sparq/kernels/sparq_decode.h"

namespace sparq {

void SparqSettings::validate() const {
  if (r < 0) fail("SparQ r must be >= 0 (0: from the ratio), got {}", r);
  if (k < 0) fail("SparQ k must be >= 0 (0: from the ratio), got {}", k);
  if (local < -1) fail("SparQ local window must be >= 0 (-1: k/4), got {}", local);
  if (ratio < 0) fail("SparQ ratio must be >= 0, got {}", ratio);
  if (k_floor < 1) fail("SparQ k floor must be >= 1, got {}", k_floor);
  if ((r == 0 || k == 0) && ratio == 0) fail("SparQ needs r and k, or a ratio to derive them from");
}

std::string AttentionSettings::describe() const {
  if (!sparq) return "dense";
  std::string s = "sparq";
  const bool from_ratio = sp.r == 0 || sp.k == 0;
  if (from_ratio) s += fmt::format(" 1/{}", sp.ratio);
  if (sp.r > 0) s += fmt::format(" r={}", sp.r);
  if (sp.k > 0) s += fmt::format(" k={}", sp.k);
  if (sp.local >= 0) s += fmt::format(" l={}", sp.local);
  else if (sp.k > 0) s += fmt::format(" l={}", sp.k / 4);
  if (sp.k == 0 && sp.k_floor != SparqSettings{}.k_floor) s += fmt::format(" floor={}", sp.k_floor);
  if (sp.mean_mixing) s += " mean";
  if (!sp.dense_fallback) s += " nofallback";
  return s;
}

AttentionSettings parse_attention_setting(const std::string& text) {
  auto bad = [&](const std::string& why) -> Error {
    return Error(fmt::format("bad attention setting '{}': {} (expected dense, sparq, sparq:N or "
                             "sparq:r=R,k=K[,l=L][,floor=F][,mean][,nofallback])",
                             text, why));
  };
  auto number = [&](std::string_view v) {
    int x = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), x);
    if (v.empty() || ec != std::errc() || end != v.data() + v.size())
      throw bad(fmt::format("'{}' is not an integer", v));
    return x;
  };
  AttentionSettings a;
  if (text == "dense") return a;
  a.sparq = true;
  a.sp.ratio = 8;
  if (text == "sparq") return a;
  const std::string_view prefix = "sparq:";
  if (text.compare(0, prefix.size(), prefix) != 0) throw bad("unknown kind");
  std::string_view rest = std::string_view(text).substr(prefix.size());
  bool ratio_given = false;
  for (bool more = true; more;) {
    const size_t comma = rest.find(',');
    const std::string_view item = rest.substr(0, comma);
    more = comma != std::string_view::npos;
    if (more) rest = rest.substr(comma + 1);
    if (item.empty()) throw bad("empty item");
    const size_t eq = item.find('=');
    const std::string_view key = item.substr(0, eq);
    if (eq == std::string_view::npos) {
      if (item == "mean") a.sp.mean_mixing = true;
      else if (item == "nofallback") a.sp.dense_fallback = false;
      else {
        a.sp.ratio = number(item);
        ratio_given = true;
      }
      continue;
    }
    const int v = number(item.substr(eq + 1));
    if (key == "r") a.sp.r = v;
    else if (key == "k") a.sp.k = v;
    else if (key == "l") a.sp.local = v;
    else if (key == "floor") a.sp.k_floor = v;
    else if (key == "ratio") {
      a.sp.ratio = v;
      ratio_given = true;
    } else throw bad(fmt::format("unknown key '{}'", key));
  }
  // Explicit r and k without a ratio: the default ratio is not used, drop it.
  if (!ratio_given && a.sp.r > 0 && a.sp.k > 0) a.sp.ratio = 0;
  try {
    a.sp.validate();
  } catch (const Error& e) {
    throw bad(e.what());
  }
  return a;
}

// The product rule. Explicit r and k are used as given (r capped at d, k at
// S). Otherwise, with ratio N: r = max(1, d/N) and k = max(S/(2N), k_floor),
// capped at S, so step 1 (S*r) plus step 2 (2*k*d) read about 1/N of the
// 2*S*d elements dense attention reads. The local window is l (when >= 0) or
// k/4, capped at k. When SparQ would read at least as many elements as dense
// attention (short caches, or r and k too large), dense attention runs.
SparqStep resolve_sparq(const SparqSettings& s, int S, int d) {
  s.validate();
  if (S < 1 || d < 1) fail("SparQ step needs S >= 1 and head size >= 1, got S={} d={}", S, d);
  SparqStep st;
  st.mean = s.mean_mixing;
  st.r = s.r > 0 ? std::min(s.r, d) : std::max(1, d / s.ratio);
  const int64_t k = s.k > 0 ? s.k : std::max<int64_t>(S / (2 * int64_t(s.ratio)), s.k_floor);
  st.k = int(std::min<int64_t>(k, S));
  st.l = std::min(s.local >= 0 ? s.local : st.k / 4, st.k);
  st.dense = s.dense_fallback && int64_t(S) * st.r + 2 * int64_t(st.k) * d >= 2 * int64_t(S) * d;
  return st;
}

uint64_t dense_step_bytes(int S, int d, DType t) { return 2 * uint64_t(S) * uint64_t(d) * dtype_size(t); }

uint64_t sparq_step_bytes(const SparqStep& st, int S, int d, DType t) {
  const uint64_t e = dtype_size(t);
  return uint64_t(S) * uint64_t(st.r) * e + 2 * uint64_t(st.k) * uint64_t(d) * e +
         (st.mean ? uint64_t(d) * sizeof(float) : 0);
}

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

void dense_kernel(const DenseSpan& s, const DensePartial& p) {
  if (use_avx512())
    avx512::dense_partial(s, p);
  else
    ref::dense_partial(s, p);
}

// Dense decode attention for all queries (validated by the caller).
void dense_decode(std::span<const DecodeQuery> queries, int layer, int n_heads) {
  thread_local DenseWork work;  // reused: no allocation once grown
  DenseWork& w = work;           // the caller's, shared with the team (not each thread's own)
  const KVShape& shape0 = queries[0].cache->shape();
  const int nkv = shape0.n_kv_heads, group = n_heads / nkv, d = shape0.head_dim;
  for (const DecodeQuery& q : queries)
    if (q.cache->shape().n_kv_heads != nkv || q.cache->shape().head_dim != d)
      fail("attention: queries of one batch must share the KV head count and head size");
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
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
  RegionError err;  // a kernel's scratch may fail to grow
#pragma omp parallel num_threads(team) if (team > 1)
  {
#pragma omp for schedule(dynamic, 1)
    for (int t = 0; t < ntasks; ++t) {
      const Task& k = w.tasks[t];
      const DecodeQuery& q = queries[k.query];
      const DenseSpan span{q.cache->k_rows(layer, k.kv_head), q.cache->k_t(layer, k.kv_head),
                           q.cache->v_rows(layer, k.kv_head),
                           q.cache->shape().type, d, group, q.q + size_t(k.kv_head) * group * d,
                           k.p0, k.p1};
      const size_t s = size_t(k.slot) * group;
      err.guard([&] { dense_kernel(span, DensePartial{&w.m[s], &w.l[s], &w.acc[s * d]}); });
    }
#pragma omp for schedule(static)
    for (int i = 0; i < items; ++i) {
      const DecodeQuery& q = queries[i / nkv];
      for (int h = 0; h < group; ++h) {
        // Merge the pieces: rescale each to the common max, then normalise.
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
  err.rethrow();
}

}  // namespace

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
  sparse.clear();
  dense.clear();
  for (const DecodeQuery& q : queries) {
    const bool sp = settings.sparq && !resolve_sparq(settings.sp, q.S, q.cache->shape().head_dim).dense;
    (sp ? sparse : dense).push_back(q);
  }
  if (!sparse.empty()) sparq_decode(sparse, layer, n_heads, settings.sp, counters);
  if (!dense.empty()) dense_decode(dense, layer, n_heads);
  if (!counters) return;
  for (const DecodeQuery& q : dense) {
    const KVShape& s = q.cache->shape();
    const uint64_t bytes = uint64_t(s.n_kv_heads) * dense_step_bytes(q.S, s.head_dim, s.type);
    counters->calls += 1;
    counters->kv_bytes += bytes;
    counters->dense_bytes += bytes;
    if (settings.sparq) counters->dense_fallbacks += 1;
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
  for (int kv = 0; kv < nkv; ++kv)
    for (int t = 0; t < T; ++t)
      for (int g = 0; g < group; ++g) {
        const size_t i = size_t(kv) * per_head + size_t(t) * group + g, head = size_t(kv) * group + g;
        w.q[i] = q + t * q_stride + head * d;
        w.out[i] = out + (size_t(t) * n_heads + head) * d;
        w.last[i] = p0 + t;
      }
  // Tiles of up to 64 vectors (the kernel's most), as even as multiples of
  // 16 allow (a 16-vector tile costs ~1.4x more per vector than wider ones),
  // and more of them while threads would sit idle.
  const int threads = omp_in_parallel() ? 1 : omp_get_max_threads();
  const auto width_for = [&](int tiles) { return ((per_head + tiles - 1) / tiles + 15) / 16 * 16; };
  int tiles = (per_head + 63) / 64;
  while (nkv * tiles < threads && width_for(tiles) > 16) ++tiles;
  const int width = width_for(tiles);
  const int per_kv = (per_head + width - 1) / width, ntiles = nkv * per_kv;
  const int64_t elems = int64_t(n_heads) * (int64_t(T) * p0 + int64_t(T) * (T + 1) / 2) * d * 2;
  const int team = elems < kMinParallel ? 1 : std::min(threads, ntiles);
  RegionError err;  // a kernel's scratch may fail to grow
#pragma omp parallel for schedule(dynamic, 1) num_threads(team) if (team > 1)
  for (int j = 0; j < ntiles; ++j) {
    // Later tokens see more positions: their tiles first, so the schedule ends balanced.
    const int kv = j % nkv, i0 = (per_kv - 1 - j / nkv) * width;
    const size_t b = size_t(kv) * per_head + i0;
    const PrefillSpan span{cache.k_rows(layer, kv), cache.v_rows(layer, kv), sh.type, d,
                           std::min(width, per_head - i0), &w.q[b], &w.last[b], &w.out[b]};
    err.guard([&] {
      if (use_avx512())
        avx512::prefill_attention(span);
      else
        ref::prefill_attention(span);
    });
  }
  err.rethrow();
}

}  // namespace sparq
