// The process's peak resident memory, to check a run against what it must
// hold: weights + KV cache (with the transposed K copy) + a small overhead.
#pragma once
#include <cstddef>

namespace sparq {

// VmHWM from /proc/self/status, in bytes (0 where it cannot be read).
size_t peak_memory_bytes();

// Restarts the peak at the current resident size (writes 5 to
// /proc/self/clear_refs), so a scratch buffer already freed, such as the
// bandwidth probe's, does not count. Returns false where that is refused.
bool reset_peak_memory();

}  // namespace sparq
