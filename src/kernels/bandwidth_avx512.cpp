#include <immintrin.h>

#include "sparq/kernels/bandwidth.h"

namespace sparq::avx512 {

// Four independent accumulators, and a software prefetch ahead of the loads:
// on this kind of machine the hardware prefetchers alone leave bandwidth unused.
uint64_t read_checksum(const void* p, size_t n) {
  const auto* b = static_cast<const __m512i*>(p);
  __m512i a0 = _mm512_setzero_si512(), a1 = a0, a2 = a0, a3 = a0;
  for (size_t i = 0; i < n / 64; i += 4) {
    for (size_t j = 0; j < 4; ++j)
      if (i + j + kReadAhead / 64 < n / 64) _mm_prefetch(reinterpret_cast<const char*>(b + i + j) + kReadAhead, _MM_HINT_T1);
    a0 = _mm512_xor_si512(a0, _mm512_load_si512(b + i));
    a1 = _mm512_xor_si512(a1, _mm512_load_si512(b + i + 1));
    a2 = _mm512_xor_si512(a2, _mm512_load_si512(b + i + 2));
    a3 = _mm512_xor_si512(a3, _mm512_load_si512(b + i + 3));
  }
  alignas(64) uint64_t lanes[8];
  _mm512_store_si512(lanes, _mm512_xor_si512(_mm512_xor_si512(a0, a1), _mm512_xor_si512(a2, a3)));
  uint64_t x = 0;
  for (uint64_t v : lanes) x ^= v;
  return x;
}

}  // namespace sparq::avx512
