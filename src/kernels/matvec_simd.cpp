// matvec.h's bf16 kernel at the avx2 and avx512 tiers, which have no
// vdpbf16ps: each load of a step's weights (kLanes output rows x one pair of
// K) is widened to f32 in two ops, as a bf16 is the top half of an f32 (the
// pair's even element by a shift, the odd one by a mask), and multiplied into
// the rows' sums by FMA against broadcast f32 activations. Each pair adds its
// odd product first, then the even one, each FMA rounding once: as the
// reference (products of bf16 are exact in f32), which this matches to the
// bit but where the reference flushes subnormals to zero.
//
// The activations are widened to f32 once per chunk of a block (a stack
// buffer), so each broadcast is a plain load (AVX-512: folded into the FMA).
// Up to four rows of x share each load of the weights; a block is taken in
// chunks small enough to stay in L2, the first row group's pass prefetching
// into L2 ahead of its loads, so DRAM sees each weight once whatever M is.
// AVX2's 16 registers hold a whole block's 8 sums for one row only: with
// more rows a chunk is gone over in passes of fewer columns (out of L2).
// Every row sums its products in the same order whatever M is (a chunk's
// sums leave and re-enter through y as exact f32), so a sequence's result
// does not depend on its neighbours in a batch. Loops over registers are
// unrolled by pragma so the sums stay in registers.
#include <algorithm>

#include "sparq/kernels/matvec.h"
#include "sparq/kernels/matvec_quant.h"
#include "sparq/kernels/simd.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

constexpr int kStep = 2 * kMatvecBlock;       // bf16 elements per step (256 bytes)
constexpr int kRegs = kMatvecBlock / kLanes;  // registers per row of x for a whole block: 8 or 4
// Steps of a block per chunk (64 KiB: stays in L2 while each row group and
// pass reads it) and L2 prefetch distance in steps (4 KiB ahead).
constexpr int kChunkSteps = 256;
constexpr int kAhead = 16;
constexpr int kMaxRows = 4;  // rows of x per pass over the weights

// Registers of output rows a pass takes for R rows of x: R * C sums, the
// even and odd weights and a broadcast fit in AVX2's 16 (AVX-512: all four).
template <int R>
constexpr int kCols = SPARQ_SIMD_512 ? kRegs : R == 1 ? 8 : R == 2 ? 4 : 2;

// kLanes pairs (W[n][2p], W[n][2p+1]) of consecutive rows n, as f32.
inline void widen_pairs(const uint16_t* p, VF& even, VF& odd) {
#if SPARQ_SIMD_512
  const VI v = _mm512_loadu_si512(p);
  even = as_float(_mm512_slli_epi32(v, 16));
#else
  const VI v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  even = as_float(_mm256_slli_epi32(v, 16));
#endif
  odd = as_float(and_i(v, set1_i(int(0xffff0000u))));
}

// Rows [0, R) of xf (f32, row stride ldx, from the run's first step) against
// `steps` steps at w, output registers [c0, c0 + C) of the block; y: the
// block's first column of row 0, cols of its columns valid. acc_in: add to
// what y holds (chunks after the first).
template <int R, int C>
void tile(const uint16_t* w, int steps, const float* xf, size_t ldx, float* y, size_t ldy, int cols, int c0,
          bool acc_in, bool prefetch) {
  VF acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) {
      const int c = kLanes * (c0 + j);
      acc[r][j] = acc_in ? load_first(y + r * ldy + c, cols - c) : zero();
    }
  for (int p = 0; p < steps; ++p) {
    const uint16_t* ws = w + size_t(p) * kStep;
    if (prefetch) {
      const char* ahead = reinterpret_cast<const char*>(ws + kAhead * kStep);
#pragma GCC unroll 4
      for (int l = 0; l < 4; ++l) _mm_prefetch(ahead + 64 * l, _MM_HINT_T1);
    }
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) {
      VF even, odd;
      widen_pairs(ws + 2 * kLanes * (c0 + j), even, odd);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        acc[r][j] = fmadd(odd, set1(xf[r * ldx + 2 * p + 1]), acc[r][j]);
        acc[r][j] = fmadd(even, set1(xf[r * ldx + 2 * p]), acc[r][j]);
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) {
      const int c = kLanes * (c0 + j);
      store_first(y + r * ldy + c, acc[r][j], cols - c);
    }
}

// All the block's columns, in passes of kCols<R> registers; the first pass
// prefetches (the others read what it brought into L2).
template <int R>
void passes(const uint16_t* w, int steps, const float* xf, size_t ldx, float* y, size_t ldy, int cols, bool acc_in,
            bool prefetch) {
  constexpr int C = kCols<R>;
  for (int c0 = 0; c0 < kRegs && kLanes * c0 < cols; c0 += C)
    tile<R, C>(w, steps, xf, ldx, y, ldy, cols, c0, acc_in, prefetch && c0 == 0);
}

void rows(int R, const uint16_t* w, int steps, const float* xf, size_t ldx, float* y, size_t ldy, int cols,
          bool acc_in, bool prefetch) {
  switch (R) {
    case 1: return passes<1>(w, steps, xf, ldx, y, ldy, cols, acc_in, prefetch);
    case 2: return passes<2>(w, steps, xf, ldx, y, ldy, cols, acc_in, prefetch);
    case 3: return passes<3>(w, steps, xf, ldx, y, ldy, cols, acc_in, prefetch);
    default: return passes<4>(w, steps, xf, ldx, y, ldy, cols, acc_in, prefetch);
  }
}

}  // namespace

void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1) {
  const int steps = W.kp / 2;  // a multiple of 16, so a chunk's 2n values are whole registers
  constexpr size_t ldx = 2 * kChunkSteps;
  alignas(64) float xf[kMaxRows * ldx];
  for (int b = b0; b < b1; ++b) {
    const uint16_t* wb = W.w + size_t(b) * W.block_elems();
    const int n0 = b * kMatvecBlock, cols = std::min(kMatvecBlock, W.N - n0);
    for (int p0 = 0; p0 < steps; p0 += kChunkSteps) {
      const int n = std::min(kChunkSteps, steps - p0);
      for (int m0 = 0; m0 < M; m0 += kMaxRows) {
        const int R = std::min(kMaxRows, M - m0);
        for (int r = 0; r < R; ++r) {
          const uint16_t* xr = x + size_t(m0 + r) * W.kp + 2 * size_t(p0);
          for (int i = 0; i < 2 * n; i += kLanes) store(xf + r * ldx + i, load_bf16(xr + i));
        }
        rows(R, wb + size_t(p0) * kStep, n, xf, ldx, y + size_t(m0) * ldy + n0, ldy, cols, p0 > 0, m0 == 0);
      }
    }
  }
}

// matvec_quant_simd.cpp's.
void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1);
void quantize_blocks(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off);

// Tiles of bf16 for oneDNN are the avx512bf16 tier's alone (below it, prompt
// tiles are f32), so the reference serves here.
extern const MatvecKernels kMatvec = {matvec_bf16, matvec_quant, quantize_blocks, ref::dequantize_bf16};

}  // namespace sparq::SPARQ_TIER_NS
