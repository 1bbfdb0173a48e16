#include "sparq/bench/bench_attention.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <memory>

#include "sparq/kernels/attention.h"
#include "sparq/kernels/bandwidth.h"
#include "sparq/bench/bench_data.h"
#include "sparq/bench/bench_table.h"
#include "sparq/kernels/kv_cache.h"

namespace sparq {
namespace {

using Clock = std::chrono::steady_clock;

struct Row {
  std::string setting;
  KVType kv;
  int S, d, group, layers;
  MeanSd ms;
  double kv_bytes;  // per step (one layer, all KV heads)
  double gbs, pct, pct_read, speedup;  // speedup 0: no dense row for this shape
  double step1_ms, topk_ms, step3_ms;  // SparQ phases per step (0 for dense)
  double vs_first_kv = 0;  // the first KV type's time for this setting and shape over this one's (0: none)
};

void check(const AttentionBenchOptions& o) {
  auto positive = [](const std::vector<int>& v, const char* what) {
    if (v.empty()) fail("attention bench: no {} given", what);
    for (int x : v)
      if (x < 1) fail("attention bench: {} must be >= 1, got {}", what, x);
  };
  positive(o.seq_lens, "sequence lengths");
  positive(o.head_dims, "head sizes");
  positive(o.groups, "group sizes");
  if (o.n_kv_heads < 1) fail("attention bench: KV heads must be >= 1, got {}", o.n_kv_heads);
  if (o.settings.empty()) fail("attention bench: no attention settings given");
  if (o.kv_types.empty()) fail("attention bench: no KV types given");
  if (o.threads < 0) fail("attention bench: threads must be >= 0, got {}", o.threads);
  if (o.reps < 1) fail("attention bench: reps must be >= 1, got {}", o.reps);
  bench_format(o.format);
  if (o.bandwidth_gbs < 0) fail("attention bench: bandwidth must be >= 0, got {}", o.bandwidth_gbs);
}

// Queries with heavy-tailed components (a normal times a log-normal), so
// SparQ's top-r selection is not degenerate.
std::vector<float> heavy_tailed(size_t n, Rng& rng) {
  std::vector<float> q(n);
  for (float& x : q) x = rng.normal() * std::exp(rng.normal());
  return q;
}

// Bytes the plain read below takes from each array dense reads of S
// positions: whole 256-byte steps, its loop's unit.
size_t read_array_bytes(int S, int d, KVType t) { return size_t(S) * kv_row_bytes(t, d) / 256 * 256; }

// A plain streaming read of the bytes dense attention reads (every layer's
// k_t, or K rows for q8_0, and v_rows, S positions), over the same threads; returns a checksum so
// the loads stay. Timed in the same repetitions as the kernels, it is the
// yardstick a noisy shared machine cannot skew.
uint64_t read_dense_bytes(const KVCache& c, int S) {
  const KVShape& s = c.shape();
  const size_t bytes = read_array_bytes(S, s.head_dim, s.type);
  const int arrays = s.n_layers * s.n_kv_heads * 2;
  uint64_t sum = 0;
#pragma omp parallel for schedule(static) reduction(^ : sum)
  for (int i = 0; i < arrays; ++i) {
    const int l = i / (2 * s.n_kv_heads), h = i / 2 % s.n_kv_heads;
    sum ^= read_checksum(i % 2 ? c.v_rows(l, h) : s.type == KVType::Q8_0 ? c.k_rows(l, h) : c.k_t(l, h), bytes);
  }
  return sum;
}

// A SparQ phase time, or empty for dense rows.
BenchRow phase(double ms) { return ms > 0 ? BenchRow(ms) : BenchRow(); }

// Gather bandwidth for rows of each head size, 1 in 16 as sparq:8 reads
// them in step 3: (row bytes, GB/s).
using Gathers = std::vector<std::pair<int, double>>;

void print_rows(std::FILE* out, const AttentionBenchOptions& o, double bw, const Gathers& gathers, int threads,
                const std::vector<Row>& rows) {
  const char* note = "random data (keys with per-channel scales, heavy-tailed queries), batch 1";
  BenchTable t;
  std::string kv_names;
  for (KVType k : o.kv_types) kv_names += fmt::format("{}{}", kv_names.empty() ? "" : ",", kv_type_name(k));
  t.meta = {{"kernel", "attention"}, {"data", note},       {"bandwidth_gbs", bw},         {"threads", threads},
            {"kv_type", kv_names}, {"kv_heads", o.n_kv_heads}, {"reps", o.reps}};
  t.notes = {fmt::format("attention bench: one decode step, {}", note),
             fmt::format("{} thread(s), {} KV heads, {} cache, {} rep(s); measured read bandwidth {:.1f} GB/s", threads,
                         o.n_kv_heads, kv_names, o.reps, bw),
             "time per step = one layer's attention (mean ± sd over reps, the settings and KV types taking turns in each); KV = bytes read per step",
             "read = a plain streaming read of dense's bytes, timed in the same reps; % of read = GB/s against it",
             fmt::format("vs {0} = the {0} cache's time for the same setting and shape over this row's", kv_type_name(o.kv_types[0]))};
  if (!gathers.empty()) {
    std::string g;
    BenchRow j = BenchRow::object();
    for (const auto& [bytes, gbs] : gathers) {
      g += fmt::format("{}{} B: {:.1f} GB/s", g.empty() ? "" : ", ", bytes, gbs);
      j[std::to_string(bytes)] = gbs;
    }
    t.notes.push_back(fmt::format("measured gather of random rows, 1 in 16 in ascending order (as SparQ's step 3 reads them): {}", g));
    t.meta["gather_gbs"] = j;
  }
  t.columns = {bench_column("setting", "setting"),
               bench_column("KV", "kv_type"),
               bench_column("S", "S"),
               bench_column("d", "d"),
               bench_column("group", "group"),
               bench_column("layers", "layers"),
               bench_column_pm("ms/step", "ms_mean", "ms_sd", 3),
               bench_column("KV MiB/step", "kv_bytes", 2, 1.0 / 1048576.0),
               bench_column("GB/s", "gbs", 1),
               bench_column("% of bw", "pct_bandwidth", 0, 1.0, "%"),
               bench_column("% of read", "pct_read", 0, 1.0, "%"),
               bench_column("speedup vs dense", "speedup_vs_dense", 2, 1.0, "x"),
               bench_column(fmt::format("vs {}", kv_type_name(o.kv_types[0])), "speedup_vs_first_kv", 2, 1.0, "x"),
               bench_column("step 1 ms", "step1_ms", 3),
               bench_column("top-k ms", "topk_ms", 3),
               bench_column("step 3 ms", "step3_ms", 3)};
  for (const Row& r : rows)
    t.rows.push_back({{"setting", r.setting}, {"kv_type", kv_type_name(r.kv)}, {"S", r.S}, {"d", r.d}, {"group", r.group}, {"layers", r.layers},
                      {"ms_mean", r.ms.mean}, {"ms_sd", r.ms.sd}, {"kv_bytes", r.kv_bytes}, {"gbs", r.gbs},
                      {"pct_bandwidth", r.pct}, {"pct_read", r.pct_read},
                      {"speedup_vs_dense", r.speedup > 0 ? BenchRow(r.speedup) : BenchRow()},
                      {"speedup_vs_first_kv", r.vs_first_kv > 0 ? BenchRow(r.vs_first_kv) : BenchRow()},
                      {"step1_ms", phase(r.step1_ms)}, {"topk_ms", phase(r.topk_ms)}, {"step3_ms", phase(r.step3_ms)}});
  add_run_facts(t);
  print_bench_table(out, t, o.format);
}

}  // namespace

int run_attention_bench(const AttentionBenchOptions& o, std::FILE* out) {
  check(o);
  std::vector<AttentionSettings> settings;
  for (const std::string& s : o.settings) settings.push_back(parse_attention_setting(s));
  const int saved_threads = omp_get_max_threads();
  const int threads = o.threads > 0 ? o.threads : saved_threads;
  omp_set_num_threads(threads);
  const double bw = o.bandwidth_gbs > 0 ? o.bandwidth_gbs : measure_read_bandwidth_gbs(threads);
  Gathers gathers;  // measured along with the bandwidth, not when it is given
  if (o.bandwidth_gbs <= 0)
    for (KVType k : o.kv_types)
      for (int d : o.head_dims) {
        const int bytes = int(kv_row_bytes(k, d) + 63) / 64 * 64;
        if (std::none_of(gathers.begin(), gathers.end(), [&](const auto& g) { return g.first == bytes; }))
          gathers.emplace_back(bytes, measure_gather_bandwidth_gbs(threads, bytes, 16));
      }

  Rng rng{o.seed};
  std::vector<Row> rows;
  const size_t nk = o.kv_types.size(), ns = settings.size();
  for (int S : o.seq_lens)
    for (int d : o.head_dims) {
      // Per KV type, enough layers (separate cache regions) that one pass
      // reads at least min_cache_mib, so the bytes come from DRAM rather than
      // cache; the caches are filled from one seed.
      std::vector<std::unique_ptr<KVCache>> caches;
      std::vector<int> layers;
      for (KVType k : o.kv_types) {
        const double layer_bytes = double(o.n_kv_heads) * double(dense_step_bytes(S, d, k));
        layers.push_back(int(std::max(1.0, std::ceil(double(o.min_cache_mib) * 1048576.0 / layer_bytes))));
      }
      const int most = *std::max_element(layers.begin(), layers.end());
      const uint64_t seed = rng.next();
      for (size_t ki = 0; ki < nk; ++ki) {
        caches.push_back(std::make_unique<KVCache>(KVShape{layers[ki], o.n_kv_heads, d, S, o.kv_types[ki]}));
        Rng same{seed};
        fill_cache(*caches.back(), S, same);
      }
      for (int group : o.groups) {
        const int n_heads = o.n_kv_heads * group;
        std::vector<std::vector<float>> q, y(size_t(most), std::vector<float>(size_t(n_heads) * d));
        for (int l = 0; l < most; ++l) q.push_back(heavy_tailed(size_t(n_heads) * d, rng));
        // Repetitions take the (KV type, setting) pairs in turn, each type's
        // plain read (slot ns) after its settings, so a slow spell of a
        // shared machine hits them alike and the ratios compare like with like.
        std::vector<std::vector<AttnCounters>> counters(nk, std::vector<AttnCounters>(ns));
        std::vector<std::vector<std::vector<double>>> ms(nk, std::vector<std::vector<double>>(ns + 1));
        uint64_t sink = 0;
        for (int rep = 0; rep <= o.reps; ++rep)  // rep 0 warms up
          for (size_t ki = 0; ki < nk; ++ki)
            for (size_t si = 0; si <= ns; ++si) {
              const KVCache& cache = *caches[ki];
              AttnCounters c;
              const auto t0 = Clock::now();
              if (si == ns)
                sink ^= read_dense_bytes(cache, S);
              else
                for (int l = 0; l < layers[ki]; ++l) {
                  const DecodeQuery dq{&cache, S, q[l].data(), y[l].data()};
                  attention_decode({&dq, 1}, l, n_heads, settings[si], &c);
                }
              const double t = std::chrono::duration<double, std::milli>(Clock::now() - t0).count();
              if (rep > 0) {
                ms[ki][si].push_back(t / layers[ki]);
                if (si < ns) counters[ki][si].add(c);
              }
            }
        volatile uint64_t keep = sink;
        (void)keep;
        const size_t first = rows.size();
        for (size_t ki = 0; ki < nk; ++ki) {
          const KVType k = o.kv_types[ki];
          const double read_bytes = double(o.n_kv_heads) * 2.0 * double(read_array_bytes(S, d, k));
          const MeanSd read_ms = mean_sd(ms[ki][ns]);
          const double read_gbs = read_bytes / (read_ms.mean * 1e-3) / 1e9;
          double dense_ms = 0;
          const size_t type_first = rows.size();
          for (size_t si = 0; si < ns; ++si) {
            const MeanSd t = mean_sd(ms[ki][si]);
            const AttnCounters& cs = counters[ki][si];
            const double bytes = double(cs.kv_bytes) / double(cs.calls);
            const double gbs = bytes / (t.mean * 1e-3) / 1e9;
            if (!settings[si].sparq && dense_ms == 0) dense_ms = t.mean;
            const double per_step = 1e3 / double(cs.calls);
            rows.push_back(Row{o.settings[si], k, S, d, group, layers[ki], t, bytes, gbs, 100.0 * gbs / bw,
                               100.0 * gbs / read_gbs, 0.0, cs.t_step1 * per_step, cs.t_topk * per_step,
                               cs.t_step3 * per_step});
            if (ki > 0) rows.back().vs_first_kv = rows[first + si].ms.mean / t.mean;
          }
          rows.push_back(Row{"read", k, S, d, group, layers[ki], read_ms, read_bytes, read_gbs, 100.0 * read_gbs / bw,
                             100.0, 0.0, 0.0, 0.0, 0.0});
          // Speedups once the dense time of this shape is known, wherever it was listed.
          for (size_t i = type_first; i < rows.size(); ++i)
            rows[i].speedup = dense_ms > 0 ? dense_ms / rows[i].ms.mean : 0.0;
        }
      }
    }
  omp_set_num_threads(saved_threads);
  print_rows(out, o, bw, gathers, threads, rows);
  return 0;
}

}  // namespace sparq
