// Element-wise and row-wise ops of the forward pass. Each op has a plain scalar
// reference (namespace ref, src/ops_ref.cpp) and an AVX-512 version
// (src/ops_avx512.cpp); the functions in namespace ops pick one at run time.
#pragma once
#include <cstddef>

namespace sparq {

namespace ref {
void rmsnorm(float* out, const float* x, const float* weight, int n, float eps);
// In place, HuggingFace "rotate_half" convention: within each head, element i
// pairs with element i + head_dim/2. inv_freq has head_dim/2 entries.
void rope(float* x, int n_heads, int head_dim, int pos, const float* inv_freq);
void softmax(float* x, int n);
void silu_mul(float* gate, const float* up, int n);  // gate = silu(gate) * up
void add(float* y, const float* x, int n);           // y += x
float dot(const float* a, const float* b, int n);
}  // namespace ref

namespace avx512 {
void rmsnorm(float* out, const float* x, const float* weight, int n, float eps);
void rope(float* x, int n_heads, int head_dim, int pos, const float* inv_freq);
void softmax(float* x, int n);
void silu_mul(float* gate, const float* up, int n);
void add(float* y, const float* x, int n);
float dot(const float* a, const float* b, int n);
}  // namespace avx512

namespace ops {
void rmsnorm(float* out, const float* x, const float* weight, int n, float eps);
void rope(float* x, int n_heads, int head_dim, int pos, const float* inv_freq);
void softmax(float* x, int n);
void silu_mul(float* gate, const float* up, int n);
void add(float* y, const float* x, int n);
float dot(const float* a, const float* b, int n);
}  // namespace ops

}  // namespace sparq
