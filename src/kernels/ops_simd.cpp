// The ops written once over kernels/simd.h's lanes, compiled for the avx2 and
// avx512 tiers (avx512bf16 uses the avx512 build but for to_bf16). Every loop
// ends with a partial tail, so any n works.
#include <limits>

#include "sparq/kernels/ops.h"
#include "sparq/kernels/simd.h"

namespace sparq::SPARQ_TIER_NS {
namespace {

// e^x, within ~2 ulp of expf: x = n ln2 + r with |r| <= ln2/2, a degree-6
// polynomial for e^r (Cephes coefficients), and 2^n by scaling, which gives
// inf above ~88.72 and subnormals or 0 below ~-87.3. NaN stays NaN.
VF exp(VF x) {
  const VF nan = select(eq(x, x), zero(), x);
  x = max(x, set1(-104.0f));  // -inf -> -104 -> 0
  x = min(x, set1(89.0f));
  const VF n = round_nearest(mul(x, set1(1.44269504088896341f)));
  VF r = fnmadd(n, set1(0.693359375f), x);
  r = fnmadd(n, set1(-2.12194440e-4f), r);
  VF p = set1(1.9875691500e-4f);
  p = fmadd(p, r, set1(1.3981999507e-3f));
  p = fmadd(p, r, set1(8.3334519073e-3f));
  p = fmadd(p, r, set1(4.1665795894e-2f));
  p = fmadd(p, r, set1(1.6666665459e-1f));
  p = fmadd(p, r, set1(5.0000001201e-1f));
  p = fmadd(p, mul(r, r), add(r, set1(1.0f)));
#if SPARQ_SIMD_512
  const VF e = scale_pow2(p, n);
#else  // 2^n for n up to 128: two factors, past scale_pow2's range
  const VF half = round_nearest(mul(n, set1(0.5f)));
  const VF e = scale_pow2(scale_pow2(p, half), sub(n, half));
#endif
  return add(e, nan);  // NaN in, NaN out
}

// The rows' sums of squares and scaling in double, as the reference.
#if SPARQ_SIMD_512
using VD = __m512d;
inline VD zero_d() { return _mm512_setzero_pd(); }
inline void halves(VF v, VD& lo, VD& hi) {
  lo = _mm512_cvtps_pd(_mm512_castps512_ps256(v));
  hi = _mm512_cvtps_pd(_mm512_extractf32x8_ps(v, 1));
}
inline VF join(VD lo, VD hi) {
  return _mm512_insertf32x8(_mm512_castps256_ps512(_mm512_cvtpd_ps(lo)), _mm512_cvtpd_ps(hi), 1);
}
inline VD fmadd_d(VD a, VD b, VD c) { return _mm512_fmadd_pd(a, b, c); }
inline VD mul_d(VD a, VD b) { return _mm512_mul_pd(a, b); }
inline VD set1_d(double x) { return _mm512_set1_pd(x); }
inline double reduce_add_d(VD v) { return _mm512_reduce_add_pd(v); }
#else
using VD = __m256d;
inline VD zero_d() { return _mm256_setzero_pd(); }
inline void halves(VF v, VD& lo, VD& hi) {
  lo = _mm256_cvtps_pd(_mm256_castps256_ps128(v));
  hi = _mm256_cvtps_pd(_mm256_extractf128_ps(v, 1));
}
inline VF join(VD lo, VD hi) {
  return _mm256_insertf128_ps(_mm256_castps128_ps256(_mm256_cvtpd_ps(lo)), _mm256_cvtpd_ps(hi), 1);
}
inline VD fmadd_d(VD a, VD b, VD c) { return _mm256_fmadd_pd(a, b, c); }
inline VD mul_d(VD a, VD b) { return _mm256_mul_pd(a, b); }
inline VD set1_d(double x) { return _mm256_set1_pd(x); }
inline double reduce_add_d(VD v) {
  const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
  return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
#endif

void add_squares(VF v, VD& acc0, VD& acc1) {
  VD lo, hi;
  halves(v, lo, hi);
  acc0 = fmadd_d(lo, lo, acc0);
  acc1 = fmadd_d(hi, hi, acc1);
}

// float(x * r) * w, the product x * r in double.
VF scale_row(VF v, VD r, VF w) {
  VD lo, hi;
  halves(v, lo, hi);
  return mul(join(mul_d(lo, r), mul_d(hi, r)), w);
}

void rmsnorm(float* out, const float* x, const float* weight, int n, float eps) {
  if (n <= 0) return;
  VD acc0 = zero_d(), acc1 = zero_d();
  for (int i = 0; i < n; i += kLanes) add_squares(load_first(x + i, n - i), acc0, acc1);
  const double ss = reduce_add_d(acc0) + reduce_add_d(acc1);
  const VD r = set1_d(1.0 / __builtin_sqrt(ss / n + eps));
  for (int i = 0; i < n; i += kLanes)
    store_first(out + i, scale_row(load_first(x + i, n - i), r, load_first(weight + i, n - i)), n - i);
}

void rope_apply(float* x, int n_heads, int head_dim, const float* cos_t, const float* sin_t) {
  const int half = head_dim / 2;
  for (int h = 0; h < n_heads; ++h) {
    float* a = x + size_t(h) * head_dim;
    float* b = a + half;
    for (int i = 0; i < half; i += kLanes) {
      const int m = half - i;
      const VF c = load_first(cos_t + i, m), s = load_first(sin_t + i, m);
      const VF x1 = load_first(a + i, m), x2 = load_first(b + i, m);
      store_first(a + i, fnmadd(x2, s, mul(x1, c)), m);
      store_first(b + i, fmadd(x1, s, mul(x2, c)), m);
    }
  }
}

void softmax(float* x, int n) {
  if (n <= 0) return;
  const float ninf = -std::numeric_limits<float>::infinity();
  VF vmax = set1(ninf);
  int i = 0;
  for (; i + kLanes <= n; i += kLanes) vmax = max(vmax, load(x + i));
  float mx = reduce_max(vmax);
  for (; i < n; ++i) mx = x[i] > mx ? x[i] : mx;
  if (mx == ninf) {
    for (i = 0; i < n; ++i) x[i] = 0.0f;
    return;
  }
  const VF vm = set1(mx);
  VF vsum = zero();
  for (i = 0; i < n; i += kLanes) {
    const VF e = select(first_mask(n - i), exp(sub(load_first(x + i, n - i), vm)), zero());
    store_first(x + i, e, n - i);
    vsum = add(vsum, e);
  }
  const VF inv = set1(1.0f / reduce_add(vsum));
  for (i = 0; i < n; i += kLanes) store_first(x + i, mul(load_first(x + i, n - i), inv), n - i);
}

void silu_mul(float* gate, const float* up, int n) {
  const VF one = set1(1.0f);
  for (int i = 0; i < n; i += kLanes) {
    const VF g = load_first(gate + i, n - i);
    const VF s = div(g, add(one, exp(sub(zero(), g))));
    store_first(gate + i, mul(s, load_first(up + i, n - i)), n - i);
  }
}

void add_in_place(float* y, const float* x, int n) {
  for (int i = 0; i < n; i += kLanes) store_first(y + i, add(load_first(y + i, n - i), load_first(x + i, n - i)), n - i);
}

float dot(const float* a, const float* b, int n) {
  VF acc[4] = {zero(), zero(), zero(), zero()};
  int i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes)
    for (int j = 0; j < 4; ++j) acc[j] = fmadd(load(a + i + kLanes * j), load(b + i + kLanes * j), acc[j]);
  for (; i < n; i += kLanes) acc[0] = fmadd(load_first(a + i, n - i), load_first(b + i, n - i), acc[0]);
  return reduce_add(add(add(acc[0], acc[1]), add(acc[2], acc[3])));
}

void to_bf16(uint16_t* out, const float* x, size_t n) {
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes) store_bf16(out + i, load(x + i));
  if (i < n) store_bf16_first(out + i, load_first(x + i, int(n - i)), int(n - i));
}

}  // namespace

extern const OpsKernels kOps = {rmsnorm, rope_apply, softmax, silu_mul, add_in_place, dot, to_bf16};

}  // namespace sparq::SPARQ_TIER_NS
