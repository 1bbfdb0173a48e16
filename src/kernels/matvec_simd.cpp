// matvec.h's bf16 kernel at the avx2 and avx512 tiers, which have no
// vdpbf16ps: each load of a step's weights (kLanes output rows x one pair of
// K) is widened to f32 in two ops, as a bf16 is the top half of an f32 (the
// pair's even element by a shift, the odd one by a mask), and multiplied into
// the rows' sums by FMA against broadcast f32 activations. Each pair adds its
// odd product first, then the even one, each FMA rounding once: as the
// reference (products of bf16 are exact in f32), which this matches to the
// bit but where the reference flushes subnormals to zero (or a product
// overflows f32 where the sum would not).
//
// The activations are widened to f32 once per chunk of a block (a stack
// buffer), so each broadcast is a plain load (AVX-512: folded into the FMA).
// Up to four rows of x share each load of the weights. AVX2's 16 registers
// hold a whole block's 8 sums for one row only, so with more rows (or more
// than four) the weights are gone over several times: in passes over 2 KiB
// of a block, which stay in L1, the first pass prefetching into L1 8 KiB
// ahead of its loads. DRAM so sees each weight once, as a steady stream
// (passes over whole L2-sized chunks left it idle but in the first: on one
// Zen 5 core, AVX2, M = 2 went from 80% of the read bandwidth to 93%, M = 4
// from 56% to 74%). The sums wait on the
// stack between passes, as exact f32, and every row adds its products in the
// same order whatever M is: a sequence's result does not depend on its
// neighbours in a batch. Loops over registers are unrolled by pragma so the
// sums stay in registers.
#include <algorithm>
#include <cstring>

#include "sparq/kernels/matvec.h"
#include "sparq/kernels/matvec_quant.h"
#include "sparq/kernels/simd.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

constexpr int kStep = 2 * kMatvecBlock;       // bf16 elements per step (256 bytes)
constexpr int kRegs = kMatvecBlock / kLanes;  // registers per row of x for a whole block: 8 or 4
constexpr int kChunkSteps = 256;              // steps whose activations are widened at a time
constexpr int kPassSteps = 8;                 // steps of a pass when there are several (2 KiB)
constexpr int kAhead = 32;                    // prefetch distance in steps (8 KiB)
constexpr int kMaxRows = 4;                   // rows of x per pass over the weights
constexpr int kGroupRows = 16;                // rows whose sums and activations the stack holds

// Registers of output rows a pass takes for R rows of x: R * C sums, the
// even and odd weights and a broadcast fit in AVX2's 16 (AVX-512: all four).
constexpr int cols_for(int R) { return SPARQ_SIMD_512 ? kRegs : R == 1 ? 8 : R == 2 ? 4 : 2; }

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
// `steps` steps at w, output registers [c0, c0 + C) of the block, adding to
// the sums in acc (row stride kMatvecBlock).
template <int R, int C>
void tile(const uint16_t* w, int steps, const float* xf, size_t ldx, float* acc_rows, int c0, bool prefetch) {
  VF acc[R][C];
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) acc[r][j] = load(acc_rows + r * kMatvecBlock + kLanes * (c0 + j));
  for (int p = 0; p < steps; ++p) {
    const uint16_t* ws = w + size_t(p) * kStep;
    if (prefetch) {
      const char* ahead = reinterpret_cast<const char*>(ws + kAhead * kStep);
#pragma GCC unroll 4
      for (int l = 0; l < 4; ++l) _mm_prefetch(ahead + 64 * l, _MM_HINT_T0);
    }
    // Registers: the R * C sums and either each row's two broadcasts
    // (weights widened register by register) or all the widened weights
    // (broadcasts row by row), whichever is fewer.
    if constexpr (C >= R) {
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
    } else {
      VF even[C], odd[C];
#pragma GCC unroll 8
      for (int j = 0; j < C; ++j) widen_pairs(ws + 2 * kLanes * (c0 + j), even[j], odd[j]);
#pragma GCC unroll 4
      for (int r = 0; r < R; ++r) {
        const VF xo = set1(xf[r * ldx + 2 * p + 1]), xe = set1(xf[r * ldx + 2 * p]);
#pragma GCC unroll 8
        for (int j = 0; j < C; ++j) acc[r][j] = fmadd(even[j], xe, fmadd(odd[j], xo, acc[r][j]));
      }
    }
  }
#pragma GCC unroll 8
  for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
    for (int j = 0; j < C; ++j) store(acc_rows + r * kMatvecBlock + kLanes * (c0 + j), acc[r][j]);
}

// The block's first `regs` output registers, in passes of cols_for(R); the
// first pass prefetches (the others read what it brought in).
template <int R>
void passes(const uint16_t* w, int steps, const float* xf, size_t ldx, float* acc, int regs, bool prefetch) {
  constexpr int C = cols_for(R);
  for (int c0 = 0; c0 < regs; c0 += C) tile<R, C>(w, steps, xf, ldx, acc, c0, prefetch && c0 == 0);
}

void rows(int R, const uint16_t* w, int steps, const float* xf, size_t ldx, float* acc, int regs, bool prefetch) {
  switch (R) {
    case 1: return passes<1>(w, steps, xf, ldx, acc, regs, prefetch);
    case 2: return passes<2>(w, steps, xf, ldx, acc, regs, prefetch);
    case 3: return passes<3>(w, steps, xf, ldx, acc, regs, prefetch);
    default: return passes<4>(w, steps, xf, ldx, acc, regs, prefetch);
  }
}

}  // namespace

void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1) {
  const int steps = W.kp / 2;  // a multiple of 16, so a chunk's 2n values are whole registers
  constexpr size_t ldx = 2 * kChunkSteps;
  alignas(64) float xf[kGroupRows * ldx];
  alignas(64) float acc[kGroupRows * kMatvecBlock];
  for (int b = b0; b < b1; ++b) {
    const uint16_t* wb = W.w + size_t(b) * W.block_elems();
    const int n0 = b * kMatvecBlock, cols = std::min(kMatvecBlock, W.N - n0);
    const int regs = (cols + kLanes - 1) / kLanes;  // registers holding columns below N
    // More than 16 rows go 16 at a time over the whole block: compute, not
    // DRAM, bounds them.
    for (int g0 = 0; g0 < M; g0 += kGroupRows) {
      const int G = std::min(kGroupRows, M - g0);
      const bool one_pass = G <= kMaxRows && cols_for(G) >= regs;
      std::fill(acc, acc + size_t(G) * kMatvecBlock, 0.0f);
      for (int p0 = 0; p0 < steps; p0 += kChunkSteps) {
        const int n = std::min(kChunkSteps, steps - p0);
        for (int r = 0; r < G; ++r) {
          const uint16_t* xr = x + size_t(g0 + r) * W.kp + 2 * size_t(p0);
          for (int i = 0; i < 2 * n; i += kLanes) store(xf + r * ldx + i, load_bf16(xr + i));
        }
        const int run = one_pass ? n : kPassSteps;
        for (int s0 = 0; s0 < n; s0 += run)
          for (int m0 = 0; m0 < G; m0 += kMaxRows)
            rows(std::min(kMaxRows, G - m0), wb + size_t(p0 + s0) * kStep, std::min(run, n - s0),
                 xf + m0 * ldx + 2 * s0, ldx, acc + m0 * kMatvecBlock, regs, m0 == 0);
      }
      for (int r = 0; r < G; ++r)
        std::memcpy(y + size_t(g0 + r) * ldy + n0, acc + r * kMatvecBlock, size_t(cols) * sizeof(float));
    }
  }
}

// matvec_quant_simd.cpp's.
void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1);
void quantize_blocks(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off);
void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out);

extern const MatvecKernels kMatvec = {matvec_bf16, matvec_quant, quantize_blocks, dequantize_bf16};

}  // namespace sparq::SPARQ_TIER_NS
