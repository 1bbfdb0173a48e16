// Decode's matrix products, y[M][N] = x[M][K] . W[N][K]^T for a few rows M,
// on bf16 weights. Decode reads every weight once per token, so these are
// written to stream them at the read bandwidth: one pass over the weights
// serves all M rows (a batch of sequences).
//
// The weights sit in oneDNN's BA16a64b2a layout of the K x N matrix, the one
// its bf16 matmul picks for every M on AVX-512 and AMX, so prompt processing
// (oneDNN) and decode (these kernels) share one copy: blocks of 64 output
// rows, each block a contiguous run of Kp/2 steps of 64 x 2 bf16, where step
// p holds W[n][2p] and W[n][2p+1] for the block's 64 rows n; Kp is K rounded
// up to 32 and N is padded to 64, with zeros. Each step is what vdpbf16ps
// multiplies with one broadcast pair of x.
//
// Each op has a plain scalar reference (namespace ref, matvec_ref.cpp) and a
// version per CPU tier (matvec_kernels); matvec:: picks the current tier's at
// run time.
#pragma once
#include <cstddef>
#include <cstdint>

#include "sparq/util/cpu.h"

namespace sparq {

struct PackedQuant;  // matvec_quant.h
struct QuantRows;

inline constexpr int kMatvecBlock = 64;  // output rows per weight block
inline constexpr int kMatvecKAlign = 32;  // K is padded to whole blocks of 16 pairs

struct PackedBf16 {
  const uint16_t* w = nullptr;  // blocks() * kp * 64 bf16
  int N = 0, K = 0, kp = 0;     // kp: K rounded up to kMatvecKAlign
  int blocks() const { return (N + kMatvecBlock - 1) / kMatvecBlock; }
  size_t block_elems() const { return size_t(kp) * kMatvecBlock; }
};

inline int matvec_kp(int K) { return (K + kMatvecKAlign - 1) / kMatvecKAlign * kMatvecKAlign; }

// Index of W[n][k] in the packed layout.
inline size_t packed_index(int kp, int n, int k) {
  return size_t(n / kMatvecBlock) * size_t(kp) * kMatvecBlock + size_t(k / 2) * (2 * kMatvecBlock) +
         size_t(n % kMatvecBlock) * 2 + size_t(k % 2);
}

// Blocks [b0, b1) of W against M rows of x: x is [M][kp] bf16 with zeros past
// K, y is [M][ldy] f32 and gets columns [64 b0, min(64 b1, N)). Sums are f32,
// products of bf16 exact.
namespace ref {
void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1);
}
namespace avx512bf16 {
void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1);
}
namespace matvec {
void matvec_bf16(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1);
}

// One tier's kernels of this file and matvec_quant.h: ref's (the portable
// tier); for avx2 and avx512 the ones written once over kernels/simd.h
// (matvec_simd.cpp, matvec_quant_simd.cpp), bf16 by widening to f32 and the
// quantized ones by vpmaddubsw; avx512bf16's hand-written with vdpbf16ps and
// vpdpbusd (matvec_avx512bf16.cpp, matvec_quant_avx512bf16.cpp).
// matvec_bf16 of avx2 and avx512 equals ref's to the bit but where ref
// flushes subnormals (or a product overflows); every other kernel equals
// ref's to the bit at every tier.
struct MatvecKernels {
  void (*matvec_bf16)(const PackedBf16& W, const uint16_t* x, int M, float* y, size_t ldy, int b0, int b1);
  void (*matvec_quant)(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1);
  void (*quantize_blocks)(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off);
  void (*dequantize_bf16)(const PackedQuant& W, int b0, int b1, uint16_t* out);
};
const MatvecKernels& matvec_kernels(CpuTier t);

}  // namespace sparq
