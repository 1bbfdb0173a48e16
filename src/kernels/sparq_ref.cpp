// Plain scalar SparQ kernels: the reference the AVX-512 ones are tested
// against, and the path on CPUs without AVX-512.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <vector>

#include "sparq/kernels/sparq_kernels.h"

namespace sparq::ref {
namespace {

uint32_t bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}

}  // namespace

void sparq_step1(const SparqStep1Args& a, int b0, int b1, float* e, float* mx, float* sum) {
  constexpr int B = kSparqBlock;
  const int nb = (a.S + B - 1) / B;
  for (int b = b0; b < b1; ++b) {
    const int valid = std::min(B, a.S - b * B);
    for (int h = 0; h < a.n_h; ++h) {
      float* eh = e + (size_t(b) * a.n_h + h) * B;
      const float* qh = a.qs + size_t(h) * a.r;
      float m = -std::numeric_limits<float>::infinity();
      for (int i = 0; i < valid; ++i) {
        float x = 0;
        const size_t p = size_t(b) * B + i;
        // Fused, in component order, as the SIMD tiers sum: the same scores
        // to the bit, so both select the same positions.
        for (int j = 0; j < a.r; ++j) x = std::fma(qh[j], kv_t_quant(a.k_t, a.type, a.d, p, a.i1[j]), x);
        x *= kv_t_scale(a.k_t, a.type, a.d, p);  // q8_0: s_p (qs_h . quants)
        eh[i] = x;
        m = std::max(m, x);
      }
      float z = 0;
      for (int i = 0; i < B; ++i) {
        eh[i] = i < valid ? std::exp2(eh[i] - m) : 0.0f;
        z += eh[i];
      }
      mx[h * nb + b] = m;
      sum[h * nb + b] = z;
    }
  }
}

void sparq_weights(const float* mx, const float* sum, int n_h, int nb, float* w) {
  for (int h = 0; h < n_h; ++h) {
    const float* m = mx + size_t(h) * nb;
    float* wh = w + size_t(h) * nb;
    const float top = *std::max_element(m, m + nb);
    float z = 0;
    for (int b = 0; b < nb; ++b) {
      wh[b] = std::exp2(m[b] - top);
      z += sum[size_t(h) * nb + b] * wh[b];
    }
    for (int b = 0; b < nb; ++b) wh[b] /= z;
  }
}

void sparq_select(const float* e, const float* w, int n_h, int nb, int n, int m, int* out, float* mass,
                  uint32_t* scratch) {
  constexpr int B = kSparqBlock;
  m = std::clamp(m, 0, n);
  uint32_t* key = scratch;
  uint32_t* idx = scratch + n;
  for (int p = 0; p < n; ++p) {
    const int b = p / B;
    float acc = 0;
    for (int h = 0; h < n_h; ++h) acc = std::fma(e[(size_t(b) * n_h + h) * B + p % B], w[h * nb + b], acc);
    key[p] = bits(acc);
  }
  std::iota(idx, idx + n, 0u);
  auto before = [key](uint32_t x, uint32_t y) { return key[x] != key[y] ? key[x] > key[y] : x < y; };
  std::nth_element(idx, idx + m, idx + n, before);
  std::sort(idx, idx + m);
  std::copy(idx, idx + m, out);
  if (mass) sparq_mass(e, w, n_h, nb, out, m, mass);
}

void sparq_mass(const float* e, const float* w, int n_h, int nb, const int* idx, int n, float* mass) {
  constexpr int B = kSparqBlock;
  for (int h = 0; h < n_h; ++h) {
    float acc = 0;
    for (int i = 0; i < n; ++i) {
      const int b = idx[i] / B;
      acc += e[(size_t(b) * n_h + h) * B + idx[i] % B] * w[h * nb + b];
    }
    mass[h] += acc;
  }
}

void sparq_step3(const SparqStep3Args& a, const int* idx, int n, float* mx, float* z, float* acc,
                 float* scratch) {
  const int d = a.d, dp = sparq_dpad(d);
  const bool q8 = a.type == KVType::Q8_0;
  std::vector<int8_t> qq(q8 ? size_t(d) : 0);
  std::vector<float> qs(q8 ? size_t(d / kKVQuantBlock) : 0);
  for (int h = 0; h < a.n_h; ++h) {
    const float* qh = a.q + size_t(h) * d;
    if (q8) quantize_kv_query(qh, d, qq.data(), qs.data());
    float* x = scratch;
    float m = -std::numeric_limits<float>::infinity();
    for (int i = 0; i < n; ++i) {
      float dot = 0;
      if (q8)
        dot = kv_q8_dot(qq.data(), qs.data(), a.k_rows, d, size_t(idx[i]));
      else
        for (int c = 0; c < d; ++c) dot += qh[c] * kv_row_elem(a.k_rows, a.type, d, size_t(idx[i]), c);
      x[i] = dot * a.scale;
      m = std::max(m, x[i]);
    }
    float* ah = acc + size_t(h) * dp;
    std::fill(ah, ah + dp, 0.0f);
    float zh = 0;
    for (int i = 0; i < n; ++i) {
      const float p = std::exp2(x[i] - m);
      zh += p;
      for (int c = 0; c < d; ++c) ah[c] += p * kv_row_elem(a.v_rows, a.type, d, size_t(idx[i]), c);
    }
    mx[h] = m;
    z[h] = zh;
  }
}

}  // namespace sparq::ref
