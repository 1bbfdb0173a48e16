// --trace FILE.json: a Chrome trace-event file (opens in Perfetto or
// chrome://tracing) with an event per forward pass and one per phase in it,
// plus sampling and tokenizer events.
#pragma once
#include <chrono>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "sparq/model/model.h"

namespace sparq {

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
