// Run-time choice of the tier's ops: one relaxed atomic load per call.
#include "sparq/kernels/ops.h"

#include "sparq/util/common.h"
#include "sparq/util/cpu.h"

namespace sparq {

namespace ref {
extern const OpsKernels kOps = {rmsnorm, rope_apply, softmax, silu_mul, add, dot, to_bf16};
}
namespace avx2 {
extern const OpsKernels kOps;
}
namespace avx512 {
extern const OpsKernels kOps;
}
namespace avx512bf16 {
void to_bf16(uint16_t* out, const float* x, size_t n);
const OpsKernels kOps = [] {
  OpsKernels k = avx512::kOps;
  k.to_bf16 = to_bf16;
  return k;
}();
}  // namespace avx512bf16

const OpsKernels& ops_kernels(CpuTier t) { return for_tier(t, ref::kOps, avx2::kOps, avx512::kOps, avx512bf16::kOps); }

namespace ops {
namespace {

const OpsKernels& k() { return ops_kernels(cpu_tier()); }


void check_head_dim(int head_dim) {
  if (head_dim <= 0 || head_dim % 2 != 0 || head_dim > kMaxRopeHeadDim)
    fail("RoPE needs an even head size between 2 and {}, got {}", kMaxRopeHeadDim, head_dim);
}

}  // namespace

void rmsnorm(float* out, const float* x, const float* weight, int n, float eps) {
  k().rmsnorm(out, x, weight, n, eps);
}

void rope(float* x, int n_heads, int head_dim, int pos, const float* inv_freq) {
  check_head_dim(head_dim);
  float cos_t[kMaxRopeHeadDim / 2], sin_t[kMaxRopeHeadDim / 2];
  rope_cos_sin(cos_t, sin_t, head_dim / 2, pos, inv_freq);
  rope_apply(x, n_heads, head_dim, cos_t, sin_t);
}

void rope_apply(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t) {
  check_head_dim(head_dim);
  k().rope_apply(x, n_heads, head_dim, cos_t, sin_t);
}

void softmax(float* x, int n) { k().softmax(x, n); }

void silu_mul(float* gate, const float* up, int n) {
  k().silu_mul(gate, up, n);
}

void add(float* y, const float* x, int n) { k().add(y, x, n); }

float dot(const float* a, const float* b, int n) {
  return k().dot(a, b, n);
}

void to_bf16(uint16_t* out, const float* x, size_t n) {
  k().to_bf16(out, x, n);
}

}  // namespace ops
}  // namespace sparq
