// The one op the avx512bf16 tier has an instruction of its own for: f32 to
// bf16 (the others are ops_simd.cpp's avx512 build).
#include <immintrin.h>

#include "sparq/kernels/avx512bf16_lanes.h"
#include "sparq/kernels/ops.h"

namespace sparq::avx512bf16 {

// Rounds as f32_to_bf16, but subnormal inputs become +-0.
void to_bf16(uint16_t* out, const float* x, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(out + i, (__m512i)v);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : first16(int(n - i));
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)v);
  }
}

}  // namespace sparq::avx512bf16
