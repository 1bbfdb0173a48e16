// sparq-run --perplexity FILE.txt: llama-perplexity's protocol (windows of the
// context size, BOS first, the second half scored), except that the scored
// half is fed by decode steps so the decode attention under test produces it.
#include <array>
#include <fstream>
#include <set>
#include <sstream>

#include <nlohmann/json.hpp>

#include "eval_stats.h"
#include "sparq/engine/engine.h"
#include "sparq/eval/eval.h"

namespace sparq {
namespace {

struct SettingScore {
  MeanStat nll, kl, top1;
  MeanStat kl_bf16;  // against dense on a bf16 cache, when the run's cache is q8_0
  MeanStat kl_copy, kl_other;  // KL on tokens that continue a repeat (copyable) and on the rest
  uint64_t kv = 0, dense = 0;
};

// Tokens a model can copy: those whose trigram ending at them occurred
// earlier in the same window (an induction head's case). Per position of
// ids[begin, begin + n).
std::vector<char> copyable(const std::vector<int>& ids, size_t begin, size_t n) {
  std::set<std::array<int, 3>> seen;
  std::vector<char> out(n, 0);
  for (size_t i = 2; i < n; ++i) {
    const std::array<int, 3> g{ids[begin + i - 2], ids[begin + i - 1], ids[begin + i]};
    out[i] = !seen.insert(g).second;
  }
  return out;
}

// KL(p || q) of the softmaxes of two logit rows, in double.
double kl_divergence(const float* p_logits, const float* q_logits, size_t V, std::vector<double>& lp,
                     std::vector<double>& lq) {
  auto log_softmax = [V](const float* x, std::vector<double>& out) {
    out.resize(V);
    double mx = x[0];
    for (size_t i = 1; i < V; ++i) mx = std::max(mx, double(x[i]));
    double sum = 0;
    for (size_t i = 0; i < V; ++i) sum += std::exp(double(x[i]) - mx);
    const double lse = mx + std::log(sum);
    for (size_t i = 0; i < V; ++i) out[i] = double(x[i]) - lse;
  };
  log_softmax(p_logits, lp);
  log_softmax(q_logits, lq);
  double kl = 0;
  for (size_t i = 0; i < V; ++i) kl += std::exp(lp[i]) * (lp[i] - lq[i]);
  return std::max(kl, 0.0);
}

}  // namespace

void run_perplexity(Model& model, const std::string& text_path, const EvalOptions& opt) {
  std::ifstream in(text_path, std::ios::binary);
  if (!in) fail("cannot open text file {}", text_path);
  std::stringstream ss;
  ss << in.rdbuf();
  const ModelConfig& c = model.config();
  std::vector<int> ids = model.tokenizer().encode(ss.str(), false);
  const int n_ctx = opt.ctx, half = n_ctx / 2;
  if (n_ctx < 4) fail("perplexity needs a context size of at least 4, got {}", n_ctx);
  const size_t n_windows = ids.size() / size_t(n_ctx);
  if (n_windows == 0)
    fail("{} has {} tokens, fewer than one window of the context size {}", text_path, ids.size(), n_ctx);

  // Dense is the reference the others are compared with: variant 0. On a
  // q8_0 cache, dense on the default bf16 cache is a second one, run last.
  std::vector<const AttentionSettings*> variants;
  std::vector<std::string> names;
  static const AttentionSettings kDense{};
  variants.push_back(&kDense);
  names.push_back("dense");
  for (size_t s = 0; s < opt.settings.size(); ++s)
    if (opt.settings[s].sparq) {
      variants.push_back(&opt.settings[s]);
      names.push_back(opt.setting_names[s]);
    }
  const bool bf16_ref = opt.kv_type == KVType::Q8_0;
  std::vector<KVType> kv_types(variants.size(), opt.kv_type);
  if (bf16_ref) {
    variants.push_back(&kDense);
    names.push_back("dense, bf16 KV");
    kv_types.push_back(KVType::BF16);
  }
  const size_t nv = variants.size(), n_same = bf16_ref ? nv - 1 : nv;

  std::vector<Job> jobs(n_windows);
  for (size_t w = 0; w < n_windows; ++w) {
    std::vector<int> win(ids.begin() + long(w * n_ctx), ids.begin() + long((w + 1) * n_ctx));
    if (c.bos_id >= 0) win[0] = c.bos_id;
    jobs[w].prefill.assign(win.begin(), win.begin() + half - 1);
    jobs[w].forced.assign(win.begin() + half - 1, win.end() - 1);
    jobs[w].variants = variants;
    jobs[w].kv_types = kv_types;
  }
  std::vector<KVShape> one_job;
  for (const KVType t : kv_types) one_job.push_back(model.kv_shape(n_ctx, t));
  const int in_flight = opt.parallel > 0 ? std::max<int>(1, opt.parallel / int(nv))
                                         : parallel_that_fits(one_job, std::max<int>(1, 16 / int(nv)));
  std::vector<CachePool> pools{{opt.kv_type, in_flight * int(n_same)}};
  if (bf16_ref) pools.push_back({KVType::BF16, in_flight});
  Engine engine(model, n_ctx, pools);
  if (!opt.quiet)
    fmt::print(stderr, "sparq-run: perplexity over {} windows of {} tokens ({} scored each by decode steps), {} settings, {} sequences in flight\n",
               n_windows, n_ctx, n_ctx - half, nv, engine.parallel());

  std::vector<SettingScore> score(variants.size());
  std::vector<std::vector<char>> copy(n_windows);
  for (size_t w = 0; w < n_windows; ++w) copy[w] = copyable(ids, w * size_t(n_ctx), size_t(n_ctx));
  std::vector<double> lp, lq;
  const size_t V = size_t(c.vocab_size);
  Progress progress(n_windows, opt.quiet);
  size_t done = 0, tokens = 0;
  EngineHooks hooks;
  hooks.on_forced = [&](size_t job, int index, std::span<const float* const> logits) {
    const int target = ids[job * size_t(n_ctx) + size_t(half + index)];
    const int dense_top = argmax({logits[0], V});
    for (size_t v = 0; v < logits.size(); ++v) {
      score[v].nll.add(-log_prob(logits[v], V, target));
      if (bf16_ref && v < n_same) score[v].kl_bf16.add(kl_divergence(logits[nv - 1], logits[v], V, lp, lq));
      if (v == 0) continue;
      const double kl = kl_divergence(logits[0], logits[v], V, lp, lq);
      score[v].kl.add(kl);
      (copy[job][size_t(half + index)] ? score[v].kl_copy : score[v].kl_other).add(kl);
      score[v].top1.add(argmax({logits[v], V}) == dense_top ? 1.0 : 0.0);
    }
  };
  hooks.on_done = [&](size_t, JobResult&& r) {
    for (size_t v = 0; v < r.variants.size(); ++v) {
      score[v].kv += r.variants[v].kv_bytes;
      score[v].dense += r.variants[v].dense_kv_bytes;
      tokens += size_t(r.variants[v].decode_steps);
    }
    progress.update(++done, tokens);
  };
  engine.run(jobs, hooks, opt.batch);
  progress.finish(done, tokens);

  nlohmann::json js = nlohmann::json::array();
  const std::string vs_bf16_head = bf16_ref ? " KL vs bf16-KV dense |" : "", vs_bf16_rule = bf16_ref ? "---:|" : "";
  fmt::print(stderr, "\n| setting | KV | perplexity | ± | KL vs dense |{} top-1 agreement | KV ratio | scored tokens |\n"
             "|---|---|---:|---:|---:|{}---:|---:|---:|\n", vs_bf16_head, vs_bf16_rule);
  for (size_t v = 0; v < nv; ++v) {
    const SettingScore& s = score[v];
    const double ppl = std::exp(s.nll.mean());
    const double ppl_err = ppl * s.nll.se();  // first-order error of exp(mean NLL)
    const double ratio = s.dense ? double(s.kv) / double(s.dense) : 1.0;
    const double top1 = v == 0 ? 1.0 : s.top1.mean();
    const std::string vs_bf16 = !bf16_ref ? "" : v < n_same ? fmt::format(" {:.6f} |", s.kl_bf16.mean()) : " - |";
    fmt::print(stderr, "| {} | {} | {:.4f} | {:.4f} | {:.6f} |{} {:.4f} | {:.4f} | {} |\n", names[v],
               kv_type_name(kv_types[v]), ppl, ppl_err, s.kl.mean(), vs_bf16, top1, ratio, s.nll.n);
    js.push_back({{"setting", names[v]}, {"kv_type", kv_type_name(kv_types[v])}, {"perplexity", ppl},
                  {"perplexity_stderr", ppl_err}, {"kl_vs_dense", s.kl.mean()}, {"kl_stderr", s.kl.se()},
                  {"top1_agreement", top1}, {"kv_ratio", ratio}, {"scored_tokens", s.nll.n}});
    if (bf16_ref && v < n_same) {
      js[v]["kl_vs_bf16_dense"] = s.kl_bf16.mean();
      js[v]["kl_vs_bf16_dense_stderr"] = s.kl_bf16.se();
    }
  }
  // Where the KL comes from: tokens that continue a repeated trigram, and the rest.
  fmt::print(stderr, "\n| setting | KL on copyable tokens | KL on the rest | copyable share of KL | copyable tokens |\n|---|---:|---:|---:|---:|\n");
  for (size_t v = 1; v < nv; ++v) {
    const SettingScore& s = score[v];
    const double total = s.kl_copy.sum + s.kl_other.sum;
    fmt::print(stderr, "| {} | {:.6f} | {:.6f} | {:.3f} | {} |\n", names[v], s.kl_copy.mean(), s.kl_other.mean(),
               total > 0 ? s.kl_copy.sum / total : 0.0, s.kl_copy.n);
    js[v]["kl_copyable"] = s.kl_copy.mean();
    js[v]["kl_rest"] = s.kl_other.mean();
    js[v]["copyable_tokens"] = s.kl_copy.n;
  }
  if (!opt.summary_json.empty()) {
    std::ofstream f(opt.summary_json);
    f << nlohmann::json{{"text_file", text_path}, {"ctx", n_ctx}, {"windows", n_windows}, {"settings", js}}.dump(1)
      << '\n';
    if (!f) fail("cannot write summary file {}", opt.summary_json);
  }
}

}  // namespace sparq
