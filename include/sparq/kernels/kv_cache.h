// The KV cache of one sequence, laid out for SparQ: keys row-major (exact
// attention over selected rows), keys again position-contiguous per component
// in blocks ("K transposed", step 1 reads r of these rows), values row-major,
// and the running sum of values per KV head in f32 (for v_mean).
#pragma once
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string_view>
#include <vector>

#include "sparq/util/common.h"

namespace sparq {

// What the cache stores keys and values as.
enum class KVType { F32, BF16 };

inline size_t kv_type_size(KVType t) { return t == KVType::F32 ? 4 : 2; }  // bytes per element
inline const char* kv_type_name(KVType t) { return t == KVType::F32 ? "f32" : "bf16"; }
// "f32" or "bf16"; anything else throws Error naming the types.
KVType parse_kv_type(std::string_view name);

// x as a query meets keys of type t: bf16 caches compute scores with bf16
// dot products, so q is rounded to bf16 (as the keys are); f32 keeps it.
inline float query_for(KVType t, float x) { return t == KVType::BF16 ? bf16_to_f32(f32_to_bf16(x)) : x; }

// Element i of a cache array of type t (K rows, V rows or K transposed), as
// f32: what the scalar references read.
inline float kv_elem(const void* base, KVType t, size_t i) {
  return t == KVType::F32 ? static_cast<const float*>(base)[i] : bf16_to_f32(static_cast<const uint16_t*>(base)[i]);
}

struct KVShape {
  int n_layers = 0;
  int n_kv_heads = 0;
  int head_dim = 0;
  int capacity = 0;        // positions
  KVType type = KVType::BF16;  // F32 or BF16
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
  static constexpr int kBlock = 1024;

  // Throws Error for a bad shape (non-positive sizes, type not F32/BF16) or
  // when allocation fails.
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

  // Views for the kernels; elements are float or uint16_t (bf16) per type.
  const void* k_rows(int layer, int kv_head) const;  // [capacity][head_dim]
  const void* v_rows(int layer, int kv_head) const;  // [capacity][head_dim]
  // [capacity / kBlock][head_dim][kBlock]: component c of position p is at
  // block p / kBlock, row c, column p % kBlock.
  const void* k_t(int layer, int kv_head) const;
  const float* v_sum(int layer, int kv_head) const;  // [head_dim], sum over stored positions
  // Per-sequence state of an evicting decode attention; mutable through a
  // const cache because decode queries see their cache as const (the stored
  // keys and values are not changed through it).
  EvictionState& eviction(int layer, int kv_head) const;

 private:
  KVShape shape_;
  size_t elem_ = 0;       // bytes per element
  size_t head_elems_ = 0; // elements of one (layer, kv head) array, capacity rounded up to kBlock
  std::vector<int> len_;
  struct Deleter { void operator()(uint8_t* p) const; };
  std::unique_ptr<uint8_t, Deleter> k_, v_, kt_;
  std::vector<double> vsum64_;  // exact-order running sums; vsum_ is their f32 copy
  std::vector<float> vsum_;
  mutable std::vector<EvictionState> evict_;  // [layer][kv head]

  void reset_eviction(int layer);

  uint8_t* at(const std::unique_ptr<uint8_t, Deleter>& a, int layer, int kv_head) const;
  void recompute_vsum(int layer);
};

}  // namespace sparq
