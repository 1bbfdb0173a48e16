// Picks how many threads a decode step runs on, from the measured time of
// recent steps. A step runs dozens of loops on the work team; when another
// process holds one of the cores, the caller still waits for whatever item
// the thread queued behind it holds, so on a 2-core machine with one busy
// neighbour 2 threads can decode slower than 1. The governor runs the
// user's count and now and then tries one thread fewer (or, once it has
// switched, the user's count again) for kTrial steps, or one when that one is
// far slower (kGiveUp), switching when that was clearly faster (kSwitch). The first trial comes after kFirstPeriod steps,
// then each one twice as far from the last, up to kMaxPeriod: a trial of the
// wrong count costs little, and a change of load is seen within kMaxPeriod.
#pragma once

namespace sparq {

class ThreadGovernor {
 public:
  // The team size for the next step, given the user's (omp_get_max_threads()).
  int pick(int max_threads);
  // The step run on pick()'s count took this long.
  void record(double seconds);
  int steps_reduced() const { return reduced_; }  // steps run on fewer threads than asked

  static constexpr int kTrial = 2;
  static constexpr int kFirstPeriod = 4;
  static constexpr double kSurprise = 1.5;
  static constexpr double kSwitch = 0.95;
  static constexpr double kGiveUp = 1.25;  // a trial step this much slower ends the trial
  static constexpr int kMaxPeriod = 256;

 private:
  int other() const { return current_ == max_ ? max_ - 1 : max_; }

  int max_ = 0, current_ = 0, picked_ = 0, reduced_ = 0;
  int period_ = kFirstPeriod, since_trial_ = 0, trial_left_ = 0;
  double mean_ = 0;  // recent step time at current_
  double trial_sum_ = 0;
  int trial_steps_ = 0;
};

}  // namespace sparq
