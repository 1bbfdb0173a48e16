#include "sparq/util/thread_governor.h"

#include <algorithm>

namespace sparq {

int ThreadGovernor::pick(int max_threads) {
  if (max_threads != max_) {  // a new user setting: start over
    *this = ThreadGovernor{};
    max_ = current_ = max_threads;
  }
  picked_ = max_ >= 2 && trial_left_ > 0 ? other() : current_;
  if (picked_ < max_) ++reduced_;
  return picked_;
}

void ThreadGovernor::record(double seconds) {
  if (max_ < 2) return;
  if (picked_ == current_) {
    // A step far slower than the recent ones hints at a new neighbour: try now.
    const bool surprise = mean_ > 0 && seconds > kSurprise * mean_;
    mean_ = mean_ == 0 ? seconds : 0.75 * mean_ + 0.25 * seconds;
    if (++since_trial_ >= period_ || surprise) trial_left_ = kTrial;  // the next steps try the other count
    return;
  }
  trial_sum_ += seconds;
  ++trial_steps_;
  // A first step far slower than the current count's settles the trial.
  const bool settled = seconds > kGiveUp * mean_;
  if (--trial_left_ > 0 && !settled) return;
  trial_left_ = 0;
  const double tried = trial_sum_ / trial_steps_;
  if (tried < kSwitch * mean_) {  // clearly faster: keep it
    current_ = picked_;
    mean_ = tried;
  }
  period_ = std::min(2 * period_, kMaxPeriod);
  trial_sum_ = 0;
  trial_steps_ = 0;
  since_trial_ = 0;
}

}  // namespace sparq
