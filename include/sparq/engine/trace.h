// The phases of a forward pass (shared by --profile), and --trace FILE.json:
// a Chrome trace-event file (opens in Perfetto or chrome://tracing) with an
// event per forward pass and one per phase in it, plus sampling and tokenizer
// events.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sparq/model/model.h"

namespace sparq {

struct Phase {
  std::string name;
  int level = 0;     // 0: a phase of the forward pass; 1: part of the attention phase before it
  double seconds = 0;
  uint64_t bytes = 0;  // 0: not counted
};

// The phases of the forward passes that s counts, in the order they run in
// a layer; SparQ's parts (step 1 with the component selection, top-k, step 3,
// mix) are always listed, zero where SparQ did not run.
std::vector<Phase> forward_phases(const ForwardStats& s);

class TraceLog {
 public:
  using Clock = std::chrono::steady_clock;
  TraceLog() : origin_(Clock::now()) {}

  // A complete event ("ph": "X") from start to end; cat groups events.
  void add(std::string name, const char* cat, Clock::time_point start, Clock::time_point end,
           nlohmann::json args = nlohmann::json::object());

  // A forward pass named name from start to end, and inside it one event
  // per phase: the time the phase took over all layers (before to after),
  // laid end to end from start, since the phases alternate layer by layer.
  void add_forward(const char* name, Clock::time_point start, Clock::time_point end, const ForwardStats& before,
                   const ForwardStats& after, nlohmann::json args);

  nlohmann::json to_json() const;
  void write(const std::string& path) const;  // throws Error when the file cannot be written

 private:
  struct Event {
    std::string name;
    const char* cat;
    double ts, dur;  // microseconds since origin_
    nlohmann::json args;
  };
  double us(Clock::time_point t) const { return std::chrono::duration<double, std::micro>(t - origin_).count(); }

  Clock::time_point origin_;
  std::vector<Event> events_;
};

}  // namespace sparq
