// The KV cache of one sequence, laid out for SparQ: keys row-major (exact
// attention over selected rows), keys again position-contiguous per component
// in blocks ("K transposed", step 1 reads r of these rows), values row-major,
// and the running sum of values per KV head in f32 (for v_mean).
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string_view>
#include <vector>

#include "sparq/util/common.h"

namespace sparq {

// What the cache stores keys and values as. q8_0 is llama.cpp's: blocks of
// kKVQuantBlock values along the head dimension, q = round(x / s) with
// s = max|x| / 127 kept as f16 (so s q is exact in f32).
enum class KVType { F32, BF16, Q8_0 };
inline constexpr int kKVQuantBlock = 32;
// Positions per block of the transposed keys (KVCache::kBlock).
inline constexpr int kKVBlock = 1024;

inline const char* kv_type_name(KVType t) {
  return t == KVType::F32 ? "f32" : t == KVType::BF16 ? "bf16" : "q8_0";
}
// "f32", "bf16" or "q8_0"; anything else throws Error naming the types.
KVType parse_kv_type(std::string_view name);

// Bytes of one K or V row of head size d: a q8_0 row is its d int8 quants,
// then its d / 32 f16 scales.
inline size_t kv_row_bytes(KVType t, int d) {
  return t == KVType::F32 ? 4 * size_t(d) : t == KVType::BF16 ? 2 * size_t(d) : size_t(d) + 2 * size_t(d / kKVQuantBlock);
}
// Bytes of one component of one position in the transposed keys, and of the
// one f16 scale per position (max over the head's d values / 127) a q8_0
// copy adds: step 1 reads r components of S positions, so a scale per
// position costs 2 S bytes where 32-value blocks would cost 2 S per block met.
inline size_t kv_t_elem_bytes(KVType t) { return t == KVType::F32 ? 4 : t == KVType::BF16 ? 2 : 1; }
inline size_t kv_t_scale_bytes(KVType t) { return t == KVType::Q8_0 ? 2 : 0; }
// Bytes of one block of kKVBlock positions of the transposed keys: [d][kKVBlock]
// elements, then (q8_0) the block's kKVBlock scales.
inline size_t kv_t_block_bytes(KVType t, int d) {
  return size_t(kKVBlock) * (size_t(d) * kv_t_elem_bytes(t) + kv_t_scale_bytes(t));
}

// x as a query meets keys of type t: bf16 caches compute scores with bf16
// dot products, so q is rounded to bf16 (as the keys are); f32 keeps it, and
// so does q8_0 here (its rows meet a quantized query: quantize_kv_query).
inline float query_for(KVType t, float x) { return t == KVType::BF16 ? bf16_to_f32(f32_to_bf16(x)) : x; }

// A query of d values (d % 32 == 0) as it meets q8_0 key rows, as llama.cpp
// meets them: per 32 values qs = max|q| / 127 (f32) and qq = q / qs rounded to
// nearest even, so each block's dot product is an exact integer sum. A
// non-finite block gets quants 0 and a NaN scale.
void quantize_kv_query(const float* q, int d, int8_t* qq, float* qs);
// q as q8_0 keys meet it, dequantized: per 32 values qq qs (NaN for a
// non-finite block), for kernels that take the keys as f32.
void kv_query_as_met(const float* q, int d, float* out);
// The score of q8_0 row p against such a query: sum over blocks b of
// (qs_b s_b) (qq_b . quants_b), summed in block order: the reference the
// kernels' sums match up to their order.
float kv_q8_dot(const int8_t* qq, const float* qs, const void* rows, int d, size_t p);

// A T at p, which need not be aligned for it.
template <class T>
inline T load_as(const uint8_t* p) {
  T x;
  std::memcpy(&x, p, sizeof x);
  return x;
}

// Component c of row p of a cache's K or V rows as f32: what the scalar
// references read.
inline float kv_row_elem(const void* rows, KVType t, int d, size_t p, int c) {
  const uint8_t* row = static_cast<const uint8_t*>(rows) + p * kv_row_bytes(t, d);
  if (t == KVType::F32) return load_as<float>(row + 4 * size_t(c));
  if (t == KVType::BF16) return bf16_to_f32(load_as<uint16_t>(row + 2 * size_t(c)));
  return float(int8_t(row[c])) * f16_to_f32(load_as<uint16_t>(row + d + 2 * size_t(c / kKVQuantBlock)));
}
// The transposed keys hold component c of position p as kv_t_scale(p) times
// kv_t_quant(p, c): the quant (q8_0) or the value itself (scale 1).
inline float kv_t_quant(const void* k_t, KVType t, int d, size_t p, int c) {
  const uint8_t* block = static_cast<const uint8_t*>(k_t) + p / kKVBlock * kv_t_block_bytes(t, d);
  const size_t i = size_t(c) * kKVBlock + p % kKVBlock;
  if (t == KVType::F32) return load_as<float>(block + 4 * i);
  if (t == KVType::BF16) return bf16_to_f32(load_as<uint16_t>(block + 2 * i));
  return float(int8_t(block[i]));
}
inline float kv_t_scale(const void* k_t, KVType t, int d, size_t p) {
  if (t != KVType::Q8_0) return 1.0f;
  const uint8_t* block = static_cast<const uint8_t*>(k_t) + p / kKVBlock * kv_t_block_bytes(t, d);
  return f16_to_f32(load_as<uint16_t>(block + size_t(d) * kKVBlock + 2 * (p % kKVBlock)));
}

// Quantizes one row of d values (d % 32 == 0) into kv_row_bytes(Q8_0, d)
// bytes at out. A block with a non-finite value gets quants 0 and a NaN scale
// (its products NaN, as in f32); one too small for 1 / s gets 0.
void quantize_kv_row(const float* x, int d, uint8_t* out);

struct KVShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int capacity = 0;        // positions
  KVType type = KVType::BF16;
};

// What a decode attention that evicts (H2O) keeps of one (layer, KV head) of
// a sequence: the positions it still holds and their accumulated attention.
// Positions it dropped are never read again; the cache resets it whenever
// positions are dropped (clear, truncate, a store over earlier positions).
struct EvictionState {
  std::vector<int> kept;      // ascending
  std::vector<float> score;   // accumulated attention of kept[i], summed over the group's heads
  int seen = 0;               // positions [0, seen) were added to kept (0: nothing yet)
};

class KVCache {
 public:
  // Positions per block of the transposed key copy. SparQ's step 1 reads runs
  // of kBlock positions of r components: 2 KiB runs (bf16) made step 1 ~25%
  // faster than 512 B runs did (S = 32k, d = 64, group 4).
  static constexpr int kBlock = kKVBlock;

  // Throws Error for a bad shape (non-positive sizes; q8_0 with a head size
  // not a multiple of 32) or when allocation fails.
  explicit KVCache(const KVShape& shape);

  // Bytes a cache of this shape allocates, the transposed K copy included.
  static size_t bytes_needed(const KVShape& shape);

  // Stores the post-RoPE key and the value of position pos in one layer;
  // k and v are [n_kv_heads][head_dim] f32. Positions are stored in order
  // (pos == length(layer)); storing at pos < length(layer) first drops the
  // positions from pos on (so v_sum stays exact). BF16 caches round to
  // nearest even; v_sum sums the stored (rounded) values. Throws Error for a
  // layer out of range, pos > length(layer) or pos >= capacity.
  void store(int layer, int pos, const float* k, const float* v);
  int length(int layer) const { return len_[layer]; }
  void clear();
  // Makes this cache hold the positions src holds (the same in every layer),
  // so a prompt run once can be shared; src must have this cache's shape.
  // The eviction state starts empty.
  void copy_from(const KVCache& src);
  // Drops the positions from `length` on in every layer, so later stores
  // append without recomputing v_sum (benchmarks rewind to a depth this way).
  void truncate(int length);

  const KVShape& shape() const { return shape_; }
  size_t bytes() const { return bytes_needed(shape_); }

  // Views for the kernels, laid out as kv_row_elem, kv_t_quant and kv_t_scale read them.
  const void* k_rows(int layer, int kv_head) const;  // [capacity] rows of kv_row_bytes
  const void* v_rows(int layer, int kv_head) const;  // [capacity] rows of kv_row_bytes
  // [capacity / kBlock] blocks of kv_t_block_bytes: component c of position p
  // is at block p / kBlock, row c, column p % kBlock.
  const void* k_t(int layer, int kv_head) const;
  const float* v_sum(int layer, int kv_head) const;  // [head_dim], sum over stored positions
  // Per-sequence state of an evicting decode attention; mutable through a
  // const cache because decode queries see their cache as const (the stored
  // keys and values are not changed through it).
  EvictionState& eviction(int layer, int kv_head) const;

 private:
  KVShape shape_;
  size_t row_head_ = 0;  // bytes of one (layer, KV head) of the K or V rows
  size_t t_head_ = 0;    // bytes of one (layer, KV head) of the transposed keys
  std::vector<int> len_;
  struct Deleter { void operator()(uint8_t* p) const; };
  std::unique_ptr<uint8_t, Deleter> k_, v_, kt_;
  std::vector<double> vsum64_;  // exact-order running sums; vsum_ is their f32 copy
  std::vector<float> vsum_;
  std::vector<int8_t> kq_;  // store()'s quants of the transposed copy (q8_0)
  mutable std::vector<EvictionState> evict_;  // [layer][kv head]

  void reset_eviction(int layer);

  uint8_t* at(const std::unique_ptr<uint8_t, Deleter>& a, size_t head_bytes, int layer, int kv_head) const;
  void recompute_vsum(int layer);
};

}  // namespace sparq
