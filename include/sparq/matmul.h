// Linear layers through oneDNN: y[M][N] = x[M][K] . W[N][K]^T, weights converted
// once to the compute type and reordered to oneDNN's preferred (blocked) layout.
#pragma once
#include <cstddef>
#include <memory>

#include "sparq/common.h"

namespace sparq {

class Linear {
 public:
  // w: [N][K] row-major, elements of w_type (F32 or BF16). compute: BF16
  // (activations converted to bf16 for the product, f32 accumulate and
  // output) or F32.
  Linear(const void* w, DType w_type, int N, int K, DType compute);
  Linear(const float* w, int N, int K, DType compute) : Linear(w, DType::F32, N, K, compute) {}
  ~Linear();
  Linear(Linear&&) noexcept;
  Linear& operator=(Linear&&) noexcept;

  // x: [M][K] f32, y: [M][N] f32. Any M >= 1; primitives are cached per M.
  void forward(const float* x, float* y, int M) const;

  int rows() const { return N_; }  // N
  int cols() const { return K_; }  // K
  size_t weight_bytes() const;     // bytes read per forward (weights in compute type)
  const void* weight_data() const;  // those bytes (64-byte aligned), for benchmarks' reads
  // Row n of W ([K] elements, in the compute type's precision) read back from
  // the stored layout: tied embeddings look their rows up here instead of
  // keeping a second copy of the table.
  void row(int n, float* out) const;

  struct Impl;

 private:
  int N_ = 0, K_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparq
