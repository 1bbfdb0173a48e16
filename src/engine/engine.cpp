#include "sparq/engine/engine.h"

#include <algorithm>
#include <chrono>
#include <ranges>

#include "sparq/util/interrupt.h"

namespace sparq {
namespace {

using Clock = std::chrono::steady_clock;

// One sequence: the token stream prefill ++ forced ++ sampled of one variant.
struct Seq {
  KVCache* cache = nullptr;
  const AttentionSettings* attn = nullptr;
  Sampler sampler;
  std::vector<int> history;  // tokens fed so far (for the repetition penalty)
  int fed = 0;               // tokens fed = next position
  bool done = false;
  VariantResult res;
};

struct Active {
  size_t job;
  std::vector<Seq> seqs;
  std::vector<size_t> lead;  // per sequence, the one of its cache type that runs the shared prompt
  int leads = 0;             // sequences that are their own lead
  Clock::time_point start;
  std::vector<const float*> forced_logits;  // this step's, per variant
};

std::vector<KVType> kv_types_of(const Job& j, KVType engine_type) {
  return j.kv_types.empty() ? std::vector<KVType>(j.variants.size(), engine_type) : j.kv_types;
}

bool is_eos(const ModelConfig& c, int id) {
  return std::find(c.eos_ids.begin(), c.eos_ids.end(), id) != c.eos_ids.end();
}

int token_at(const Job& j, const Seq& s, int index) {
  const int P = int(j.prefill.size()), F = int(j.forced.size());
  if (index < P) return j.prefill[index];
  if (index < P + F) return j.forced[index - P];
  return s.res.sampled[index - P - F];
}

// Whether the row feeding token `index` needs logits.
bool wants_logits(const Job& j, int index) {
  const int P = int(j.prefill.size()), F = int(j.forced.size());
  return (index >= P && index < P + F) || (j.n_sample > 0 && index >= P + F - 1);
}

}  // namespace

uint64_t step_dense_kv_bytes(const ModelConfig& c, int S, KVType kv_type) {
  return uint64_t(c.n_layers) * c.n_kv_heads * dense_step_bytes(S, c.head_dim, kv_type);
}

uint64_t step_kv_bytes(const ModelConfig& c, const AttentionSettings& a, int S, KVType kv_type, bool first_step) {
  const uint64_t method = decode_step_bytes(a, S, c.head_dim, kv_type, first_step);
  const uint64_t dense = dense_step_bytes(S, c.head_dim, kv_type);
  uint64_t sum = 0;
  for (int l = 0; l < c.n_layers; ++l) sum += a.runs_at(l) ? method : dense;
  return uint64_t(c.n_kv_heads) * sum;
}

Engine::Engine(Model& model, int ctx, std::span<const CachePool> pools) : model_(model), ctx_(ctx) {
  if (ctx < 2) fail("context size must be at least 2, got {}", ctx);
  std::vector<KVShape> shapes;
  for (const CachePool& p : pools) {
    if (p.count < 1) fail("--parallel must be >= 1, got {}", p.count);
    shapes.insert(shapes.end(), size_t(p.count), model.kv_shape(ctx, p.type));
  }
  if (shapes.empty()) fail("--parallel must be >= 1, got 0");
  check_kv_fits(shapes, available_memory());
  for (const KVShape& s : shapes) caches_.push_back(std::make_unique<KVCache>(s));
}

Engine::Engine(Model& model, int parallel, int ctx, KVType kv_type)
    : Engine(model, ctx, std::vector<CachePool>{{kv_type, parallel}}) {}

void Engine::run(std::span<const Job> jobs, const EngineHooks& hooks, int batch) {
  const ModelConfig& c = model_.config();
  const size_t V = size_t(c.vocab_size);
  const KVType default_type = caches_[0]->shape().type;
  for (size_t i = 0; i < jobs.size(); ++i) {
    const Job& j = jobs[i];
    const size_t fixed = j.prefill.size() + j.forced.size();
    if (j.variants.empty()) fail("job {} has no attention setting", i);
    if (!j.kv_types.empty() && j.kv_types.size() != j.variants.size())
      fail("job {} has {} KV cache types for {} variants", i, j.kv_types.size(), j.variants.size());
    const std::vector<KVType> types = kv_types_of(j, default_type);
    for (const KVType t : types) {
      const auto want = std::ranges::count(types, t);
      const auto have = std::ranges::count_if(caches_, [t](const auto& cp) { return cp->shape().type == t; });
      if (want > have)
        fail("job {} needs {} sequences of a {} KV cache but only {} run in parallel", i, want, kv_type_name(t),
             have);
    }
    if (fixed == 0) fail("job {} has no tokens", i);
    if (j.forced.empty() && j.n_sample <= 0) fail("job {} has nothing to predict", i);
    if (fixed + (j.n_sample > 0 ? 1 : 0) > size_t(ctx_))
      fail("job {} is {} tokens but the context size is {}", i, fixed, ctx_);
  }
  std::vector<KVCache*> free_caches;
  for (auto& cp : caches_) free_caches.push_back(cp.get());
  // Takes a free cache of each of the job's variants' types, or none when one is missing.
  auto take_caches = [&](const Job& j) {
    std::vector<KVCache*> got;
    for (const KVType t : kv_types_of(j, default_type)) {
      const auto it = std::ranges::find_if(free_caches, [t](KVCache* k) { return k->shape().type == t; });
      if (it == free_caches.end()) break;
      got.push_back(*it);
      free_caches.erase(it);
    }
    if (got.size() < j.variants.size()) {
      free_caches.insert(free_caches.end(), got.begin(), got.end());
      got.clear();
    }
    return got;
  };
  std::vector<Active> active;
  std::vector<Row> rows;
  std::vector<std::pair<size_t, size_t>> row_seq;  // per row with logits: (active, variant)
  std::vector<float> logits;
  size_t next = 0;

  // Ctrl-C drops the jobs in flight; finished ones were reported by on_done.
  while ((next < jobs.size() || !active.empty()) && !interrupted()) {
    while (next < jobs.size()) {
      const Job& j = jobs[next];
      const std::vector<KVCache*> got = take_caches(j);
      if (got.empty()) break;
      Active a{next, {}, {}, 0, Clock::now(), std::vector<const float*>(j.variants.size())};
      for (size_t v = 0; v < j.variants.size(); ++v) {
        Seq q{got[v], j.variants[v], Sampler(j.sampling), {}, 0, false, {}};
        q.cache->clear();
        size_t lead = 0;
        while (lead < v && a.seqs[lead].cache->shape().type != q.cache->shape().type) ++lead;
        a.lead.push_back(lead);
        a.leads += lead == v;
        a.seqs.push_back(std::move(q));
      }
      active.push_back(std::move(a));
      ++next;
    }

    // Every variant of a job gets the same rows this step, so forced tokens
    // reach all of them together and their logits can be compared.
    rows.clear();
    row_seq.clear();
    int budget = batch;
    for (size_t ai = 0; ai < active.size(); ++ai) {
      Active& a = active[ai];
      const Job& j = jobs[a.job];
      const int P = int(j.prefill.size()), nv = int(a.seqs.size());
      // The prompt but its last token is dense for every variant: the first
      // of each cache type runs it and the others copy its cache, then all
      // feed the last prompt token together.
      if (nv > a.leads && a.seqs[0].fed < P - 1) {
        if (budget < a.leads && !rows.empty()) continue;
        const int n = std::min(P - 1 - a.seqs[0].fed, std::max(1, budget / a.leads));
        budget -= n * a.leads;
        for (size_t si = 0; si < a.seqs.size(); ++si) {
          if (a.lead[si] != si) continue;
          Seq& lead = a.seqs[si];
          for (int t = 0; t < n; ++t) {
            rows.push_back(Row{j.prefill[size_t(lead.fed + t)], lead.fed + t, lead.cache, nullptr, false});
            lead.history.push_back(rows.back().token);
          }
          lead.fed += n;
        }
        continue;
      }
      for (size_t si = 0; si < a.seqs.size(); ++si)
        if (a.lead[si] != si && a.seqs[si].fed < P - 1) {
          const Seq& lead = a.seqs[a.lead[si]];
          a.seqs[si].cache->copy_from(*lead.cache);
          a.seqs[si].fed = lead.fed;
          a.seqs[si].history = lead.history;
        }
      // Variants are in lockstep until sampling: one chunk size for all.
      int n = 1;
      if (a.seqs[0].fed < P) {
        if (budget < nv && !rows.empty()) continue;
        n = std::min(P - a.seqs[0].fed, std::max(1, budget / nv));
        budget -= n * nv;
      }
      for (size_t si = 0; si < a.seqs.size(); ++si) {
        Seq& s = a.seqs[si];
        if (s.done) continue;
        for (int t = 0; t < n; ++t) {
          const int index = s.fed + t;
          const bool want = wants_logits(j, index);
          rows.push_back(Row{token_at(j, s, index), index, s.cache, index >= P ? s.attn : nullptr, want});
          if (want) row_seq.emplace_back(ai, si);
          s.history.push_back(rows.back().token);
        }
        s.fed += n;
      }
    }
    logits.resize(row_seq.size() * V);
    model_.forward(rows, logits.data(), &stats_);

    for (size_t r = 0; r < row_seq.size(); ++r) {
      Active& a = active[row_seq[r].first];
      const size_t si = row_seq[r].second;
      Seq& s = a.seqs[si];
      const Job& j = jobs[a.job];
      const int P = int(j.prefill.size()), F = int(j.forced.size());
      const int index = s.fed - 1;  // the token just fed
      float* row_logits = &logits[r * V];
      if (index >= P && index < P + F) a.forced_logits[si] = row_logits;
      if (j.n_sample > 0 && index >= P + F - 1) {
        const int id = s.sampler.sample({row_logits, V}, s.history);
        s.res.sampled.push_back(id);
        if (hooks.on_token) hooks.on_token(a.job, int(si), id);
        if (j.stop_at_eos && is_eos(c, id)) s.res.stop_reason = "eos";
        else if (int(s.res.sampled.size()) == j.n_sample) s.res.stop_reason = "n_predict";
        else if (s.fed >= ctx_) s.res.stop_reason = "context full";
      } else if (j.n_sample == 0 && index == P + F - 1) {
        s.res.stop_reason = "n_predict";
      }
      s.done = !s.res.stop_reason.empty();
    }
    // Bytes of the decode rows, and the forced-token hook once per job.
    for (Active& a : active) {
      const Job& j = jobs[a.job];
      const int P = int(j.prefill.size());
      for (Seq& s : a.seqs)
        if (s.fed > P && s.res.decode_steps < s.fed - P) {
          s.res.decode_steps = s.fed - P;
          s.res.kv_bytes += step_kv_bytes(c, *s.attn, s.fed, s.cache->shape().type, s.res.decode_steps == 1);
          s.res.dense_kv_bytes += step_dense_kv_bytes(c, s.fed, s.cache->shape().type);
        }
      if (a.forced_logits[0]) {
        if (hooks.on_forced) hooks.on_forced(a.job, a.seqs[0].fed - 1 - P, a.forced_logits);
        std::fill(a.forced_logits.begin(), a.forced_logits.end(), nullptr);
      }
    }
    // Retire finished jobs.
    for (size_t i = 0; i < active.size();) {
      Active& a = active[i];
      if (!std::all_of(a.seqs.begin(), a.seqs.end(), [](const Seq& s) { return s.done; })) {
        ++i;
        continue;
      }
      JobResult res;
      res.seconds = seconds_since(a.start);
      for (Seq& s : a.seqs) {
        free_caches.push_back(s.cache);
        res.variants.push_back(std::move(s.res));
      }
      const size_t job = a.job;
      active.erase(active.begin() + long(i));
      if (hooks.on_done) hooks.on_done(job, std::move(res));
    }
  }
}

}  // namespace sparq
