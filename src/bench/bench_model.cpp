#include "sparq/bench/bench_model.h"

#include <malloc.h>
#include <omp.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <random>
#include <utility>

#include "sparq/kernels/attention.h"
#include "sparq/kernels/bandwidth.h"
#include "sparq/bench/bench_table.h"
#include "sparq/bench/bench_data.h"
#include "sparq/engine/kv_budget.h"
#include "sparq/model/model.h"
#include "sparq/model/shapes.h"
#include "sparq/util/cpu.h"
#include "sparq/util/process_memory.h"

namespace sparq {
namespace {

using Clock = std::chrono::steady_clock;


int max_of(const std::vector<int>& v) { return *std::max_element(v.begin(), v.end()); }

void check(const ModelBenchOptions& o) {
  auto at_least = [](const std::vector<int>& v, int lo, const char* what) {
    if (v.empty()) fail("model bench: no {} given", what);
    for (int x : v)
      if (x < lo) fail("model bench: {} must be >= {}, got {}", what, lo, x);
  };
  if (o.model.empty() == o.shape.empty()) fail("model bench: give a model with -m/--model or a shape with --shape");
  if (!o.shape.empty() && !o.text.empty()) fail("model bench: --shape models have no tokenizer: -f needs -m");
  at_least(o.prompt_lens, 0, "prompt lengths (-p)");
  at_least(o.gen_lens, 0, "generated tokens (-n)");
  at_least(o.depths, 0, "depths (-d)");
  at_least(o.threads, 0, "threads (-t)");
  at_least(o.parallel, 1, "parallel sequences (--parallel)");
  if (max_of(o.prompt_lens) == 0 && max_of(o.gen_lens) == 0) fail("model bench: -p and -n are all 0: nothing to time");
  if (o.settings.empty()) fail("model bench: no attention settings given");
  if (o.kv_types.empty()) fail("model bench: no KV types given");
  if (o.reps < 1) fail("model bench: repetitions must be >= 1, got {}", o.reps);
  if (o.batch < 1) fail("model bench: batch size must be >= 1, got {}", o.batch);
  if (o.bandwidth_gbs < 0) fail("model bench: bandwidth must be >= 0, got {}", o.bandwidth_gbs);
  bench_format(o.format);
}

// A shape's weights, the largest matrix while it is converted, and the KV
// caches of the run must fit in the memory available: refused in one line
// otherwise, before anything is allocated.
void check_shape_fits(const std::string& shape, const ModelConfig& c, WeightFormat wt, int ctx, int B,
                      const std::vector<KVType>& kv_types) {
  const double H = c.hidden_size, Q = double(c.n_heads) * c.head_dim, KV = double(c.n_kv_heads) * c.head_dim;
  const double I = c.intermediate_size, V = c.vocab_size;
  const double layer = H * (Q + 2 * KV) + Q * H + 3 * I * H;
  const double params = c.n_layers * layer + V * H * (c.tie_word_embeddings ? 1 : 2);
  // Staging while a Linear converts: the table as generated, or gate and up
  // and the two stacked (bf16).
  const double staging = std::max(V * H, 4 * I * H) * 2;
  size_t kv = 0;
  for (KVType t : kv_types)
    kv = std::max(kv, KVCache::bytes_needed(KVShape{c.n_layers, c.n_kv_heads, c.head_dim, ctx, t}));
  const double probe = 1073741824.0;  // the bandwidth probe's buffer
  const double need = params * weight_format_bytes(wt) + staging + double(kv) * B + probe;
  const size_t avail = available_memory();
  if (avail > 0 && need > double(avail))
    fail("bench --shape {}: weights {:.1f} GiB + KV caches {:.1f} GiB ({} x {} positions) need {:.1f} GiB, {:.1f} GiB "
         "available",
         shape, params * weight_format_bytes(wt) / 1073741824.0, double(kv) * B / 1073741824.0, B, ctx, need / 1073741824.0,
         avail / 1073741824.0);
}

// The ids every test feeds: the text's tokens (repeated when short) or
// pseudo-random ids; position p of every sequence gets ids[p].
std::vector<int> bench_tokens(const Model& m, const ModelBenchOptions& o, size_t n, std::string& source) {
  std::vector<int> ids;
  if (o.text.empty()) {
    std::mt19937_64 rng(o.seed);
    std::uniform_int_distribution<int> pick(0, m.config().vocab_size - 1);
    while (ids.size() < n) ids.push_back(pick(rng));
    source = fmt::format("pseudo-random token ids (seed {})", o.seed);
    return ids;
  }
  const std::vector<int> text = m.tokenizer().encode(o.text, true);
  const size_t skip = m.tokenizer().bos_id() >= 0 ? 1 : 0;  // repeats go without BOS
  if (text.size() <= skip) fail("model bench: {} holds no tokens", o.text_name);
  ids = text;
  while (ids.size() < n) ids.insert(ids.end(), text.begin() + skip, text.end());
  source = fmt::format("the tokens of {} ({}{})", o.text_name, text.size(), text.size() < n ? ", repeated" : "");
  ids.resize(n);
  return ids;
}

// The caches of the sequences a test runs on, each holding `depth` positions.
struct Sequences {
  std::vector<std::unique_ptr<KVCache>> caches;
  std::vector<Row> rows;
  std::vector<float> logits;
};

// Prompt positions [p0, p0 + n) of the first B sequences, in forward passes
// of at most batch rows (dense causal attention); logits for each last row.
void run_prompt(Model& m, Sequences& s, int B, const std::vector<int>& ids, int p0, int n, int batch,
                ForwardStats* st) {
  s.rows.clear();
  for (int b = 0; b < B; ++b)
    for (int i = 0; i < n; ++i) s.rows.push_back(Row{ids[p0 + i], p0 + i, s.caches[b].get(), nullptr, i + 1 == n});
  for (size_t r0 = 0; r0 < s.rows.size(); r0 += size_t(batch)) {
    const size_t len = std::min(size_t(batch), s.rows.size() - r0);
    m.forward({s.rows.data() + r0, len}, s.logits.data(), st);
  }
}

// n greedy decode steps of the first B sequences from position p0, one row
// per sequence per forward pass.
void run_decode(Model& m, Sequences& s, int B, int first, int p0, int n, const AttentionSettings& a,
                ForwardStats* st) {
  const size_t V = size_t(m.config().vocab_size);
  s.rows.assign(size_t(B), Row{});
  for (int b = 0; b < B; ++b) s.rows[b] = Row{first, p0, s.caches[b].get(), &a, true};
  for (int i = 0; i < n; ++i) {
    m.forward(s.rows, s.logits.data(), st);
    for (int b = 0; b < B; ++b) {
      const float* l = &s.logits[b * V];
      s.rows[b].token = int(std::max_element(l, l + V) - l);
      s.rows[b].pos += 1;
    }
  }
}

// Shared by the pp and tg rows of the current (kv type, depth, threads, B).
struct TestPoint {
  KVType kv;
  int depth, threads, B;
};

// One row of the table: a test at a point, with its samples.
struct Case {
  using Run = std::function<void(ForwardStats*, bool)>;  // run(st, warmup)
  Case(const TestPoint& at, std::string name, std::string setting, int n_tokens, bool is_decode, Run f)
      : p(at), test(std::move(name)), attention(std::move(setting)), tokens(n_tokens), decode(is_decode), run(std::move(f)) {}
  TestPoint p;
  std::string test, attention;
  int tokens;
  bool decode;
  Run run;
  std::vector<double> tps, ms;
  ForwardStats st;  // the last repetition's
};

struct Bench {
  const ModelBenchOptions& o;
  Model& m;
  const std::vector<int>& ids;
  double bw;
  BenchTable& table;
  const char* weights;  // the model's weight format, for its rows
  size_t peak_before_probes = 0;

  // The cases of one point, in table order.
  void add_cases(std::vector<Case>& cases, Sequences& s, const TestPoint& p,
                 const std::vector<AttentionSettings>& settings) {
    for (int n : o.prompt_lens) {
      if (n == 0) continue;
      cases.emplace_back(p, fmt::format("pp{}", n), "dense", n * p.B, false, [this, &s, p, n](ForwardStats* st, bool warmup) {
        run_prompt(m, s, p.B, ids, p.depth, warmup ? std::min(n, o.batch) : n, o.batch, st);
      });
    }
    for (size_t a = 0; a < settings.size(); ++a)
      for (int n : o.gen_lens) {
        if (n == 0) continue;
        const AttentionSettings* set = &settings[a];
        cases.emplace_back(p, fmt::format("tg{}", n), o.settings[a], n * p.B, true,
                           [this, &s, p, n, set](ForwardStats* st, bool warmup) {
                             run_decode(m, s, p.B, ids[p.depth], p.depth, warmup ? 1 : n, *set, st);
                           });
      }
  }

  // Times the cases of one depth (they share its caches): a warm-up round,
  // then o.reps rounds in which every case runs once, in alternating order,
  // so a busy spell or a drift in the host's speed falls on all of them
  // alike. The caches are rewound to the depth before each run (untimed).
  // Decode rows are bound by the host's read bandwidth, which drifts too:
  // after each timed round it is measured on each decode thread count.
  void run(std::vector<Case>& cases, std::vector<std::unique_ptr<KVCache>>& caches) {
    std::map<int, std::vector<double>> reads;  // per thread count
    for (const Case& c : cases)
      if (c.decode && o.bandwidth_gbs == 0) reads[c.p.threads];
    for (int rep = 0; rep <= o.reps; ++rep) {
      for (size_t j = 0; j < cases.size(); ++j) {
        Case& c = cases[rep % 2 == 1 ? j : cases.size() - 1 - j];
        omp_set_num_threads(c.p.threads);
        for (int b = 0; b < c.p.B; ++b) caches[b]->truncate(c.p.depth);
        ForwardStats st;
        const auto t0 = Clock::now();
        c.run(&st, rep == 0);
        const double sec = seconds_since(t0);
        if (rep == 0) continue;
        c.tps.push_back(c.tokens / sec);
        c.ms.push_back(1e3 * sec / c.tokens);
        c.st = st;
        if (o.progress)
          fmt::print(o.progress, "bench: rep {}/{} {} {} t={} B={} {} {}: {:.1f} t/s\n", rep, o.reps, name(c), c.attention,
                     c.p.threads, c.p.B, weights, kv_type_name(c.p.kv), c.tps.back());
      }
      if (rep == 0) continue;
      for (auto& [t, r] : reads) {  // the probe's 1 GiB is not the run's: the peak before it is kept
        peak_before_probes = std::max(peak_before_probes, peak_memory_bytes());
        r.push_back(measure_read_bandwidth_gbs(t));
        reset_peak_memory();
      }
    }
    for (const Case& c : cases) add_row(c, c.decode && !reads.empty() ? mean_sd(reads[c.p.threads]).mean : bw);
  }

  static std::string name(const Case& c) {
    return c.p.depth > 0 ? fmt::format("{} @ d{}", c.test, c.p.depth) : c.test;
  }

  void add_row(const Case& c, double read) {
    const TestPoint& p = c.p;
    const ForwardStats& st = c.st;
    const int tokens = c.tokens;
    const MeanSd t = mean_sd(c.tps);
    const double w = double(st.weight_bytes) / tokens;
    const BenchRow kv = c.decode ? BenchRow(double(st.attn.kv_bytes) / tokens) : BenchRow();
    const BenchRow dense_kv = c.decode ? BenchRow(double(st.attn.dense_bytes) / tokens) : BenchRow();
    const double gbs = ((c.decode ? kv.get<double>() : 0.0) + w) * t.mean / 1e9;
    const size_t llc = last_level_cache_bytes();
    table.rows.push_back({{"test", name(c)},
                          {"n_prompt", c.decode ? 0 : tokens / p.B},
                          {"n_gen", c.decode ? tokens / p.B : 0},
                          {"depth", p.depth},
                          {"attention", c.attention},
                          {"threads", p.threads},
                          {"parallel", p.B},
                          {"weights", weights},
                          {"kv_type", kv_type_name(p.kv)},
                          {"tps_mean", t.mean},
                          {"tps_sd", t.sd},
                          {"samples_tps", c.tps},
                          {"ms_per_token", mean_sd(c.ms).mean},
                          {"kv_bytes_per_token", kv},
                          {"dense_kv_bytes_per_token", dense_kv},
                          {"weight_bytes_per_token", w},
                          {"gbs", gbs},
                          {"pct_steps_fewer_threads",
                           st.decode_steps > 0 ? 100.0 * double(st.steps_fewer_threads) / double(st.decode_steps) : 0.0},
                          {"read_gbs", read},
                          {"phase_ms_per_token",  // the last repetition's, as --profile splits a step
                           {{"embed", 1e3 * st.t_embed / tokens},
                            {"qkv", 1e3 * st.t_qkv / tokens},
                            {"attention", 1e3 * st.t_attn / tokens},
                            {"out", 1e3 * st.t_out / tokens},
                            {"mlp", 1e3 * st.t_mlp / tokens},
                            {"logits", 1e3 * st.t_logits / tokens}}},
                          {"from", llc > 0 && (c.decode ? kv.get<double>() : 0.0) + w <= double(llc) ? "cache?" : "DRAM"},
                          {"pct_bandwidth", 100.0 * gbs / read}});
  }
};

std::vector<BenchColumn> columns() {
  return {bench_column("test", "test"),
          bench_column("attention", "attention"),
          bench_column("threads", "threads"),
          bench_column("B", "parallel"),
          bench_column("weights", "weights"),
          bench_column("KV", "kv_type"),
          bench_column_pm("t/s", "tps_mean", "tps_sd", 2),
          bench_column("ms/token", "ms_per_token", 3),
          bench_column("KV MB/token", "kv_bytes_per_token", 3, 1e-6),
          bench_column("weights MB/token", "weight_bytes_per_token", 2, 1e-6),
          bench_column("GB/s", "gbs", 1),
          bench_column("from", "from"),
          bench_column("read GB/s", "read_gbs", 1),
          bench_column("% of read", "pct_bandwidth", 1, 1.0, "%")};
}

}  // namespace

int run_model_bench(const ModelBenchOptions& o, std::FILE* out) {
  check(o);
  std::vector<AttentionSettings> settings;
  for (const std::string& s : o.settings) settings.push_back(parse_attention_setting(s));
  const int saved_threads = omp_get_max_threads();
  std::vector<int> threads;
  for (int t : o.threads) threads.push_back(t > 0 ? t : omp_get_num_procs());
  const int most_threads = max_of(threads);

  const int max_depth = max_of(o.depths), max_len = std::max(max_of(o.prompt_lens), max_of(o.gen_lens));
  const int max_B = max_of(o.parallel);
  std::optional<ModelConfig> shape_cfg;
  if (!o.shape.empty()) {
    shape_cfg = ModelConfig::from_json_text(shape_config_json(o.shape));
    for (WeightFormat f : o.weight_formats) check_shape_fits(o.shape, *shape_cfg, f, max_depth + max_len, max_B, o.kv_types);
  }

  BenchTable table;
  table.columns = columns();
  std::string bw_how = "given with --bandwidth";
  double bw = o.bandwidth_gbs;
  if (bw == 0) {
    bw = measure_read_bandwidth_gbs(most_threads);
    bw_how = fmt::format("measured at start: streaming read of 1 GiB, {} thread(s)", most_threads);
    if (!reset_peak_memory()) bw_how += "; peak memory below includes its buffer";
  }
  if (o.format == "md" || o.format == "markdown")  // people watch the run; scripts get it with the table
    fmt::print(out, "read bandwidth {:.1f} GB/s ({})\n", bw, bw_how);

  std::unique_ptr<Model> model;
  std::string source;
  std::vector<int> ids;
  size_t most_bytes = 0, peak_before_probes = 0;
  std::vector<std::string> format_names, weight_mb;
  for (WeightFormat wf : o.weight_formats) {
    model.reset();  // one model at a time
    malloc_trim(0);
    if (o.shape.empty()) {
      model = Model::load(o.model, LoadOptions{wf});
    } else {
      if (o.progress) fmt::print(o.progress, "bench: building {} with random {} weights\n", o.shape, weight_format_name(wf));
      model = Model::random(*shape_cfg, LoadOptions{wf}, o.seed);
    }
    format_names.push_back(weight_format_name(wf));
    weight_mb.push_back(fmt::format("{} {:.1f} MB", weight_format_name(wf), model->weight_bytes() / 1e6));
    model->set_thread_governor(!o.fixed_threads);
    const ModelConfig& c = model->config();
    if (ids.empty()) {
      ids = bench_tokens(*model, o, size_t(max_depth + max_len) + 1, source);
      if (max_depth + max_len > c.max_position_embeddings)
        fmt::print(stderr, "warning: depth {} + {} tokens exceeds the model's trained context {} (allowed, as in llama-bench)\n",
                   max_depth, max_len, c.max_position_embeddings);
    }

    Bench bench{o, *model, ids, bw, table, weight_format_name(wf)};
    for (KVType kv : o.kv_types)
      for (int d : o.depths) {
        malloc_trim(0);
        Sequences s;
        const KVShape shape = model->kv_shape(d + max_len, kv);
        for (int b = 0; b < max_B; ++b) s.caches.push_back(std::make_unique<KVCache>(shape));
        s.logits.resize(size_t(max_B) * c.vocab_size);
        most_bytes = std::max(most_bytes, model->memory_bytes() + size_t(max_B) * KVCache::bytes_needed(shape));
        if (d > 0) {
          if (o.progress) fmt::print(o.progress, "bench: filling {} cache(s) to depth {} ({})\n", max_B, d, kv_type_name(kv));
          omp_set_num_threads(most_threads);
          if (o.shape.empty()) {
            run_prompt(*model, s, max_B, ids, 0, d, o.batch, nullptr);
          } else {  // a prompt of d tokens through a 7B model would take longer than the run
            Rng rng{o.seed};
            for (auto& cache : s.caches) fill_cache(*cache, d, rng);
          }
        }
        std::vector<Case> cases;
        for (int t : threads)
          for (int B : o.parallel) bench.add_cases(cases, s, TestPoint{kv, d, t, B}, settings);
        bench.run(cases, s.caches);
      }
    peak_before_probes = std::max(peak_before_probes, bench.peak_before_probes);
  }
  omp_set_num_threads(saved_threads);

  const ModelConfig& c = model->config();
  const size_t peak = std::max(peak_memory_bytes(), peak_before_probes);
  const std::string name = o.shape.empty() ? std::filesystem::path(o.model).filename().string() : o.shape;
  table.meta = {{"model", name.empty() ? o.model : name},
                {"weight_type", fmt::format("{}", fmt::join(format_names, ","))},
                {"weight_bytes", model->weight_bytes()},
                {"bandwidth_gbs", bw},
                {"bandwidth_threads", most_threads},
                {"tokens", source},
                {"reps", o.reps},
                {"batch", o.batch},
                {"peak_memory_bytes", peak},
                {"weights_kv_bytes", most_bytes}};
  table.notes = {
      fmt::format("model bench: {}{} ({}, {} layers, hidden {}, heads {}/{} of size {}), weights {}",
                  o.shape.empty() ? o.model : o.shape, o.shape.empty() ? "" : " with random weights",
                  c.architecture, c.n_layers, c.hidden_size, c.n_heads, c.n_kv_heads, c.head_dim,
                  fmt::join(weight_mb, ", ")),
      fmt::format("tokens: {}; depth d: d positions {} first (untimed), the caches rewound to d before every repetition",
                  source, o.shape.empty() ? "prefilled (dense)" : "of random keys and values stored"),
      fmt::format("from: DRAM when a token's weight and KV bytes exceed the last-level cache ({:.0f} MiB as sysfs "
                  "reports it), else cache? (they may stay in it between tokens, beating the read)",
                  last_level_cache_bytes() / 1048576.0),
      "pp: prompt processing, always dense causal attention; tg: greedy decode, one token per sequence per step",
      fmt::format("B sequences run together and t/s counts all of them; t/s is the mean ± sd of {} rep(s) after a "
                  "warm-up, the tests of a depth taking turns in each rep (in alternating order); KV bytes are counted "
                  "for decode only",
                  o.reps),
      o.bandwidth_gbs > 0
          ? fmt::format("GB/s = (KV + weight bytes per token) x t/s; % of the given read bandwidth {:.1f} GB/s", bw)
          : "GB/s = (KV + weight bytes per token) x t/s; % of read: against a streaming read of 1 GiB measured after "
            "each rep on the row's threads, averaged over the reps (prompt rows: the read at start)",
      o.fixed_threads ? "threads: exactly t" : "threads: up to t; decode tries t - 1 now and then (after 4 steps, then 8, 16 .. 256 steps apart) and keeps it while faster (% of steps in the JSON's pct_steps_fewer_threads)"};
  table.footer = {fmt::format(
      "peak memory {:.1f} MiB (VmHWM); weights + largest KV caches {:.1f} MiB (K, V and transposed K, {} sequence(s))",
      peak / 1048576.0, most_bytes / 1048576.0, max_B)};
  add_run_facts(table);
  print_bench_table(out, table, o.format);
  return 0;
}

}  // namespace sparq
