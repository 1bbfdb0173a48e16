// Picks how many threads a decode step runs on, from the measured time of
// recent steps. A step runs dozens of loops on the work team; when another
// process holds one of the cores, the caller still waits for whatever item
// the thread queued behind it holds, so on a 2-core machine with one busy
// neighbour 2 threads can decode slower than 1. The governor runs the
// user's count and now and then tries one thread fewer (or, once it has
// switched, the user's count again) for kTrial steps, or one when that one is
// far slower (kGiveUp), switching when that was clearly faster (kSwitch). The
// first trial comes after kFirstPeriod steps, then each one twice as far from
// the last, up to kMaxPeriod: a trial of the wrong count costs little, and a
// change of load is seen within kMaxPeriod.
#pragma once

#include <vector>

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
  // What the governor has learnt for one user count.
  struct State {
    int max = 0, current = 0;
    int period = kFirstPeriod, since_trial = 0, trial_left = 0;
    double mean = 0;  // recent step time at current
    double trial_sum = 0;
    int trial_steps = 0;
    int other() const { return current == max ? max - 1 : max; }
  };

  State s_;
  // The other user counts' states: runs that take turns between counts (the
  // bench's reps) resume each where it left off instead of starting over.
  std::vector<State> saved_;
  int picked_ = 0, reduced_ = 0;
};

}  // namespace sparq
