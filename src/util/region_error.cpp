#include "sparq/util/region_error.h"

namespace sparq {

void RegionError::keep(std::exception_ptr e, int phase) noexcept {
#pragma omp critical(sparq_region_error)
  {
    if (!first_) first_ = e;
    if (phase < phase_.load(std::memory_order_relaxed)) phase_.store(phase, std::memory_order_relaxed);
  }
}

}  // namespace sparq
