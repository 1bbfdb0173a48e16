#include "sparq/util/region_error.h"

namespace sparq {

void RegionError::keep(std::exception_ptr e) noexcept {
#pragma omp critical(sparq_region_error)
  if (!first_) first_ = e;
}

}  // namespace sparq
