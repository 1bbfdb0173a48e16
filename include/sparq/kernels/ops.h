// Element-wise and row-wise ops of the forward pass. Each op has a plain scalar
// reference (namespace ref, src/kernels/ops_ref.cpp) and a SIMD version per
// CPU tier (ops_kernels); the functions in namespace ops pick the current
// tier's at run time.
// Sizes n <= 0 are no-ops. rmsnorm and add accept out == x / y == x.
#pragma once
#include <cstddef>
#include <cstdint>

#include "sparq/util/cpu.h"

namespace sparq {

// Largest head size ops::rope handles (its cos/sin table lives on the stack).
inline constexpr int kMaxRopeHeadDim = 1024;

// RoPE angles of one position, as transformers computes them: the angle
// float(pos) * inv_freq[i] rounded to f32, then cos/sin of that f32 angle.
// cos_out and sin_out get half entries each. Shared by ref and avx512.
void rope_cos_sin(float* cos_out, float* sin_out, int half, int pos, const float* inv_freq);

namespace ref {
// HF LlamaRMSNorm: out = x * rsqrt(mean(x^2) + eps) * weight. The sum of
// squares and the scaling are done in double, so no finite input overflows.
void rmsnorm(float* out, const float* x, const float* weight, int n, float eps);
// In place RoPE with precomputed angles (rope_cos_sin, head_dim/2 entries),
// HuggingFace "rotate_half" convention: within each head of x, element i pairs
// with element i + head_dim/2. head_dim must be even (ops:: checks it).
void rope_apply(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t);
// Max-subtracted; -inf entries get 0, and a row of only -inf gives all zeros.
void softmax(float* x, int n);
void silu_mul(float* gate, const float* up, int n);  // gate = silu(gate) * up
void add(float* y, const float* x, int n);           // y += x
float dot(const float* a, const float* b, int n);
// f32 -> bf16, round to nearest even (as sparq::f32_to_bf16).
void to_bf16(uint16_t* out, const float* x, size_t n);
}  // namespace ref

// One tier's ops: ref's (the portable tier), and simd.h's written once for
// avx2 and avx512 (ops_simd.cpp); avx512bf16 takes avx512's but for to_bf16,
// which has an instruction there (and flushes subnormal inputs to +-0).
struct OpsKernels {
  void (*rmsnorm)(float* out, const float* x, const float* weight, int n, float eps);
  void (*rope_apply)(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t);
  void (*softmax)(float* x, int n);
  void (*silu_mul)(float* gate, const float* up, int n);
  void (*add)(float* y, const float* x, int n);
  float (*dot)(const float* a, const float* b, int n);
  void (*to_bf16)(uint16_t* out, const float* x, size_t n);
};
const OpsKernels& ops_kernels(CpuTier t);

namespace ops {
void rmsnorm(float* out, const float* x, const float* weight, int n, float eps);
// rope_cos_sin for pos, then rope_apply. Throws Error for an odd head_dim or
// one above kMaxRopeHeadDim. Callers rotating q and k at the same position
// can build the angles once and call rope_apply twice.
void rope(float* x, int n_heads, int head_dim, int pos, const float* inv_freq);
void rope_apply(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t);
void softmax(float* x, int n);
void silu_mul(float* gate, const float* up, int n);
void add(float* y, const float* x, int n);
float dot(const float* a, const float* b, int n);
void to_bf16(uint16_t* out, const float* x, size_t n);
}  // namespace ops

}  // namespace sparq
