#include "sparq/util/thread_governor.h"

#include <algorithm>

namespace sparq {

int ThreadGovernor::pick(int max_threads) {
  if (max_threads != s_.max) {  // another user setting: resume its state, or start it
    if (s_.max > 0) saved_.push_back(s_);
    const auto seen = std::find_if(saved_.begin(), saved_.end(), [&](const State& s) { return s.max == max_threads; });
    if (seen != saved_.end()) {
      s_ = *seen;
      saved_.erase(seen);
    } else {
      s_ = State{};
      s_.max = s_.current = max_threads;
    }
  }
  picked_ = s_.max >= 2 && s_.trial_left > 0 ? s_.other() : s_.current;
  if (picked_ < s_.max) ++reduced_;
  return picked_;
}

void ThreadGovernor::record(double seconds) {
  State& s = s_;
  if (s.max < 2) return;
  if (picked_ == s.current) {
    // On the user's count, a step far slower than the recent ones hints at a
    // new neighbour: try one fewer now. (On fewer, a neighbour leaving makes
    // steps faster, not slower; the periodic trials see that.)
    const bool surprise = s.current == s.max && s.mean > 0 && seconds > kSurprise * s.mean;
    s.mean = s.mean == 0 ? seconds : 0.75 * s.mean + 0.25 * seconds;
    if (++s.since_trial >= s.period || surprise) s.trial_left = kTrial;  // the next steps try the other count
    return;
  }
  s.trial_sum += seconds;
  ++s.trial_steps;
  // A first step far slower than the current count's settles the trial.
  const bool settled = seconds > kGiveUp * s.mean;
  if (--s.trial_left > 0 && !settled) return;
  s.trial_left = 0;
  const double tried = s.trial_sum / s.trial_steps;
  if (tried < kSwitch * s.mean) {  // clearly faster: keep it
    s.current = picked_;
    s.mean = tried;
  }
  s.period = std::min(2 * s.period, kMaxPeriod);
  s.trial_sum = 0;
  s.trial_steps = 0;
  s.since_trial = 0;
}

}  // namespace sparq
