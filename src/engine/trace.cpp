#include "sparq/engine/trace.h"

#include <fstream>

#include "sparq/cli/profile.h"

namespace sparq {

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
