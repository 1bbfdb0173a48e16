#include "sparq/io/big_buffer.h"

#include <sys/mman.h>

#include <cstdint>
#include <cstdlib>

#include "sparq/util/common.h"

namespace sparq {

void* alloc_big(size_t bytes, const char* what) {
  constexpr size_t kHuge = size_t(2) << 20;
  const size_t align = bytes >= kHuge ? kHuge : 64;
  if (bytes > SIZE_MAX - align) fail("cannot allocate {:.1f} MiB for {}", bytes / 1048576.0, what);
  const size_t rounded = (bytes + align - 1) / align * align;  // aligned_alloc wants a multiple
  void* p = std::aligned_alloc(align, rounded == 0 ? align : rounded);
  if (!p) fail("cannot allocate {:.1f} MiB for {}", bytes / 1048576.0, what);
  // Only whole huge pages inside the request: a huge page over the rounding
  // would make up to 2 MiB resident that nothing uses. Advice only: failure is harmless.
  if (align == kHuge) madvise(p, bytes / kHuge * kHuge, MADV_HUGEPAGE);
  return p;
}

}  // namespace sparq
