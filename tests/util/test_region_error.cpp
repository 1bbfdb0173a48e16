// RegionError: an exception thrown inside an OpenMP region comes out after it,
// and threads meeting at barriers stop at the same one.
#include <omp.h>

#include <vector>

#include "sparq/util/common.h"
#include "sparq/util/region_error.h"
#include "test_util.h"

using namespace sparq;

TEST_CASE("region error: the first exception is rethrown after the region", "[parallel]") {
  RegionError err;
  REQUIRE_FALSE(err.any());
  REQUIRE_NOTHROW(err.rethrow());
#pragma omp parallel for num_threads(3)
  for (int i = 0; i < 30; ++i)
    err.guard([&] {
      if (i == 17) fail("item {} failed", i);
    });
  REQUIRE(err.any());
  REQUIRE(test::error_of([&] { err.rethrow(); }) == "item 17 failed");
}

TEST_CASE("region error: threads with barriers stop together after the phase that threw", "[parallel]") {
  constexpr int kThreads = 4, kPhases = 8;
  for (int bad_phase = 0; bad_phase < kPhases; bad_phase += 3)
    for (int bad_thread = 0; bad_thread < kThreads; ++bad_thread) {
      RegionError err;
      std::vector<int> stopped(kThreads, -1), team(kThreads, 0);
#pragma omp parallel num_threads(kThreads)
      {
        const int tid = omp_get_thread_num(), nt = omp_get_num_threads();
        team[tid] = nt;
        int phase = 0;
        while (phase < kPhases) {
          err.guard(
              [&] {
                if (tid == bad_thread % nt && phase == bad_phase) fail("phase {}", phase);
              },
              phase);
#pragma omp barrier
          ++phase;
          if (err.before(phase)) break;
        }
        stopped[tid] = phase;
      }
      INFO("bad phase " << bad_phase << " thread " << bad_thread);
      for (int t = 0; t < team[0]; ++t) REQUIRE(stopped[t] == bad_phase + 1);
      REQUIRE(test::error_of([&] { err.rethrow(); }) == fmt::format("phase {}", bad_phase));
    }
}
