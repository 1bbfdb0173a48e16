// Run-time CPU feature checks that pick the AVX-512 kernels or the portable ones.
#pragma once
#include <cstddef>
#include <string>

namespace sparq {

// True when AVX-512 F/BW/VL/DQ, BF16 and VNNI are present and not disabled
// (every CPU with AVX512_BF16 has VNNI too).
bool use_avx512();

// Forces the portable kernels (tests compare both paths; SPARQ_NO_AVX512=1 does
// the same from the environment).
void set_avx512_enabled(bool enabled);

// The processor's name as the kernel reports it (/proc/cpuinfo's "model
// name"), or "unknown".
std::string cpu_model_name();

// The size of the highest cache level sysfs lists for CPU 0 (one instance of
// it; VMs may report more than the host shares), or 0 when it cannot be read.
size_t last_level_cache_bytes();

}  // namespace sparq
