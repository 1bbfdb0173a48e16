// RegionError: an exception thrown inside an OpenMP region comes out after it.
#include <omp.h>

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
