// Evaluation runs: a JSONL batch file (generate / score / repeat / match tasks)
// and llama-perplexity-style perplexity over a text file, each under every
// attention setting of --compare, side by side, with continuous batching.
#pragma once
#include <string>
#include <vector>

#include "sparq/kernels/kv_cache.h"
#include "sparq/model/model.h"
#include "sparq/engine/sampler.h"

namespace sparq {

struct EvalOptions {
  std::vector<AttentionSettings> settings;  // --compare (or the one --attention)
  std::vector<std::string> setting_names;
  int parallel = 0;  // sequences in flight (0: as many as fit)
  int ctx = 0;
  int batch = 512;
  KVType kv_type = KVType::BF16;
  SamplerOptions sampling;
  std::string out_file, summary_json;
  bool quiet = false;
  bool resume = false;
};

// One parsed line of a batch file.
struct BatchItem {
  std::string id, task, prompt, reference;
  int n_predict = 128;
};
// Parses one JSONL line; throws Error naming the problem. prompt_file paths
// are relative to base_dir.
BatchItem parse_batch_line(const std::string& line, const std::string& base_dir);

// Metrics of the tasks (pure functions, tested on their own).
size_t repeat_chars_matched(const std::string& generated, const std::string& reference);
bool answer_matches(const std::string& generated, const std::string& reference);
std::string match_answer(const std::string& generated);  // the answer match compares

// Returns the number of lines that failed (malformed or not runnable).
int run_batch_file(Model& model, const std::string& path, const EvalOptions& opt);

// Non-overlapping windows of ctx tokens, the second half of each scored by
// decode steps; prints perplexity per setting and KL / top-1 agreement
// against dense (dense is added as the reference when not in the list); on a
// q8_0 cache also dense on a bf16 cache, and every setting's KL against it.
void run_perplexity(Model& model, const std::string& text_path, const EvalOptions& opt);

}  // namespace sparq
