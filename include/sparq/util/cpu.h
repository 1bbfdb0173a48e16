// CPU tiers: which of the kernels' instruction sets this process runs, picked
// at run time from what the CPU has. Each tier's kernels are compiled with
// that tier's flags only, so one binary runs on every x86-64 CPU.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>
#include <vector>

namespace sparq {

// Lowest to highest; a CPU that has a tier has every tier below it.
enum class CpuTier {
  portable,    // the scalar references
  avx2,        // AVX2, FMA, F16C (Haswell and later, every Zen)
  avx512,      // AVX-512 F/BW/VL/DQ (Skylake-X and later): bf16 by widening
  avx512bf16,  // AVX-512 with BF16 and VNNI (Zen 4 and later, Sapphire Rapids and later)
};
inline constexpr CpuTier kCpuTiers[] = {CpuTier::portable, CpuTier::avx2, CpuTier::avx512, CpuTier::avx512bf16};

const char* cpu_tier_name(CpuTier t);
// Throws Error (naming the tiers) for a name that is none of them.
CpuTier parse_cpu_tier(std::string_view name);
// "portable, avx2, ..." for messages.
std::string cpu_tier_names();

// The highest tier this CPU has.
CpuTier best_cpu_tier();
bool cpu_has(CpuTier t);
// The tiers this CPU has, portable first.
std::vector<CpuTier> cpu_tiers_here();

// The tier the kernels run now: the best, or SPARQ_CPU's when that names a
// lower one (check_cpu_env reports a bad SPARQ_CPU; until then it is ignored).
CpuTier cpu_tier();
// Forces tier t (tests, --cpu); throws Error when the CPU lacks it.
void set_cpu_tier(CpuTier t);
// Throws Error when SPARQ_CPU is set to an unknown tier or one the CPU lacks.
void check_cpu_env();

// The one of four per-tier things (kernel tables) that belongs to tier t.
template <class T>
const T& for_tier(CpuTier t, const T& portable, const T& avx2, const T& avx512, const T& avx512bf16) {
  switch (t) {
    case CpuTier::avx2: return avx2;
    case CpuTier::avx512: return avx512;
    case CpuTier::avx512bf16: return avx512bf16;
    case CpuTier::portable: break;
  }
  return portable;
}

// The processor's name as the kernel reports it (/proc/cpuinfo's "model
// name"), or "unknown".
std::string cpu_model_name();

// The size of the highest cache level sysfs lists for CPU 0 (one instance of
// it; VMs may report more than the host shares), or 0 when it cannot be read.
size_t last_level_cache_bytes();

}  // namespace sparq
