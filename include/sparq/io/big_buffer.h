// Large buffers for data that is streamed from DRAM (KV cache, bandwidth
// probe): 2 MiB aligned with transparent huge pages requested when large, so
// sequential reads are not slowed by TLB misses; 64-byte aligned otherwise.
#pragma once
#include <cstddef>

namespace sparq {

// Returns memory to release with std::free; throws Error
// "cannot allocate N MiB for <what>" when the allocation fails.
void* alloc_big(size_t bytes, const char* what);

}  // namespace sparq
