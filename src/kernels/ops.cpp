// Run-time choice between the AVX-512 and the scalar ops: one relaxed atomic
// load per call.
#include "sparq/kernels/ops.h"

#include "sparq/util/common.h"
#include "sparq/util/cpu.h"

namespace sparq::ops {
namespace {

void check_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 2 != 0 || head_dim > kMaxRopeHeadDim)
    fail("RoPE needs an even head size between 2 and {}, got {}", kMaxRopeHeadDim, head_dim);
}

}  // namespace

void rmsnorm(float* out, const float* x, const float* weight, int n, float eps) {
  use_avx512() ? avx512::rmsnorm(out, x, weight, n, eps) : ref::rmsnorm(out, x, weight, n, eps);
}

void rope(float* x, int n_heads, int head_dim, int pos, const float* inv_freq) {
  check_head_dim(head_dim);
  float cos_t[kMaxRopeHeadDim / 2], sin_t[kMaxRopeHeadDim / 2];
  rope_cos_sin(cos_t, sin_t, head_dim / 2, pos, inv_freq);
  rope_apply(x, n_heads, head_dim, cos_t, sin_t);
}

void rope_apply(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t) {
  check_head_dim(head_dim);
  use_avx512() ? avx512::rope_apply(x, n_heads, head_dim, cos_t, sin_t)
               : ref::rope_apply(x, n_heads, head_dim, cos_t, sin_t);
}

void softmax(float* x, int n) { use_avx512() ? avx512::softmax(x, n) : ref::softmax(x, n); }

void silu_mul(float* gate, const float* up, int n) {
  use_avx512() ? avx512::silu_mul(gate, up, n) : ref::silu_mul(gate, up, n);
}

void add(float* y, const float* x, int n) { use_avx512() ? avx512::add(y, x, n) : ref::add(y, x, n); }

float dot(const float* a, const float* b, int n) {
  return use_avx512() ? avx512::dot(a, b, n) : ref::dot(a, b, n);
}

void to_bf16(uint16_t* out, const float* x, size_t n) {
  use_avx512() ? avx512::to_bf16(out, x, n) : ref::to_bf16(out, x, n);
}

}  // namespace sparq::ops
