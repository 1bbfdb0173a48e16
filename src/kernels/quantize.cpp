// q8_0 / q4_0 quantization of weights into matvec_quant.h's layout, and of
// activations per block, both with llama.cpp's rounding rules.
#include <algorithm>
#include <cmath>
#include <cstring>

#include "sparq/kernels/matvec_quant.h"
#include "sparq/util/common.h"
#include "sparq/util/cpu.h"

namespace sparq {
namespace {

// Where quant k (0..31) of row r (0..63) sits in a record, and whether it is
// the byte's high nibble (q4_0).
size_t quant_place(QuantFormat f, int r, int k, bool& high) {
  const size_t set = size_t(r / 16), lane = size_t(r % 16) * 4;
  if (f == QuantFormat::Q8_0) {
    high = false;
    return 2 * kMatvecBlock + set * 512 + size_t(k / 4) * 64 + lane + size_t(k % 4);
  }
  high = k >= 16;
  const int kk = k % 16;
  return 2 * kMatvecBlock + set * 256 + size_t(kk / 4) * 64 + lane + size_t(kk % 4);
}

// One block of 32 weights: its f16 scale and quants, offset to unsigned.
uint16_t quantize_block(QuantFormat f, const float* w, uint8_t* u) {
  if (f == QuantFormat::Q8_0) {
    float amax = 0;
    for (int k = 0; k < kQuantBlock; ++k) amax = std::max(amax, std::fabs(w[k]));
    const float d = amax / 127, id = d != 0 ? 1 / d : 0;
    for (int k = 0; k < kQuantBlock; ++k) u[k] = uint8_t(int(std::round(w[k] * id)) + 128);
    return f32_to_f16(d);
  }
  float amax = 0, max = 0;  // max: the weight of largest magnitude, with its sign
  for (int k = 0; k < kQuantBlock; ++k)
    if (amax < std::fabs(w[k])) {
      amax = std::fabs(w[k]);
      max = w[k];
    }
  const float d = max / -8, id = d != 0 ? 1 / d : 0;
  for (int k = 0; k < kQuantBlock; ++k) u[k] = uint8_t(std::min(15, int(int8_t(w[k] * id + 8.5f))));
  return f32_to_f16(d);
}

}  // namespace

void quantize_weights(const float* w, int n0, int n1, const PackedQuant& W, uint8_t* out) {
  if (n0 % kMatvecBlock != 0 || n0 < 0 || n1 > W.N || n0 > n1 || W.K % kQuantBlock != 0)
    fail("quantize_weights: rows [{}, {}) of {} x {}", n0, n1, W.N, W.K);
  const size_t rec = quant_record_bytes(W.format);
  uint8_t u[kQuantBlock];
  for (int n = n0; n < n1; ++n) {
    const int r = n % kMatvecBlock;
    uint8_t* group = out + size_t(n / kMatvecBlock) * W.group_bytes();
    for (int kb = 0; kb < W.kblocks(); ++kb) {
      uint8_t* record = group + size_t(kb) * rec;
      const float* wb = w + size_t(n - n0) * W.K + size_t(kb) * kQuantBlock;
      for (int k = 0; k < kQuantBlock; ++k)
        if (!std::isfinite(wb[k])) fail("weight [{}][{}] is {}: it cannot be quantized", n, kb * kQuantBlock + k, wb[k]);
      const uint16_t d = quantize_block(W.format, wb, u);
      if ((d & 0x7c00u) == 0x7c00u) fail("weights [{}][{}..{}] are too large for an f16 scale", n, kb * kQuantBlock, (kb + 1) * kQuantBlock - 1);
      std::memcpy(record + 2 * r, &d, 2);
      for (int k = 0; k < kQuantBlock; ++k) {
        bool high = false;
        uint8_t& byte = record[quant_place(W.format, r, k, high)];
        byte = W.format == QuantFormat::Q8_0 ? u[k] : uint8_t(high ? (byte & 0x0f) | (u[k] << 4) : (byte & 0xf0) | u[k]);
      }
    }
  }
}

int stored_quant(const PackedQuant& W, int n, int k) {
  bool high = false;
  const uint8_t* record = W.w + size_t(n / kMatvecBlock) * W.group_bytes() + size_t(k / kQuantBlock) * quant_record_bytes(W.format);
  const uint8_t byte = record[quant_place(W.format, n % kMatvecBlock, k % kQuantBlock, high)];
  return W.format == QuantFormat::Q8_0 ? byte : high ? byte >> 4 : byte & 0x0f;
}

float stored_scale(const PackedQuant& W, int n, int kb) {
  const uint8_t* record = W.w + size_t(n / kMatvecBlock) * W.group_bytes() + size_t(kb) * quant_record_bytes(W.format);
  uint16_t d;
  std::memcpy(&d, record + 2 * (n % kMatvecBlock), 2);
  return f16_to_f32(d);
}

void dequantize_row(const PackedQuant& W, int n, float* out) {
  const int off = quant_offset(W.format);
  for (int kb = 0; kb < W.kblocks(); ++kb) {
    const float d = stored_scale(W, n, kb);
    for (int k = kb * kQuantBlock; k < (kb + 1) * kQuantBlock; ++k) out[k] = d * float(stored_quant(W, n, k) - off);
  }
}

void quantize_rows(const float* x, int M, int K, QuantFormat weights, QuantRows& out) {
  if (K % kQuantBlock != 0) fail("quantize_rows: K = {} is not a multiple of {}", K, kQuantBlock);
  const size_t blocks = size_t(M) * (K / kQuantBlock);
  out.M = M;
  out.K = K;
  out.q.resize(size_t(M) * K);
  out.d.resize(blocks);
  out.off.resize(blocks);
  matvec_kernels(cpu_tier()).quantize_blocks(x, blocks, quant_offset(weights), out.q.data(), out.d.data(),
                                              out.off.data());
}

// q8_0's rounding with an f32 scale; round to nearest even, as vcvtps2dq.
void ref::quantize_blocks(const float* x, size_t n, int offset, int8_t* q, float* d, int32_t* off) {
  for (size_t b = 0; b < n; ++b) {
    const float* xb = x + b * kQuantBlock;
    int8_t* qb = q + b * kQuantBlock;
    float amax = 0;
    bool finite = true;
    for (int k = 0; k < kQuantBlock; ++k) {
      amax = std::max(amax, std::fabs(xb[k]));
      finite = finite && std::isfinite(xb[k]);
    }
    const float db = amax / 127, id = db != 0 ? 1 / db : 0;
    // Quants 0, and a scale of NaN for a non-finite block (its products NaN,
    // as in f32) or 0 for one of subnormals only (1 / d overflows).
    if (!finite || !std::isfinite(id)) {
      std::fill(qb, qb + kQuantBlock, int8_t(0));
      d[b] = finite ? 0.0f : NAN;
      off[b] = 0;
      continue;
    }
    int sum = 0;
    for (int k = 0; k < kQuantBlock; ++k) {
      qb[k] = int8_t(std::nearbyint(xb[k] * id));
      sum += qb[k];
    }
    d[b] = db;
    off[b] = offset * sum;
  }
}

}  // namespace sparq
