#include "sparq/profile.h"

#include "sparq/bench_table.h"

namespace sparq {

std::vector<Phase> forward_phases(const ForwardStats& s) {
  const AttnCounters& a = s.attn;
  const double sparq = a.t_step1 + a.t_topk + a.t_step3 + a.t_mix;
  return {{"embedding", 0, s.t_embed, s.b_embed},
          {"qkv projection, rope, KV store", 0, s.t_qkv, s.b_qkv},
          {"attention", 0, s.t_attn, a.kv_bytes},
          {"sparq step 1 (with component selection)", 1, a.t_step1, 0},
          {"sparq top-k", 1, a.t_topk, 0},
          {"sparq step 3", 1, a.t_step3, 0},
          {"sparq mix", 1, a.t_mix, 0},
          {"dense and prefill attention, setup", 1, s.t_attn - sparq, 0},
          {"output projection", 0, s.t_out, s.b_out},
          {"MLP", 0, s.t_mlp, s.b_mlp},
          {"logits", 0, s.t_logits, s.b_logits}};
}

void print_profile(std::FILE* f, const GenerateResult& r, double tokenizer_s, double total_s) {
  std::vector<Phase> phases = forward_phases(r.prompt_stats);
  const std::vector<Phase> decode = forward_phases(r.decode_stats);
  for (size_t i = 0; i < phases.size(); ++i) {
    phases[i].seconds += decode[i].seconds;
    phases[i].bytes += decode[i].bytes;
  }
  // Without SparQ steps the attention has no parts worth a row.
  const bool sparq_ran = r.prompt_stats.attn.t_step1 + r.decode_stats.attn.t_step1 > 0;
  phases.push_back({"sampling", 0, r.t_sample, 0});
  phases.push_back({"tokenizer", 0, tokenizer_s, 0});
  double counted = 0;
  for (const Phase& p : phases) counted += p.level == 0 ? p.seconds : 0.0;
  phases.push_back({"other (loop, output, bookkeeping)", 0, total_s - counted, 0});

  BenchTable t;
  t.notes = {"profile: prompt and decode; attention bytes are the KV bytes decode read (prefill's are not counted);",
             "SparQ parts are per-thread times averaged over the threads, inside the attention time"};
  t.columns = {bench_column("phase", "phase"), bench_column("time ms", "ms", 3), bench_column("share", "share", 1, 1.0, "%"),
               bench_column("MB", "mb", 3), bench_column("GB/s", "gbs", 1)};
  auto row = [](const std::string& name, double s, uint64_t bytes, double total) {
    return BenchRow{{"phase", name},
                    {"ms", s * 1e3},
                    {"share", total > 0 ? 100 * s / total : 0.0},
                    {"mb", bytes ? BenchRow(bytes / 1e6) : BenchRow()},
                    {"gbs", bytes && s > 0 ? BenchRow(bytes / s / 1e9) : BenchRow()}};
  };
  for (const Phase& p : phases)
    if (p.level == 0 || sparq_ran) t.rows.push_back(row(p.level ? "· " + p.name : p.name, p.seconds, p.bytes, total_s));
  t.rows.push_back(row("total", total_s, 0, total_s));
  fmt::print(f, "\n");
  print_bench_table(f, t, "markdown");
}

}  // namespace sparq
