// The streaming read of the bandwidth probes at the avx2 and avx512 tiers
// (avx512bf16 runs the avx512 build: it needs nothing more).
#include "sparq/kernels/bandwidth.h"
#include "sparq/kernels/simd.h"

namespace sparq::SPARQ_TIER_NS {

// Four independent accumulators, and a software prefetch ahead of the loads:
// on this kind of machine the hardware prefetchers alone leave bandwidth unused.
uint64_t read_checksum(const void* p, size_t n) {
  constexpr size_t kVec = sizeof(VI);
  const auto* b = static_cast<const char*>(p);
#if SPARQ_SIMD_512
  auto x = [](VI a, VI c) { return _mm512_xor_si512(a, c); };
  auto ld = [](const char* q) { return _mm512_load_si512(q); };
#else
  auto x = [](VI a, VI c) { return _mm256_xor_si256(a, c); };
  auto ld = [](const char* q) { return _mm256_load_si256(reinterpret_cast<const VI*>(q)); };
#endif
  VI a0 = set1_i(0), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n; i += 4 * kVec) {
    for (size_t j = 0; j < 4 * kVec; j += 64)
      if (i + j + kReadAhead < n) _mm_prefetch(b + i + j + kReadAhead, _MM_HINT_T1);
    a0 = x(a0, ld(b + i));
    a1 = x(a1, ld(b + i + kVec));
    a2 = x(a2, ld(b + i + 2 * kVec));
    a3 = x(a3, ld(b + i + 3 * kVec));
  }
  uint64_t lanes[kVec / 8];
  const VI all = x(x(a0, a1), x(a2, a3));
  std::memcpy(lanes, &all, kVec);
  uint64_t r = 0;
  for (uint64_t v : lanes) r ^= v;
  return r;
}

}  // namespace sparq::SPARQ_TIER_NS
