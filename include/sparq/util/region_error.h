// Exceptions inside OpenMP parallel regions. One that leaves a region's
// structured block ends the program (std::terminate), so bodies that can
// throw (a kernel's scratch growing, under memory pressure) run through
// guard(), and the first exception is rethrown once the region is over.
//
// Regions with barriers inside need one more rule: a thread that stops early
// would leave the others waiting at the next barrier forever. Such bodies
// number their phases (the barriers passed so far) and, after each barrier,
// stop only if a section of an earlier phase threw: every thread finished
// those sections before that barrier, so all of them see the same answer.
#pragma once
#include <atomic>
#include <climits>
#include <exception>

namespace sparq {

class RegionError {
 public:
  // Runs f; keeps its exception (the first one, and the phase it came from).
  template <class F>
  void guard(F&& f, int phase = 0) noexcept {
    try {
      f();
    } catch (...) {
      keep(std::current_exception(), phase);
    }
  }
  bool any() const { return phase_.load(std::memory_order_relaxed) != INT_MAX; }
  // Whether a section of a phase before `phase` threw.
  bool before(int phase) const { return phase_.load(std::memory_order_relaxed) < phase; }
  // After the region: throws the kept exception, if any.
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  void keep(std::exception_ptr e, int phase) noexcept;
  std::exception_ptr first_;
  std::atomic<int> phase_{INT_MAX};
};

}  // namespace sparq
