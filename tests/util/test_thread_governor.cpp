// ThreadGovernor against step times made up for each thread count.
#include "sparq/util/thread_governor.h"
#include "test_util.h"

using namespace sparq;

namespace {

// Runs n steps at most `max` threads where a step on t threads takes time(t);
// returns how many ran on fewer than max.
template <class F>
int run(ThreadGovernor& g, int max, int n, F time) {
  int fewer = 0;
  for (int i = 0; i < n; ++i) {
    const int t = g.pick(max);
    REQUIRE((t == max || t == max - 1));
    fewer += t < max;
    g.record(time(t));
  }
  return fewer;
}

}  // namespace

TEST_CASE("thread governor: keeps the user's count while it is faster, trying one fewer less and less often", "[governor]") {
  ThreadGovernor g;
  int fewer = run(g, 4, 1000, [](int t) { return 1.0 / t; });
  // Trials after 4, 8, 16, 32, 64, 128, 256, 256 steps at 4 threads: 8 in
  // the first 1000, each of one step, since 3 threads take 1.33x as long.
  CHECK(fewer == 8);
  CHECK(g.steps_reduced() == fewer);
  // Slower by less than kGiveUp: trials of kTrial steps.
  g = ThreadGovernor{};
  fewer = run(g, 4, 1000, [](int t) { return t == 4 ? 1.0 : 1.1; });
  CHECK(fewer == ThreadGovernor::kTrial * 8);
}

TEST_CASE("thread governor: moves to one thread fewer when that is faster, and back when the load goes", "[governor]") {
  ThreadGovernor g;
  // A busy neighbour: 2 threads take 3x as long as 1.
  int fewer = run(g, 2, 300, [](int t) { return t == 2 ? 3.0 : 1.0; });
  CHECK(fewer >= 300 - 4 - 2 * 8);
  // The neighbour stops: within kMaxPeriod + a trial, 2 threads again.
  run(g, 2, ThreadGovernor::kMaxPeriod + ThreadGovernor::kTrial, [](int t) { return t == 2 ? 0.5 : 1.0; });
  fewer = run(g, 2, 100, [](int t) { return t == 2 ? 0.5 : 1.0; });
  CHECK(fewer <= 2);
}

TEST_CASE("thread governor: a step far slower than the recent ones brings a trial forward", "[governor]") {
  ThreadGovernor g;
  run(g, 2, 100, [](int t) { return t == 2 ? 1.0 : 2.0; });  // quiet: 2 threads
  // A neighbour arrives: 2 threads now take 3x as long, 1 thread is unchanged.
  const int fewer = run(g, 2, 20, [](int t) { return t == 2 ? 3.0 : 2.0; });
  CHECK(fewer >= 20 - 1 - ThreadGovernor::kTrial);
}

TEST_CASE("thread governor: on fewer threads, a slow step does not bring a trial forward", "[governor]") {
  ThreadGovernor g;
  // A busy neighbour: 2 threads take 3x as long as 1; by now trials are far apart.
  run(g, 2, 300, [](int t) { return t == 2 ? 3.0 : 1.0; });
  // The host's noise: every other step on 1 thread takes 2x as long. More
  // threads would not help, so no step runs on 2.
  int i = 0;
  CHECK(run(g, 2, 20, [&](int t) { return t == 2 ? 3.0 : ++i % 2 ? 2.0 : 1.0; }) == 20);
}

TEST_CASE("thread governor: one thread, or a new count, starts over; a count seen before resumes", "[governor]") {
  ThreadGovernor g;
  CHECK(run(g, 1, 100, [](int) { return 1.0; }) == 0);
  const auto busy = [](int t) { return t == 2 ? 3.0 : 1.0; };
  run(g, 2, 50, busy);
  const int reduced = g.steps_reduced();
  CHECK(g.pick(3) == 3);  // a new user setting: its own count first
  g.record(1.0);
  CHECK(g.steps_reduced() == reduced);
  // Back to 2 threads: still on 1, trials as far apart as before (at most
  // one trial step in 20, which the 3x slower step ends).
  CHECK(run(g, 2, 20, busy) >= 19);
}
