// DRAM read bandwidth as measured here, the yardstick the attention kernels'
// GB/s are compared with.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sparq {

// Best of a few streaming reads over a 1 GiB buffer (far larger than any
// last-level cache), first touched by the same threads. Prints nothing.
double measure_read_bandwidth_gbs(int threads);

// Best of a few gathers like SparQ's step 3: one row of row_bytes out of
// every `every` rows, at random but ascending, each row prefetched 32 rows
// ahead, over the same kind of buffer. Counts only the bytes of the rows read.
// One core can keep only so many cache misses in flight, so this is well
// below the streaming figure.
double measure_gather_bandwidth_gbs(int threads, int row_bytes, int every);

// The read loops: a checksum of n bytes (n a multiple of 256, p 64-byte
// aligned), so the loads cannot be optimised away. They prefetch kReadAhead
// bytes ahead into L2, as the attention kernels do.
inline constexpr size_t kReadAhead = 2048;
uint64_t read_checksum(const void* p, size_t n);  // the current tier's loop
namespace ref {
uint64_t read_checksum(const void* p, size_t n);
}
namespace avx2 {
uint64_t read_checksum(const void* p, size_t n);
}
namespace avx512 {
uint64_t read_checksum(const void* p, size_t n);
}
namespace avx512bf16 {
uint64_t read_checksum(const void* p, size_t n);
}

}  // namespace sparq
