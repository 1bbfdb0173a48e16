// Quantized weights (llama.cpp's q8_0 and q4_0: blocks of 32 weights along K
// sharing one f16 scale d, w = d * q) and the decode products on them.
// Activations are quantized the same way, per block of 32, to int8 (q8_0 with
// an f32 scale), so a block's dot product is an exact integer sum, scaled once.
//
// Layout (a copy of llama.cpp's blocks rearranged to stream): output rows in
// groups of 64 as for bf16 (matvec.h), each group a contiguous run of K/32
// records, one per K block, of the group's 64 f16 scales followed by its 64 x
// 32 quants. Within a record, rows go in four sets of 16 (one per register
// lane), each set a run of 64-byte steps holding 4 consecutive quants of each
// of its 16 rows: what vpdpbusd multiplies with 4 broadcast activations.
// - q8_0: 8 steps per set, step g holds quants 4g..4g+3, stored as q + 128
//   (unsigned, 1..255) because vpdpbusd's weight operand is unsigned.
// - q4_0: 4 steps per set, step t's bytes hold quant 4t+e in their low nibble
//   and 16+4t+e in their high one, stored as q + 8 (llama.cpp's nibbles).
// The offset comes back out through the activations' block sums: sum(u*x) =
// sum(q*x) + offset*sum(x).
//
// Each kernel has a scalar reference (namespace ref) that every tier's
// (matvec_kernels, matvec.h) matches to the bit: integer sums are exact and
// each row's float sum over blocks is one fused multiply-add per block, in K
// order, in all.
#pragma once
#include <cstddef>
#include <cstdint>
#include <vector>

#include "sparq/kernels/matvec.h"

namespace sparq {

enum class QuantFormat { Q8_0, Q4_0 };

inline constexpr int kQuantBlock = 32;  // weights per scale

inline const char* quant_name(QuantFormat f) { return f == QuantFormat::Q8_0 ? "q8_0" : "q4_0"; }
inline int quant_offset(QuantFormat f) { return f == QuantFormat::Q8_0 ? 128 : 8; }
// Bytes of one record: 64 f16 scales and 64 x 32 quants.
constexpr size_t quant_record_bytes(QuantFormat f) {
  return 2 * kMatvecBlock + size_t(kMatvecBlock) * (f == QuantFormat::Q8_0 ? kQuantBlock : kQuantBlock / 2);
}

struct PackedQuant {
  const uint8_t* w = nullptr;
  QuantFormat format = QuantFormat::Q8_0;
  int N = 0, K = 0;  // K: a multiple of kQuantBlock
  int blocks() const { return (N + kMatvecBlock - 1) / kMatvecBlock; }
  int kblocks() const { return K / kQuantBlock; }
  size_t group_bytes() const { return size_t(kblocks()) * quant_record_bytes(format); }
  size_t bytes() const { return size_t(blocks()) * group_bytes(); }
};

// Quantizes rows [n0, n1) of w ([N][K] f32, row-major from row n0) into the
// layout, with llama.cpp's rounding (q8_0: d = max|w| / 127, q = round(w / d);
// q4_0: d = -m / 8 for m the weight of largest magnitude, q = min(15, (int)(w /
// d + 8.5)) - 8). out holds W.bytes(); rows past N of the last group must be
// zero already (they stay so). Whole groups of 64 rows at a time (n0 % 64 == 0).
void quantize_weights(const float* w, int n0, int n1, const PackedQuant& W, uint8_t* out);
// W's stored unsigned quant u = q + offset of row n, column k, and the scale d
// of row n's K block kb; dequantize_row gives d * (u - offset) for a whole row.
int stored_quant(const PackedQuant& W, int n, int k);
float stored_scale(const PackedQuant& W, int n, int kb);
void dequantize_row(const PackedQuant& W, int n, float* out);

// M rows of activations quantized per block of 32: q8_0's rounding, an f32
// scale, and each block's sum times the weights' offset (quant_offset).
struct QuantRows {
  int M = 0, K = 0;
  std::vector<int8_t> q;     // [M][K]
  std::vector<float> d;      // [M][K / 32]
  std::vector<int32_t> off;  // [M][K / 32]: offset * sum of the block's q
};
void quantize_rows(const float* x, int M, int K, QuantFormat weights, QuantRows& out);
// Its kernel: n blocks of 32 values of x into q, d and off (offset * sum of q).
namespace ref {
void quantize_blocks(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off);
}
namespace avx512bf16 {
void quantize_blocks(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off);
}

// y[M][ldy] gets columns [64 b0, min(64 b1, N)) of x . W^T, for row groups
// [b0, b1): per row and block, acc = fma(float(sum(u * q) - off), d_w * d_x, acc).
namespace ref {
void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1);
}
namespace avx512bf16 {
void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1);
}
namespace matvec {
void matvec_quant(const PackedQuant& W, const QuantRows& x, float* y, size_t ldy, int b0, int b1);
}

// Row groups [b0, b1) of W dequantized (d * q, rounded to nearest even) into
// bf16 in matvec.h's packed layout (kp = K), group b at out + (b - b0) * K * 64:
// the tiles prompt rows hand to oneDNN's bf16 matmul.
namespace ref {
void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out);
}
namespace avx512bf16 {
void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out);
}
namespace matvec {
void dequantize_bf16(const PackedQuant& W, int b0, int b1, uint16_t* out);
}

// dequantize_bf16's walk over the records, for kernels that write a record
// at a time: record(format, bytes, out, step_elems) writes the record's 64
// rows x kQuantBlock values at out, in steps of 2 * 64 bf16 elements.
template <class Record>
void for_each_record(const PackedQuant& W, int b0, int b1, uint16_t* out, Record&& record) {
  const size_t rec = quant_record_bytes(W.format), step = 2 * kMatvecBlock;
  for (int b = b0; b < b1; ++b)
    for (int kb = 0; kb < W.kblocks(); ++kb)
      record(W.format, W.w + size_t(b) * W.group_bytes() + size_t(kb) * rec,
             out + size_t(b - b0) * size_t(W.K) * kMatvecBlock + size_t(kb) * (kQuantBlock / 2) * step, step);
}

}  // namespace sparq
