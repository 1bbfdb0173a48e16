// Plain scalar versions of the ops: the portable path and the reference the
// AVX-512 kernels are tested against.
#include <algorithm>
#include <cmath>
#include <limits>

#include "sparq/util/common.h"
#include "sparq/kernels/ops.h"

namespace sparq {

void rope_cos_sin(float* cos_out, float* sin_out, int half, int pos, const float* inv_freq) {
  for (int i = 0; i < half; ++i) {
    const float angle = float(pos) * inv_freq[i];  // f32 product, as transformers
    cos_out[i] = std::cos(angle);
    sin_out[i] = std::sin(angle);
  }
}

namespace ref {

void rmsnorm(float* out, const float* x, const float* weight, int n, float eps) {
  if (n <= 0) return;
  double ss = 0;
  for (int i = 0; i < n; ++i) ss += double(x[i]) * x[i];
  const double r = 1.0 / std::sqrt(ss / n + eps);
  for (int i = 0; i < n; ++i) out[i] = float(x[i] * r) * weight[i];
}

void rope_apply(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* a = x + size_t(h) * head_dim;
    float* b = a + half;
    for (int i = 0; i < half; ++i) {
      const float x1 = a[i], x2 = b[i];
      a[i] = x1 * cos_t[i] - x2 * sin_t[i];
      b[i] = x2 * cos_t[i] + x1 * sin_t[i];
    }
  }
}

void softmax(float* x, int n) {
  if (n <= 0) return;
  float mx = -std::numeric_limits<float>::infinity();
  for (int i = 0; i < n; ++i) mx = std::max(mx, x[i]);
  if (mx == -std::numeric_limits<float>::infinity()) {
    for (int i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  double sum = 0;
  for (int i = 0; i < n; ++i) {
    x[i] = std::exp(x[i] - mx);
    sum += x[i];
  }
  const float inv = float(1.0 / sum);
  for (int i = 0; i < n; ++i) x[i] *= inv;
}

void silu_mul(float* gate, const float* up, int n) {
  for (int i = 0; i < n; ++i) gate[i] = gate[i] / (1.0f + std::exp(-gate[i])) * up[i];
}

void add(float* y, const float* x, int n) {
  for (int i = 0; i < n; ++i) y[i] += x[i];
}

float dot(const float* a, const float* b, int n) {
  double s = 0;
  for (int i = 0; i < n; ++i) s += double(a[i]) * b[i];
  return float(s);
}

void to_bf16(uint16_t* out, const float* x, size_t n) {
  for (size_t i = 0; i < n; ++i) out[i] = f32_to_bf16(x[i]);
}

}  // namespace ref
}  // namespace sparq
