// The work team: every item of a loop runs exactly once, loops follow each
// other without mixing, nested loops run in place, and an exception thrown by
// an item comes out of the loop that ran it.
#include <omp.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "sparq/util/common.h"
#include "sparq/util/work_team.h"
#include "test_util.h"

using namespace sparq;

TEST_CASE("work team: every item runs once, loop after loop", "[parallel]") {
  for (int threads : {1, 2, 3, 5})
    for (int n : {1, 2, 3, 7, 64, 1000}) {
      std::vector<std::atomic<int>> ran(static_cast<size_t>(n));
      // Back-to-back loops, as a decode step runs them: a thread still looking
      // at an earlier loop must not claim or run an item of this one twice.
      for (int round = 0; round < 50; ++round) {
        parallel_items(n, threads, ItemFn([&](int i) { ran[size_t(i)].fetch_add(1); }));
        for (int i = 0; i < n; ++i) REQUIRE(ran[size_t(i)].exchange(0) == 1);
      }
    }
}

TEST_CASE("work team: items run on more than one thread", "[parallel]") {
  // Item 0 waits until item 1 has started, which only another thread can do
  // (the caller is busy with item 0); the wait ends with a clear failure.
  std::atomic<bool> second{false};
  std::atomic<bool> waited_out{false};
  std::thread::id ids[2];
  parallel_items(2, 2, ItemFn([&](int i) {
    ids[i] = std::this_thread::get_id();
    if (i == 1) {
      second = true;
      return;
    }
    const auto end = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!second && std::chrono::steady_clock::now() < end) std::this_thread::yield();
    waited_out = !second;
  }));
  REQUIRE_FALSE(waited_out);
  REQUIRE(ids[0] != ids[1]);
}

TEST_CASE("work team: a loop inside an item runs on that item's thread", "[parallel]") {
  std::vector<int> sums(8, 0);
  std::atomic<int> elsewhere{0}, teams{0};
  parallel_items(8, 2, ItemFn([&](int i) {
    teams += team_threads();  // (Catch2's assertions are for the main thread only)
    const auto me = std::this_thread::get_id();
    parallel_items(10, 4, ItemFn([&](int j) {
      if (std::this_thread::get_id() != me) ++elsewhere;
      sums[size_t(i)] += j;  // in order on this thread: no race
    }));
  }));
  REQUIRE(elsewhere == 0);
  REQUIRE(teams == 8);
  for (int s : sums) REQUIRE(s == 45);
  std::atomic<int> in_omp{0}, omp_threads{0};
#pragma omp parallel num_threads(2)
  {
    in_omp += team_threads();
    ++omp_threads;
  }
  REQUIRE(in_omp == omp_threads);
}

TEST_CASE("work team: the first exception leaves the loop, the next loop runs whole", "[parallel]") {
  for (int threads : {1, 2, 4}) {
    std::atomic<int> ran{0};
    const std::string error = test::error_of([&] {
      parallel_items(200, threads, ItemFn([&](int i) {
        ++ran;
        if (i == 17) fail("item {} failed", i);
      }));
    });
    REQUIRE(error == "item 17 failed");
    REQUIRE(ran >= 18);  // items are claimed in order: 0..17 at least ran
    std::atomic<int> after{0};
    parallel_items(200, threads, ItemFn([&](int) { ++after; }));
    REQUIRE(after == 200);
  }
}
