#include "sparq/engine/generate.h"

#include <algorithm>
#include <chrono>

#include "sparq/engine/trace.h"

namespace sparq {
namespace {

using Clock = std::chrono::steady_clock;

bool is_eos(const ModelConfig& c, int id) {
  return std::find(c.eos_ids.begin(), c.eos_ids.end(), id) != c.eos_ids.end();
}

}  // namespace

void check_prompt_fits(size_t n_prompt, int ctx) {
  if (n_prompt == 0) fail("the prompt is empty (no tokens)");
  if (ctx <= 0) fail("context size must be positive, got {}", ctx);
  if (n_prompt >= size_t(ctx))
    fail("the prompt is {} tokens but the context size is {} (raise -c or shorten the prompt)", n_prompt, ctx);
}

GenerateResult generate(Model& model, std::span<const int> prompt, const GenerateOptions& opt,
                        const std::function<bool(int)>& on_token) {
  const ModelConfig& c = model.config();
  check_prompt_fits(prompt.size(), opt.ctx);
  if (opt.batch <= 0) fail("batch size must be positive, got {}", opt.batch);

  KVCache cache(model.kv_shape(opt.ctx, opt.kv_type));
  Sampler sampler(opt.sampling);
  GenerateResult res;
  res.n_prompt = int(prompt.size());
  std::vector<float> logits(size_t(c.vocab_size));
  std::vector<int> history(prompt.begin(), prompt.end());
  std::vector<Row> rows;

  auto t0 = Clock::now();
  for (int p0 = 0; p0 < int(prompt.size()); p0 += opt.batch) {
    const int n = std::min(opt.batch, int(prompt.size()) - p0);
    rows.clear();
    for (int i = 0; i < n; ++i)
      rows.push_back(Row{prompt[p0 + i], p0 + i, &cache, nullptr, p0 + i + 1 == int(prompt.size())});
    const auto tf = Clock::now();
    const ForwardStats before = opt.trace ? res.prompt_stats : ForwardStats{};
    model.forward(rows, logits.data(), &res.prompt_stats);
    if (opt.trace) opt.trace->add_forward("prefill", tf, Clock::now(), before, res.prompt_stats, {{"rows", n}});
  }
  res.t_prompt = seconds_since(t0);

  int pos = int(prompt.size());
  res.stop_reason = "n_predict";
  auto t_dec = Clock::now();
  for (int n = 0; opt.n_predict < 0 || n < opt.n_predict; ++n) {
    const auto t_s = Clock::now();
    const int id = sampler.sample(logits, history);
    res.t_sample += seconds_since(t_s);
    if (opt.trace) opt.trace->add("sampling", "sampling", t_s, Clock::now());
    res.tokens.push_back(id);
    history.push_back(id);
    if (!opt.ignore_eos && is_eos(c, id)) {
      res.stop_reason = "eos";
      break;
    }
    if (!on_token(id)) {
      res.stop_reason = "stopped";
      break;
    }
    if (pos >= opt.ctx) {
      res.stop_reason = "context full";
      break;
    }
    if (opt.n_predict >= 0 && n + 1 == opt.n_predict) break;  // no logits needed
    const ForwardStats before = res.decode_stats;
    auto ts = Clock::now();
    const Row row{id, pos, &cache, &opt.attention, true};
    model.forward({&row, 1}, logits.data(), &res.decode_stats);
    if (opt.trace) opt.trace->add_forward("decode", ts, Clock::now(), before, res.decode_stats, {{"S", pos + 1}});
    StepRecord rec;
    rec.S = pos + 1;
    rec.token = id;
    rec.ms = seconds_since(ts) * 1e3;
    rec.attn_ms = (res.decode_stats.t_attn - before.t_attn) * 1e3;
    rec.kv_bytes = res.decode_stats.attn.kv_bytes - before.attn.kv_bytes;
    rec.dense_kv_bytes = res.decode_stats.attn.dense_bytes - before.attn.dense_bytes;
    rec.weight_bytes = res.decode_stats.weight_bytes - before.weight_bytes;
    rec.dense_fallback = res.decode_stats.attn.dense_fallbacks > before.attn.dense_fallbacks;
    res.steps.push_back(rec);
    if (opt.on_step) opt.on_step(rec);
    ++pos;
  }
  res.t_decode = seconds_since(t_dec);
  return res;
}

}  // namespace sparq
