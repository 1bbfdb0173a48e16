// sparq-run --batch FILE.jsonl: every line under every setting of --compare,
// results written line by line as they finish, a summary at the end.
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "eval_stats.h"
#include "sparq/engine/engine.h"
#include "sparq/eval/eval.h"

namespace sparq {
namespace {

using nlohmann::json;

struct Pending {
  size_t line;
  BatchItem item;
  std::vector<int> targets;        // score: the reference tokens
  std::vector<int> prompt;         // the prompt tokens, for the text after them
  std::vector<size_t> settings;    // indices into opt.settings, one per variant
  std::vector<double> logprob;     // score: per variant
};

// (id, setting) pairs already in the output file, for --resume. A last line
// without its newline was cut short by a kill mid-write: it is cut off the
// file, so the results appended after it stay whole lines.
std::set<std::pair<std::string, std::string>> done_in(const std::string& path) {
  std::set<std::pair<std::string, std::string>> done;
  std::ifstream f(path, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string text = ss.str();
  const size_t end = text.rfind('\n') + 1;  // 0 when there is no newline
  std::error_code ec;
  if (end < text.size()) std::filesystem::resize_file(path, end, ec);
  if (ec) fail("cannot cut the partial last line of {} ({})", path, ec.message());
  std::istringstream lines(text.substr(0, end));
  for (std::string line; std::getline(lines, line);) {
    const json j = json::parse(line, nullptr, false);
    if (!j.is_object() || j.contains("error")) continue;
    const auto id = j.find("id"), setting = j.find("setting");
    if (id != j.end() && setting != j.end() && id->is_string() && setting->is_string())
      done.emplace(id->get<std::string>(), setting->get<std::string>());
  }
  return done;
}

struct SettingSummary {
  std::map<std::string, MeanStat> metric;  // per task
  uint64_t kv = 0, dense = 0, tokens = 0;
};

}  // namespace

int run_batch_file(Model& model, const std::string& path, const EvalOptions& opt) {
  std::ifstream in(path);
  if (!in) fail("cannot open batch file {}", path);
  const std::string base = std::filesystem::path(path).parent_path().string();
  const Tokenizer& tok = model.tokenizer();
  const auto already = opt.resume && !opt.out_file.empty() ? done_in(opt.out_file)
                                                           : std::set<std::pair<std::string, std::string>>{};
  std::ofstream out_file;
  if (!opt.out_file.empty()) {
    out_file.open(opt.out_file, opt.resume ? std::ios::app : std::ios::trunc);
    if (!out_file) fail("cannot write results file {}", opt.out_file);
  }
  std::ostream& out = opt.out_file.empty() ? std::cout : out_file;
  int failures = 0;
  auto report = [&](size_t line, const std::string& id, const std::string& msg) {
    fmt::print(stderr, "{}:{}: {}\n", path, line, msg);
    json j = {{"line", line}, {"error", msg}};
    if (!id.empty()) j["id"] = id;
    out << j.dump() << '\n' << std::flush;
    ++failures;
  };

  std::vector<Pending> pending;
  std::vector<Job> jobs;
  std::string text;
  for (size_t line_no = 1; std::getline(in, text); ++line_no) {
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    Pending p{line_no, {}, {}, {}, {}, {}};
    try {
      p.item = parse_batch_line(text, base);
      for (size_t s = 0; s < opt.settings.size(); ++s)
        if (!already.count({p.item.id, opt.setting_names[s]})) p.settings.push_back(s);
      if (p.settings.empty()) continue;
      Job j;
      std::vector<int> prompt = tok.encode(p.item.prompt, true);
      if (p.item.task == "score") {
        // The reference is scored by decode steps: the last prompt token and
        // the reference tokens are fed one by one.
        p.targets = tok.encode(p.item.reference, false);
        if (p.targets.empty()) fail("the reference encodes to no tokens");
        j.forced.push_back(prompt.back());
        prompt.pop_back();
        j.forced.insert(j.forced.end(), p.targets.begin(), p.targets.end() - 1);
      } else {
        j.n_sample = p.item.n_predict;
      }
      p.prompt = prompt;
      j.prefill = std::move(prompt);
      const size_t need = j.prefill.size() + j.forced.size() + (j.n_sample > 0 ? 1 : 0);
      if (need > size_t(opt.ctx))
        fail("the prompt is {} tokens, more than the context size {} allows (raise -c)", need, opt.ctx);
      for (size_t s : p.settings) j.variants.push_back(&opt.settings[s]);
      j.sampling = opt.sampling;
      p.logprob.assign(p.settings.size(), 0.0);
      jobs.push_back(std::move(j));
      pending.push_back(std::move(p));
    } catch (const Error& e) {
      report(line_no, p.item.id, e.what());
    }
  }
  if (!already.empty()) fmt::print(stderr, "sparq-run: --resume: {} results already in {}\n", already.size(), opt.out_file);

  size_t max_variants = 1;
  for (const Job& j : jobs) max_variants = std::max(max_variants, j.variants.size());
  const KVShape shape = model.kv_shape(opt.ctx, opt.kv_type);
  const int parallel = opt.parallel > 0 ? opt.parallel
                                        : parallel_that_fits(shape, int(std::max<size_t>(max_variants, 16)));
  Engine engine(model, std::max<int>(parallel, int(max_variants)), opt.ctx, opt.kv_type);
  if (!opt.quiet)
    fmt::print(stderr, "sparq-run: {} lines x {} settings, {} sequences in flight, ctx {}\n", jobs.size(),
               opt.settings.size(), engine.parallel(), opt.ctx);

  std::vector<SettingSummary> summary(opt.settings.size());
  Progress progress(jobs.size(), opt.quiet);
  size_t done = 0, tokens = 0;
  EngineHooks hooks;
  const size_t V = size_t(model.config().vocab_size);
  hooks.on_forced = [&](size_t job, int index, std::span<const float* const> logits) {
    Pending& p = pending[job];
    for (size_t v = 0; v < logits.size(); ++v) p.logprob[v] += log_prob(logits[v], V, p.targets[size_t(index)]);
  };
  hooks.on_done = [&](size_t job, JobResult&& r) {
    Pending& p = pending[job];
    for (size_t v = 0; v < r.variants.size(); ++v) {
      const VariantResult& vr = r.variants[v];
      const size_t s = p.settings[v];
      const std::string gen = tok.decode_continuation(p.prompt, vr.sampled);
      json j = {{"id", p.item.id},         {"setting", opt.setting_names[s]}, {"task", p.item.task},
                {"line", p.line},          {"decode_steps", vr.decode_steps}, {"kv_bytes", vr.kv_bytes},
                {"dense_kv_bytes", vr.dense_kv_bytes},
                {"kv_ratio", vr.dense_kv_bytes ? double(vr.kv_bytes) / double(vr.dense_kv_bytes) : 1.0},
                {"seconds", r.seconds}};
      double metric = 0;
      if (p.item.task == "score") {
        j["logprob"] = p.logprob[v];
        j["n_tokens"] = p.targets.size();
        j["perplexity"] = std::exp(-p.logprob[v] / double(p.targets.size()));
        metric = p.logprob[v] / double(p.targets.size());
      } else {
        j["text"] = gen;
        j["n_generated"] = vr.sampled.size();
        j["stop"] = vr.stop_reason;
        if (p.item.task == "repeat") metric = double(repeat_chars_matched(gen, p.item.reference));
        if (p.item.task == "match") metric = answer_matches(gen, p.item.reference) ? 1.0 : 0.0;
        if (p.item.task == "repeat") j["chars_matched"] = metric;
        if (p.item.task == "match") {
          j["answer"] = match_answer(gen);
          j["correct"] = metric == 1.0;
        }
        if (p.item.task == "generate") metric = double(vr.sampled.size());
      }
      out << j.dump() << '\n' << std::flush;
      SettingSummary& ss = summary[s];
      ss.metric[p.item.task].add(metric);
      ss.kv += vr.kv_bytes;
      ss.dense += vr.dense_kv_bytes;
      ss.tokens += uint64_t(vr.decode_steps);
      tokens += uint64_t(vr.decode_steps);
    }
    progress.update(++done, tokens);
  };
  engine.run(jobs, hooks, opt.batch);
  progress.finish(done, tokens);

  // Per setting: the metric of each task with its standard error, bytes and
  // speed. Decode time not spent in attention is shared by rows, so each
  // setting's tokens/s charges it that share plus its own attention time.
  const ForwardStats& st = engine.stats();
  double attn_total = 0;
  for (const auto& [ptr, c] : st.by_setting) attn_total += c.seconds;
  const double shared = std::max(0.0, st.seconds() - attn_total);
  static const std::map<std::string, std::string> kMetric = {
      {"generate", "tokens"}, {"score", "logprob/token"}, {"repeat", "chars matched"}, {"match", "accuracy"}};
  json js = json::array();
  fmt::print(stderr, "\n| setting | task | metric | mean | std err | n | KV ratio | est. tokens/s |\n|---|---|---|---:|---:|---:|---:|---:|\n");
  for (size_t s = 0; s < opt.settings.size(); ++s) {
    const SettingSummary& ss = summary[s];
    const auto it = st.by_setting.find(&opt.settings[s]);
    const double own = (it == st.by_setting.end() ? 0.0 : it->second.seconds) +
                       (tokens ? shared * double(ss.tokens) / double(tokens) : 0.0);
    const double tps = own > 0 ? double(ss.tokens) / own : 0.0;
    const double ratio = ss.dense ? double(ss.kv) / double(ss.dense) : 1.0;
    json tasks = json::object();
    for (const auto& [task, m] : ss.metric) {
      fmt::print(stderr, "| {} | {} | {} | {:.4f} | {:.4f} | {} | {:.4f} | {:.1f} |\n", opt.setting_names[s], task,
                 kMetric.at(task), m.mean(), m.se(), m.n, ratio, tps);
      tasks[task] = {{"metric", kMetric.at(task)}, {"mean", m.mean()}, {"stderr", m.se()}, {"n", m.n}};
    }
    js.push_back({{"setting", opt.setting_names[s]}, {"tasks", tasks}, {"kv_ratio", ratio},
                  {"kv_bytes", ss.kv}, {"dense_kv_bytes", ss.dense}, {"decode_tokens", ss.tokens},
                  {"est_tokens_per_s", tps}});
  }
  if (failures) fmt::print(stderr, "sparq-run: {} line(s) failed, see above\n", failures);
  if (!opt.summary_json.empty()) {
    std::ofstream f(opt.summary_json);
    f << json{{"batch_file", path}, {"failed_lines", failures}, {"settings", js}}.dump(1) << '\n';
    if (!f) fail("cannot write summary file {}", opt.summary_json);
  }
  return failures;
}

}  // namespace sparq
