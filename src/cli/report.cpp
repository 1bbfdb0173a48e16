#include "sparq/cli/report.h"

#include <fstream>

#include <nlohmann/json.hpp>

#include "sparq/util/process_memory.h"

namespace sparq {
namespace {

struct Totals {
  double ms = 0, attn_ms = 0, mean_S = 0;
  uint64_t kv = 0, dense = 0, weights = 0;
  size_t fallbacks = 0;
};

Totals totals(const GenerateResult& r) {
  Totals t;
  for (const StepRecord& s : r.steps) {
    t.ms += s.ms;
    t.attn_ms += s.attn_ms;
    t.mean_S += s.S;
    t.kv += s.kv_bytes;
    t.dense += s.dense_kv_bytes;
    t.weights += s.weight_bytes;
    t.fallbacks += s.dense_fallback;
  }
  if (!r.steps.empty()) t.mean_S /= double(r.steps.size());
  return t;
}

double gbs(double bytes, double ms) { return ms > 0 ? bytes / (ms * 1e6) : 0.0; }

}  // namespace

void print_timings(std::FILE* f, const RunInfo& info, const GenerateResult& r) {
  const Totals t = totals(r);
  const double pms = r.t_prompt * 1e3;
  const size_t n = r.steps.size();
  fmt::print(f, "\nsparq-run: load time        = {:10.2f} ms\n", info.load_ms);
  fmt::print(f, "sparq-run: prompt eval time = {:10.2f} ms / {:5} tokens ({:8.2f} ms per token, {:9.2f} tokens per second)\n",
             pms, r.n_prompt, pms / r.n_prompt, r.n_prompt / r.t_prompt);
  if (n > 0)
    fmt::print(f, "sparq-run:        eval time = {:10.2f} ms / {:5} runs   ({:8.2f} ms per token, {:9.2f} tokens per second)\n",
               t.ms, n, t.ms / double(n), 1e3 * double(n) / t.ms);
  fmt::print(f, "sparq-run:       total time = {:10.2f} ms / {:5} tokens, stop: {}\n",
             info.load_ms + pms + r.t_decode * 1e3, r.n_prompt + r.tokens.size(), r.stop_reason);
}

void print_kv_table(std::FILE* f, const GenerateResult& r) {
  if (r.steps.empty()) return;
  const Totals t = totals(r);
  const double n = double(r.steps.size());
  fmt::print(f, "\n| decode steps | mean S | KV MB/step | dense KV MB/step | KV ratio | weight MB/step | attn GB/s | step GB/s | dense fallbacks |\n");
  fmt::print(f, "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n");
  fmt::print(f, "| {} | {:.0f} | {:.3f} | {:.3f} | {:.4f} | {:.2f} | {:.1f} | {:.1f} | {} |\n", r.steps.size(),
             t.mean_S, t.kv / n / 1e6, t.dense / n / 1e6, t.dense ? double(t.kv) / double(t.dense) : 1.0,
             t.weights / n / 1e6, gbs(double(t.kv), t.attn_ms), gbs(double(t.kv + t.weights), t.ms),
             t.fallbacks);
}

void print_step_line(std::FILE* f, int step, const StepRecord& s) {
  fmt::print(f, "[step {:5}] S={:6} kv={:9.1f} KB dense={:9.1f} KB ratio={:.4f}{} {:.3f} ms (attn {:.3f} ms)\n",
             step, s.S, s.kv_bytes / 1e3, s.dense_kv_bytes / 1e3,
             s.dense_kv_bytes ? double(s.kv_bytes) / double(s.dense_kv_bytes) : 1.0,
             s.dense_fallback ? " (dense)" : "", s.ms, s.attn_ms);
}

void print_memory(std::FILE* f, size_t weight_bytes, size_t kv_bytes) {
  const size_t peak = peak_memory_bytes();
  const double sum = double(weight_bytes + kv_bytes);
  fmt::print(f, "sparq-run: peak memory {:.1f} MiB (VmHWM); weights {:.1f} MiB + KV cache {:.1f} MiB = {:.1f} MiB, "
                "peak {:+.1f}% of that\n",
             peak / 1048576.0, weight_bytes / 1048576.0, kv_bytes / 1048576.0, sum / 1048576.0,
             sum > 0 ? 100.0 * (double(peak) - sum) / sum : 0.0);
}

void write_stats_json(const std::string& path, const RunInfo& info, const GenerateResult& r) {
  using nlohmann::json;
  const Totals t = totals(r);
  json steps = json::array();
  for (const StepRecord& s : r.steps)
    steps.push_back({{"S", s.S}, {"token", s.token}, {"ms", s.ms}, {"attn_ms", s.attn_ms},
                     {"kv_bytes", s.kv_bytes}, {"dense_kv_bytes", s.dense_kv_bytes},
                     {"weight_bytes", s.weight_bytes}, {"dense_fallback", s.dense_fallback}});
  json layers = json::array();
  for (const AttnCounters& a : r.decode_stats.attn_layers)
    layers.push_back({{"kv_bytes", a.kv_bytes}, {"dense_kv_bytes", a.dense_bytes},
                      {"seconds", a.seconds}, {"dense_fallbacks", a.dense_fallbacks}});
  const json out = {
      {"attention", info.attention},
      {"kv_type", info.kv_type},
      {"threads", info.threads},
      {"load_ms", info.load_ms},
      {"prompt_tokens", r.n_prompt},
      {"prompt_ms", r.t_prompt * 1e3},
      {"generated_tokens", r.tokens.size()},
      {"stop", r.stop_reason},
      {"summary",
       {{"decode_steps", r.steps.size()}, {"mean_S", t.mean_S}, {"kv_bytes", t.kv},
        {"dense_kv_bytes", t.dense}, {"kv_ratio", t.dense ? double(t.kv) / double(t.dense) : 1.0},
        {"weight_bytes", t.weights}, {"decode_ms", t.ms}, {"attention_ms", t.attn_ms},
        {"attention_gbs", gbs(double(t.kv), t.attn_ms)},
        {"step_gbs", gbs(double(t.kv + t.weights), t.ms)}}},
      {"per_layer", layers},
      {"steps", steps}};
  std::ofstream f(path);
  if (!f) fail("cannot write --stats-json file {}", path);
  f << out.dump(1) << '\n';
  if (!f) fail("error writing --stats-json file {}", path);
}

}  // namespace sparq
