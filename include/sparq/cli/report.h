// What a run prints on stderr at the end (llama.cpp-style timings and the
// KV-bytes table) and what --stats-json writes.
#pragma once
#include <cstdio>
#include <string>

#include "sparq/engine/generate.h"

namespace sparq {

struct RunInfo {
  double load_ms = 0;
  int threads = 1;
  std::string attention;  // AttentionSettings::describe()
  std::string kv_type;
};

void print_timings(std::FILE* f, const RunInfo& info, const GenerateResult& r);
void print_kv_table(std::FILE* f, const GenerateResult& r);
void print_step_line(std::FILE* f, int step, const StepRecord& s);
// Peak resident memory (VmHWM) against weights + KV cache (with transposed K).
void print_memory(std::FILE* f, size_t weight_bytes, size_t kv_bytes);
void write_stats_json(const std::string& path, const RunInfo& info, const GenerateResult& r);

}  // namespace sparq
