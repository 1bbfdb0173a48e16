// Tests run each kernel at every CPU tier this machine has. A tier it lacks
// is reported with a WARN line, never passed silently.
#pragma once
#include <vector>

#include <catch2/catch.hpp>

#include "sparq/util/cpu.h"

namespace sparq::test {

// The SIMD tiers (above portable) this CPU has; WARNs for each it lacks.
inline std::vector<CpuTier> simd_tiers_here() {
  std::vector<CpuTier> tiers;
  for (CpuTier t : kCpuTiers) {
    if (t == CpuTier::portable) continue;
    if (cpu_has(t))
      tiers.push_back(t);
    else
      WARN("this CPU has no " << cpu_tier_name(t) << " tier: its kernels are not checked here");
  }
  return tiers;
}

// Every tier this CPU has, portable first.
inline std::vector<CpuTier> all_tiers_here() {
  std::vector<CpuTier> tiers{CpuTier::portable};
  for (CpuTier t : simd_tiers_here()) tiers.push_back(t);
  return tiers;
}

// Runs the kernels at tier t until it goes out of scope, then restores the tier before.
class TierScope {
 public:
  explicit TierScope(CpuTier t) : before_(cpu_tier()) { set_cpu_tier(t); }
  ~TierScope() { set_cpu_tier(before_); }
  TierScope(const TierScope&) = delete;
  TierScope& operator=(const TierScope&) = delete;

 private:
  CpuTier before_;
};

}  // namespace sparq::test
