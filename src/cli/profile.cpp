#include "sparq/cli/profile.h"

#include "sparq/bench/bench_table.h"
#include "sparq/engine/trace.h"
#include "sparq/util/cpu.h"

namespace sparq {

void print_profile(std::FILE* f, const GenerateResult& r, double tokenizer_s, double total_s) {
  // Bytes and GB/s are the decode steps': they are memory-bound, while prompt
  // passes are compute-bound and their attention bytes are not counted.
  struct Line {
    Phase all;
    double decode_s;
    uint64_t decode_bytes;
  };
  const std::vector<Phase> prompt = forward_phases(r.prompt_stats), decode = forward_phases(r.decode_stats);
  std::vector<Line> lines;
  for (size_t i = 0; i < prompt.size(); ++i) {
    Phase all = prompt[i];
    all.seconds += decode[i].seconds;
    lines.push_back({all, decode[i].seconds, decode[i].bytes});
  }
  lines.push_back({{"sampling", 0, r.t_sample, 0}, r.t_sample, 0});
  lines.push_back({{"tokenizer", 0, tokenizer_s, 0}, 0, 0});
  double counted = 0;
  for (const Line& l : lines) counted += l.all.level == 0 ? l.all.seconds : 0.0;
  lines.push_back({{"other (loop, output, bookkeeping)", 0, total_s - counted, 0}, 0, 0});
  lines.push_back({{"total", 0, total_s, 0}, r.t_decode, 0});
  // Without SparQ steps the attention has no parts worth a row.
  const bool sparq_ran = r.prompt_stats.attn.t_step1 + r.decode_stats.attn.t_step1 > 0;

  BenchTable t;
  t.notes = {fmt::format("profile ({} kernels): time of prompt and decode; decode MB and GB/s: what the decode steps "
                         "read (weights, KV cache)",
                         cpu_tier_name(cpu_tier())),
             "SparQ parts (·) are per-thread times averaged over the threads, inside the attention time"};
  t.columns = {bench_column("phase", "phase"),         bench_column("time ms", "ms", 3),
               bench_column("share", "share", 1, 1.0, "%"), bench_column("decode ms", "decode_ms", 3),
               bench_column("decode MB", "decode_mb", 3), bench_column("decode GB/s", "decode_gbs", 1)};
  for (const Line& l : lines) {
    if (l.all.level == 1 && !sparq_ran) continue;
    const bool timed = l.all.name != "tokenizer" && l.all.name.rfind("other", 0) != 0;
    const bool rate = l.decode_bytes > 0 && l.decode_s > 0;
    t.rows.push_back({{"phase", l.all.level ? "· " + l.all.name : l.all.name},
                      {"ms", l.all.seconds * 1e3},
                      {"share", total_s > 0 ? 100 * l.all.seconds / total_s : 0.0},
                      {"decode_ms", timed ? BenchRow(l.decode_s * 1e3) : BenchRow()},
                      {"decode_mb", l.decode_bytes ? BenchRow(l.decode_bytes / 1e6) : BenchRow()},
                      {"decode_gbs", rate ? BenchRow(l.decode_bytes / l.decode_s / 1e9) : BenchRow()}});
  }
  fmt::print(f, "\n");
  print_bench_table(f, t, "markdown");
}

}  // namespace sparq
