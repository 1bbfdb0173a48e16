// DRAM read bandwidth as measured here, the yardstick the attention kernels'
// GB/s are compared with.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sparq {

// Best of a few streaming reads over a 1 GiB buffer (far larger than any
// last-level cache), first touched by the same threads. Prints nothing.
double measure_read_bandwidth_gbs(int threads);

// The read loops: a checksum of n bytes (n a multiple of 256), so the loads
// cannot be optimised away.
namespace ref {
uint64_t read_checksum(const void* p, size_t n);
}
namespace avx512 {
uint64_t read_checksum(const void* p, size_t n);
}

}  // namespace sparq
