#include "sparq/engine/trace.h"

#include <fstream>

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

void TraceLog::add(std::string name, const char* cat, Clock::time_point start, Clock::time_point end,
                   nlohmann::json args) {
  events_.push_back(Event{std::move(name), cat, us(start), us(end) - us(start), std::move(args)});
}

void TraceLog::add_forward(const char* name, Clock::time_point start, Clock::time_point end,
                           const ForwardStats& before, const ForwardStats& after, nlohmann::json args) {
  add(name, "forward", start, end, std::move(args));
  const std::vector<Phase> was = forward_phases(before), now = forward_phases(after);
  double t = us(start), part = t;  // where the next phase, and the next part of the attention, start
  for (size_t i = 0; i < now.size(); ++i) {
    const double dur = (now[i].seconds - was[i].seconds) * 1e6;
    if (now[i].level == 1 && dur <= 0) continue;  // SparQ did not run
    nlohmann::json a = {{"summed_over_layers", true}};
    if (now[i].bytes > was[i].bytes) a["bytes"] = now[i].bytes - was[i].bytes;
    if (now[i].level == 0) {
      events_.push_back(Event{now[i].name, "phase", t, dur, std::move(a)});
      part = t;
      t += dur;
    } else {
      events_.push_back(Event{now[i].name, "attention", part, dur, std::move(a)});
      part += dur;
    }
  }
}

nlohmann::json TraceLog::to_json() const {
  nlohmann::json ev = nlohmann::json::array();
  ev.push_back({{"name", "process_name"}, {"ph", "M"}, {"pid", 1}, {"tid", 1}, {"args", {{"name", "sparq-run"}}}});
  for (const Event& e : events_)
    ev.push_back({{"name", e.name}, {"cat", e.cat}, {"ph", "X"}, {"ts", e.ts}, {"dur", e.dur}, {"pid", 1}, {"tid", 1},
                  {"args", e.args}});
  return {{"traceEvents", ev},
          {"displayTimeUnit", "ms"},
          {"otherData",
           {{"phases", "a phase's event is its time summed over the layers, laid end to end inside its forward pass"}}}};
}

void TraceLog::write(const std::string& path) const {
  std::ofstream f(path);
  if (!f) fail("cannot write --trace file {}", path);
  f << to_json().dump() << '\n';
  if (!f) fail("error writing --trace file {}", path);
}

}  // namespace sparq
