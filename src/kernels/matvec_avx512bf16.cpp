// vdpbf16ps against the packed weights (matvec.h): a step of a block is four
// registers of 16 output rows x one pair of K; each row of x contributes one
// broadcast pair, multiplied into all four. Up to four rows of x share each
// load of the weights; more rows go four at a time over chunks of a block
// small enough to stay in L2, so DRAM still sees each weight once. Every row
// sums its products in the same order whatever M is (a chunk's sums leave and
// re-enter as exact f32), so a sequence's result does not depend on its
// neighbours in a batch. Four accumulator chains per row are enough: at one
// row they take 256 bytes of weights per vdpbf16ps latency, several times
// what one core's share of DRAM delivers. The loops over registers are
// unrolled by pragma: GCC -O2 otherwise keeps acc[][] in memory.
#include <immintrin.h>

#include <algorithm>
#include <cstring>

#include "sparq/kernels/avx512bf16_lanes.h"
#include "sparq/kernels/matvec.h"

namespace sparq::avx512bf16 {
namespace {

constexpr int kStep = 2 * kMatvecBlock;  // bf16 elements per step (256 bytes)
// Steps of a block per chunk when more than four rows share it: 64 KiB.
constexpr int kChunkSteps = 256;
// Prefetch distance into L2, in steps: 16 steps = 4 KiB ahead of the loads.
constexpr int kAhead = 16;

// Rows [0, R) of x (row stride ldx, starting at step 0 of this run of steps)
// against `steps` steps of weights w. y: the block's first column of row 0;
// acc_in: add to what y holds (chunks after the first).
template <int R>
void tile(const uint16_t* w, int steps, const uint16_t* x, size_t ldx, float* y, size_t ldy, const __mmask16* mask,
          bool acc_in) {
  __m512 acc[R][4];
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j)
      acc[r][j] = acc_in ? _mm512_maskz_loadu_ps(mask[j], y + r * ldy + 16 * j) : _mm512_setzero_ps();
  for (int p = 0; p < steps; ++p) {
    const uint16_t* ws = w + size_t(p) * kStep;
    const char* ahead = reinterpret_cast<const char*>(ws + kAhead * kStep);
    #pragma GCC unroll 8
    for (int j = 0; j < 4; ++j) _mm_prefetch(ahead + 64 * j, _MM_HINT_T1);
    __m512bh wv[4];
    #pragma GCC unroll 8
    for (int j = 0; j < 4; ++j) wv[j] = __m512bh(_mm512_loadu_si512(ws + 32 * j));
    #pragma GCC unroll 8
    for (int r = 0; r < R; ++r) {
      int32_t pair;  // two bf16 of x; rows need no alignment
      std::memcpy(&pair, x + r * ldx + 2 * size_t(p), sizeof pair);
      const __m512bh xb = __m512bh(_mm512_set1_epi32(pair));
      #pragma GCC unroll 8
      for (int j = 0; j < 4; ++j) acc[r][j] = _mm512_dpbf16_ps(acc[r][j], wv[j], xb);
    }
  }
  for (int r = 0; r < R; ++r)
    for (int j = 0; j < 4; ++j) _mm512_mask_storeu_ps(y + r * ldy + 16 * j, mask[j], acc[r][j]);
}

void rows(int R, const uint16_t* w, int steps, const uint16_t* x, size_t ldx, float* y, size_t ldy,
          const __mmask16* mask, bool acc_in) {
  switch (R) {
    case 1: return tile<1>(w, steps, x, ldx, y, ldy, mask, acc_in);
    case 2: return tile<2>(w, steps, x, ldx, y, ldy, mask, acc_in);
    case 3: return tile<3>(w, steps, x, ldx, y, ldy, mask, acc_in);
    default: return tile<4>(w, steps, x, ldx, y, ldy, mask, acc_in);
  }
}

}  // namespace

void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1) {
  const int steps = W.kp / 2;
  for (int b = b0; b < b1; ++b) {
    const uint16_t* wb = W.w + size_t(b) * W.block_elems();
    const int n0 = b * kMatvecBlock, cols = std::min(kMatvecBlock, W.N - n0);
    __mmask16 mask[4];
    for (int j = 0; j < 4; ++j) mask[j] = first16(cols - 16 * j);
    if (M <= 4) {
      rows(M, wb, steps, x, size_t(W.kp), y + n0, ldy, mask, false);
      continue;
    }
    for (int p0 = 0; p0 < steps; p0 += kChunkSteps) {
      const int n = std::min(kChunkSteps, steps - p0);
      for (int m0 = 0; m0 < M; m0 += 4)
        rows(std::min(4, M - m0), wb + size_t(p0) * kStep, n, x + size_t(m0) * W.kp + 2 * size_t(p0), size_t(W.kp),
             y + size_t(m0) * ldy + n0, ldy, mask, p0 > 0);
    }
  }
}

}  // namespace sparq::avx512bf16
