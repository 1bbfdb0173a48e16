// AVX-512 versions of the ops (compiled with AVX-512 flags; only reached after
// use_avx512()). Every loop ends with a masked tail, so any n works.
// GCC 12.2 warns about the _mm512_undefined_* self-initialisation inside
// immintrin.h (GCC PR 105593, fixed in 12.3); these are false positives.
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#include <immintrin.h>

#include <limits>

#include "sparq/kernels/avx512_lanes.h"
#include "sparq/kernels/ops.h"

namespace sparq::avx512 {
namespace {

// e^x, within ~2 ulp of expf: x = n ln2 + r with |r| <= ln2/2, a degree-6
// polynomial for e^r (Cephes coefficients), and scalef for 2^n, which gives
// inf above ~88.72 and subnormals or 0 below ~-87.3. NaN stays NaN.
__m512 exp_ps(__m512 x) {
  x = _mm512_max_ps(_mm512_set1_ps(-104.0f), x);  // -inf -> -104 -> 0
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.9875691500e-4f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.3981999507e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(8.3334519073e-3f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(4.1665795894e-2f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.6666665459e-1f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(5.0000001201e-1f));
  p = _mm512_fmadd_ps(p, _mm512_mul_ps(r, r), _mm512_add_ps(r, _mm512_set1_ps(1.0f)));
  return _mm512_scalef_ps(p, n);
}

// Sum of squares of 16 floats, in double (two 8-lane halves).
void add_squares(__m512 v, __m512d& acc0, __m512d& acc1) {
  const __m512d lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  const __m512d hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
  acc0 = _mm512_fmadd_pd(lo, lo, acc0);
  acc1 = _mm512_fmadd_pd(hi, hi, acc1);
}

// float(x * r) * w for 16 lanes, the product x * r in double.
__m512 scale_row(__m512 v, __m512d r, __m512 w) {
  const __m256 lo = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(v)), r));
  const __m256 hi = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1)), r));
  return _mm512_mul_ps(_mm512_insertf32x8(_mm512_castps256_ps512(lo), hi, 1), w);
}

}  // namespace

void rmsnorm(float* out, const float* x, const float* weight, int n, float eps) {
  if (n <= 0) return;
  __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
  int i = 0;
  for (; i + 16 <= n; i += 16) add_squares(_mm512_loadu_ps(x + i), acc0, acc1);
  if (i < n) add_squares(_mm512_maskz_loadu_ps(first16(n - i), x + i), acc0, acc1);
  const double ss = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
  const __m512d r = _mm512_set1_pd(1.0 / __builtin_sqrt(ss / n + eps));
  for (i = 0; i + 16 <= n; i += 16)
    _mm512_storeu_ps(out + i, scale_row(_mm512_loadu_ps(x + i), r, _mm512_loadu_ps(weight + i)));
  if (i < n) {
    const __mmask16 m = first16(n - i);
    _mm512_mask_storeu_ps(out + i, m,
                          scale_row(_mm512_maskz_loadu_ps(m, x + i), r, _mm512_maskz_loadu_ps(m, weight + i)));
  }
}

void rope_apply(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* a = x + size_t(h) * head_dim;
    float* b = a + half;
    for (int i = 0; i < half; i += 16) {
      const __mmask16 m = first16(half - i);
      const __m512 c = _mm512_maskz_loadu_ps(m, cos_t + i), s = _mm512_maskz_loadu_ps(m, sin_t + i);
      const __m512 x1 = _mm512_maskz_loadu_ps(m, a + i), x2 = _mm512_maskz_loadu_ps(m, b + i);
      _mm512_mask_storeu_ps(a + i, m, _mm512_fmsub_ps(x1, c, _mm512_mul_ps(x2, s)));
      _mm512_mask_storeu_ps(b + i, m, _mm512_fmadd_ps(x2, c, _mm512_mul_ps(x1, s)));
    }
  }
}

void softmax(float* x, int n) {
  if (n <= 0) return;
  const float ninf = -std::numeric_limits<float>::infinity();
  __m512 vmax = _mm512_set1_ps(ninf);
  int i = 0;
  for (; i + 16 <= n; i += 16) vmax = _mm512_max_ps(vmax, _mm512_loadu_ps(x + i));
  if (i < n) vmax = _mm512_max_ps(vmax, _mm512_mask_loadu_ps(_mm512_set1_ps(ninf), first16(n - i), x + i));
  const float mx = _mm512_reduce_max_ps(vmax);
  if (mx == ninf) {
    for (i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  const __m512 vm = _mm512_set1_ps(mx);
  __m512 vsum = _mm512_setzero_ps();
  for (i = 0; i + 16 <= n; i += 16) {
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_loadu_ps(x + i), vm));
    _mm512_storeu_ps(x + i, e);
    vsum = _mm512_add_ps(vsum, e);
  }
  if (i < n) {
    const __mmask16 m = first16(n - i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), vm));
    _mm512_mask_storeu_ps(x + i, m, e);
    vsum = _mm512_mask_add_ps(vsum, m, vsum, e);
  }
  const __m512 inv = _mm512_set1_ps(1.0f / _mm512_reduce_add_ps(vsum));
  for (i = 0; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, _mm512_mul_ps(_mm512_loadu_ps(x + i), inv));
  if (i < n) {
    const __mmask16 m = first16(n - i);
    _mm512_mask_storeu_ps(x + i, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + i), inv));
  }
}

void silu_mul(float* gate, const float* up, int n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = first16(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 e = exp_ps(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 s = _mm512_div_ps(g, _mm512_add_ps(one, e));
    _mm512_mask_storeu_ps(gate + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

void add(float* y, const float* x, int n) {
  for (int i = 0; i < n; i += 16) {
    const __mmask16 m = first16(n - i);
    _mm512_mask_storeu_ps(y + i, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, y + i), _mm512_maskz_loadu_ps(m, x + i)));
  }
}

float dot(const float* a, const float* b, int n) {
  __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
  int i = 0;
  for (; i + 64 <= n; i += 64)
    for (int j = 0; j < 4; ++j)
      acc[j] = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16 * j), _mm512_loadu_ps(b + i + 16 * j), acc[j]);
  for (; i < n; i += 16) {
    const __mmask16 m = first16(n - i);
    acc[0] = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc[0]);
  }
  return _mm512_reduce_add_ps(_mm512_add_ps(_mm512_add_ps(acc[0], acc[1]), _mm512_add_ps(acc[2], acc[3])));
}

void to_bf16(uint16_t* out, const float* x, size_t n) {
  size_t i = 0;
  for (; i + 32 <= n; i += 32) {
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_loadu_ps(x + i + 16), _mm512_loadu_ps(x + i));
    _mm512_storeu_si512(out + i, (__m512i)v);
  }
  for (; i < n; i += 16) {
    const __mmask16 m = n - i >= 16 ? __mmask16(0xffff) : first16(int(n - i));
    const __m256bh v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(m, x + i));
    _mm256_mask_storeu_epi16(out + i, m, (__m256i)v);
  }
}

}  // namespace sparq::avx512
