// Linear layers: y[M][N] = x[M][K] . W[N][K]^T, weights converted once to the
// weight format and stored blocked. f32 and bf16: prompt rows run on oneDNN's
// matmul; decode rows of bf16 layers on matvec.h's kernels, on the same copy
// of the weights. q8_0 and q4_0 (matvec_quant.h): every row on our kernels.
#pragma once
#include <cstddef>
#include <memory>

#include "sparq/util/common.h"

namespace sparq {

// How a layer holds its weights: f32, bf16, or llama.cpp's 8- and 4-bit blocks.
enum class WeightFormat { F32, BF16, Q8_0, Q4_0 };
const char* weight_format_name(WeightFormat f);
bool is_quantized(WeightFormat f);
double weight_format_bytes(WeightFormat f);  // bytes per weight, scales included

// Prompt rows of quantized layers: oneDNN's bf16 matmul over tiles of the
// weights dequantized to bf16 where oneDNN runs AMX (several times faster
// there), our int8 kernels elsewhere (on AVX-512 without AMX the two are
// within 10-15% of each other, either way round by format). Tests and
// benches force one or the other.
enum class QuantPrompt { automatic, tiles, int8 };
void set_quant_prompt(QuantPrompt p);
bool quant_prompt_tiles();  // the path prompt rows take now

// One huge-page buffer that a model's layers place their weights in, one after
// another: decode streams every weight each token, and on 4 KiB pages that
// costs a TLB miss every 4 KiB (the 27M model's matmuls streamed ~1.2x faster
// from huge pages, measured in one process).
class WeightArena {
 public:
  explicit WeightArena(size_t bytes);  // throws Error when it cannot be allocated
  ~WeightArena();
  WeightArena(const WeightArena&) = delete;
  WeightArena& operator=(const WeightArena&) = delete;
  void* take(size_t bytes);  // 64-byte aligned; throws Error when too few bytes are left
  size_t used() const { return used_; }

 private:
  char* base_ = nullptr;
  size_t size_ = 0, used_ = 0;
};

class Linear {
 public:
  // w: [N][K] row-major, elements of w_type (F32 or BF16). format: BF16
  // (activations converted to bf16 for the product, f32 accumulate and
  // output), F32, or Q8_0 / Q4_0 (K a multiple of 32; activations quantized
  // per block to int8). arena: where the converted weights go (it must
  // outlive the layer); without one the layer allocates them itself.
  Linear(const void* w, DType w_type, int N, int K, WeightFormat format, WeightArena* arena = nullptr);
  Linear(const float* w, int N, int K, WeightFormat format) : Linear(w, DType::F32, N, K, format) {}
  // Bytes such a layer's weights take in an arena (its 64-byte rounding included).
  static size_t arena_bytes(int N, int K, WeightFormat format);
  ~Linear();
  Linear(Linear&&) noexcept;
  Linear& operator=(Linear&&) noexcept;

  // x: [M][K] f32, y: [M][N] f32. Any M >= 1. Prompt rows: oneDNN's matmul
  // (primitives cached per M). Decode rows: bf16 layers read their weights
  // once for all M rows in matvec.h's kernels, f32 ones go to oneDNN. A row's
  // result depends on its own input and path only, not on M.
  void forward(const float* x, float* y, int M) const;
  void forward_decode(const float* x, float* y, int M) const;

  int rows() const { return N_; }  // N
  int cols() const { return K_; }  // K
  WeightFormat format() const;
  size_t weight_bytes() const;     // bytes read per forward (weights in their format)
  size_t row_bytes() const;        // bytes of one row of W as stored (scales included)
  const void* weight_data() const;  // those bytes (64-byte aligned), for benchmarks' reads
  // Row n of W ([K] elements, in the weight format's precision) read back from
  // the stored layout: tied embeddings look their rows up here instead of
  // keeping a second copy of the table.
  void row(int n, float* out) const;

  struct Impl;

 private:
  int N_ = 0, K_ = 0;
  std::unique_ptr<Impl> impl_;
};

}  // namespace sparq
