// widen_block at the avx2 and avx512 tiers: 8 steps of 8 rows' pairs
// transposed as an 8 x 8 block of 32-bit pairs, then each row's pairs split
// into its even and odd elements and put back in order. 256-bit code in both
// builds: the shuffles are the work, and wider ones would need more of them.
#include "sparq/kernels/simd.h"
#include "sparq/kernels/widen.h"

#include <algorithm>

#include "sparq/util/common.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

void transpose8(__m256 r[8]) {
  const __m256 t0 = _mm256_unpacklo_ps(r[0], r[1]), t1 = _mm256_unpackhi_ps(r[0], r[1]);
  const __m256 t2 = _mm256_unpacklo_ps(r[2], r[3]), t3 = _mm256_unpackhi_ps(r[2], r[3]);
  const __m256 t4 = _mm256_unpacklo_ps(r[4], r[5]), t5 = _mm256_unpackhi_ps(r[4], r[5]);
  const __m256 t6 = _mm256_unpacklo_ps(r[6], r[7]), t7 = _mm256_unpackhi_ps(r[6], r[7]);
  const __m256 u0 = _mm256_shuffle_ps(t0, t2, 0x44), u1 = _mm256_shuffle_ps(t0, t2, 0xee);
  const __m256 u2 = _mm256_shuffle_ps(t1, t3, 0x44), u3 = _mm256_shuffle_ps(t1, t3, 0xee);
  const __m256 u4 = _mm256_shuffle_ps(t4, t6, 0x44), u5 = _mm256_shuffle_ps(t4, t6, 0xee);
  const __m256 u6 = _mm256_shuffle_ps(t5, t7, 0x44), u7 = _mm256_shuffle_ps(t5, t7, 0xee);
  r[0] = _mm256_permute2f128_ps(u0, u4, 0x20);
  r[1] = _mm256_permute2f128_ps(u1, u5, 0x20);
  r[2] = _mm256_permute2f128_ps(u2, u6, 0x20);
  r[3] = _mm256_permute2f128_ps(u3, u7, 0x20);
  r[4] = _mm256_permute2f128_ps(u0, u4, 0x31);
  r[5] = _mm256_permute2f128_ps(u1, u5, 0x31);
  r[6] = _mm256_permute2f128_ps(u2, u6, 0x31);
  r[7] = _mm256_permute2f128_ps(u3, u7, 0x31);
}

// 8 pairs (16 bf16, the low half of each pair first) as 16 f32 in order.
void store_pairs(float* out, __m256 pairs) {
  const __m256i x = _mm256_castps_si256(pairs);
  const __m256 even = _mm256_castsi256_ps(_mm256_slli_epi32(x, 16));
  const __m256 odd = _mm256_castsi256_ps(_mm256_and_si256(x, _mm256_set1_epi32(int(0xffff0000u))));
  const __m256 lo = _mm256_unpacklo_ps(even, odd), hi = _mm256_unpackhi_ps(even, odd);
  _mm256_storeu_ps(out, _mm256_permute2f128_ps(lo, hi, 0x20));
  _mm256_storeu_ps(out + 8, _mm256_permute2f128_ps(lo, hi, 0x31));
}

}  // namespace

void widen_block(const PackedBf16& W, int b, float* out) {
  const int rows = std::min(kMatvecBlock, W.N - b * kMatvecBlock), K = W.K;
  const uint16_t* w = W.w + size_t(b) * W.block_elems();
  const int k16 = rows == kMatvecBlock ? K / 16 * 16 : 0;  // whole 8 x 8 blocks; the rest as ref
  for (int k = 0; k < k16; k += 16)
    for (int n = 0; n < kMatvecBlock; n += 8) {
      __m256 r[8];
      for (int j = 0; j < 8; ++j)
        r[j] = _mm256_loadu_ps(reinterpret_cast<const float*>(w + size_t(k / 2 + j) * 2 * kMatvecBlock + 2 * n));
      transpose8(r);
      for (int i = 0; i < 8; ++i) store_pairs(out + size_t(n + i) * K + k, r[i]);
    }
  for (int k = k16; k < K; ++k)
    for (int n = 0; n < rows; ++n) out[size_t(n) * K + k] = bf16_to_f32(w[size_t(k / 2) * 2 * kMatvecBlock + 2 * n + k % 2]);
}

}  // namespace sparq::SPARQ_TIER_NS
