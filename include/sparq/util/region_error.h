// Exceptions inside OpenMP parallel regions. One that leaves a region's
// structured block ends the program (std::terminate), so bodies that can
// throw (a kernel's scratch growing, under memory pressure) run through
// guard(), and the first exception is rethrown once the region is over.
#pragma once
#include <exception>

namespace sparq {

class RegionError {
 public:
  // Runs f; keeps its exception (the first one).
  template <class F>
  void guard(F&& f) noexcept {
    try {
      f();
    } catch (...) {
      keep(std::current_exception());
    }
  }
  bool any() const { return first_ != nullptr; }  // after the region
  // After the region: throws the kept exception, if any.
  void rethrow() const {
    if (first_) std::rethrow_exception(first_);
  }

 private:
  void keep(std::exception_ptr e) noexcept;
  std::exception_ptr first_;
};

}  // namespace sparq
