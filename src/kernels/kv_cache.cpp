#include "sparq/kernels/kv_cache.h"

#include <algorithm>
#include <cstdlib>
#include <limits>

#include "sparq/io/big_buffer.h"

namespace sparq {
namespace {

void check_shape(const KVShape& s) {
  if (s.n_layers <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 || s.capacity <= 0)
    fail("KV cache shape must be positive, got {} layers, {} KV heads, head size {}, capacity {}",
         s.n_layers, s.n_kv_heads, s.head_dim, s.capacity);
}

// Elements of one (layer, KV head) array: capacity rounded up to whole blocks.
size_t head_elems(const KVShape& s) {
  const size_t blocks = (size_t(s.capacity) + KVCache::kBlock - 1) / KVCache::kBlock;
  return blocks * KVCache::kBlock * size_t(s.head_dim);
}

// Bytes of one of the three arrays (K, V, K transposed), or 0 on overflow.
size_t array_bytes(const KVShape& s) {
  const size_t heads = size_t(s.n_layers) * size_t(s.n_kv_heads);
  const size_t per_head = head_elems(s) * kv_type_size(s.type);
  if (per_head > std::numeric_limits<size_t>::max() / 4 / heads) return 0;
  return heads * per_head;
}

}  // namespace

KVType parse_kv_type(std::string_view name) {
  if (name == "f32") return KVType::F32;
  if (name == "bf16") return KVType::BF16;
  fail("unknown KV cache type '{}' (types: f32, bf16)", name);
}

void KVCache::Deleter::operator()(uint8_t* p) const { std::free(p); }

size_t KVCache::bytes_needed(const KVShape& shape) {
  check_shape(shape);
  const size_t a = array_bytes(shape);
  if (a == 0) fail("KV cache of capacity {} is too large to address", shape.capacity);
  return 3 * a + size_t(shape.n_layers) * shape.n_kv_heads * shape.head_dim * sizeof(float);
}

KVCache::KVCache(const KVShape& shape) : shape_(shape) {
  const size_t total = bytes_needed(shape);  // validates
  elem_ = kv_type_size(shape.type);
  head_elems_ = head_elems(shape);
  len_.assign(size_t(shape.n_layers), 0);
  const size_t a = array_bytes(shape);
  auto alloc = [&] {
    try {
      return static_cast<uint8_t*>(alloc_big(a, "the KV cache"));
    } catch (const Error&) {  // name the whole cache, not the one array that failed
      fail("cannot allocate {:.1f} MiB for the KV cache", total / 1048576.0);
    }
  };
  k_.reset(alloc());
  v_.reset(alloc());
  kt_.reset(alloc());
  const size_t nsum = size_t(shape.n_layers) * shape.n_kv_heads * shape.head_dim;
  vsum64_.assign(nsum, 0.0);
  vsum_.assign(nsum, 0.0f);
  evict_.resize(size_t(shape.n_layers) * shape.n_kv_heads);
}

uint8_t* KVCache::at(const std::unique_ptr<uint8_t, Deleter>& a, int layer, int kv_head) const {
  return a.get() + (size_t(layer) * shape_.n_kv_heads + kv_head) * head_elems_ * elem_;
}

const void* KVCache::k_rows(int layer, int kv_head) const { return at(k_, layer, kv_head); }
const void* KVCache::v_rows(int layer, int kv_head) const { return at(v_, layer, kv_head); }
const void* KVCache::k_t(int layer, int kv_head) const { return at(kt_, layer, kv_head); }
const float* KVCache::v_sum(int layer, int kv_head) const {
  return &vsum_[(size_t(layer) * shape_.n_kv_heads + kv_head) * shape_.head_dim];
}

EvictionState& KVCache::eviction(int layer, int kv_head) const {
  return evict_[size_t(layer) * shape_.n_kv_heads + kv_head];
}

void KVCache::reset_eviction(int layer) {
  for (int h = 0; h < shape_.n_kv_heads; ++h) eviction(layer, h) = EvictionState{};
}

void KVCache::clear() {
  for (int l = 0; l < shape_.n_layers; ++l) reset_eviction(l);
  std::fill(len_.begin(), len_.end(), 0);
  std::fill(vsum64_.begin(), vsum64_.end(), 0.0);
  std::fill(vsum_.begin(), vsum_.end(), 0.0f);
}

void KVCache::copy_from(const KVCache& src) {
  const KVShape& o = src.shape_;
  if (o.n_layers != shape_.n_layers || o.n_kv_heads != shape_.n_kv_heads || o.head_dim != shape_.head_dim ||
      o.capacity != shape_.capacity || o.type != shape_.type)
    fail("KV cache copy: the caches' shapes differ");
  const int n = src.len_[0];
  for (int l = 0; l < shape_.n_layers; ++l)
    if (src.len_[l] != n) fail("KV cache copy: the source's layers hold {} and {} positions", n, src.len_[l]);
  clear();
  const size_t rows = size_t(n) * shape_.head_dim * elem_;
  const size_t blocks = (size_t(n) + kBlock - 1) / kBlock * kBlock * shape_.head_dim * elem_;
  for (int l = 0; l < shape_.n_layers; ++l) {
    for (int h = 0; h < shape_.n_kv_heads; ++h) {
      std::copy_n(src.at(src.k_, l, h), rows, at(k_, l, h));
      std::copy_n(src.at(src.v_, l, h), rows, at(v_, l, h));
      std::copy_n(src.at(src.kt_, l, h), blocks, at(kt_, l, h));
    }
    len_[l] = n;
  }
  vsum64_ = src.vsum64_;
  vsum_ = src.vsum_;
}

void KVCache::truncate(int length) {
  if (length < 0) fail("KV cache truncate: length must be >= 0, got {}", length);
  for (int l = 0; l < shape_.n_layers; ++l)
    if (len_[l] > length) {
      len_[l] = length;
      recompute_vsum(l);
      reset_eviction(l);
    }
}

// Sums the stored values of positions [0, length) in storage order, so the
// result is bit-identical to the running sum store() keeps.
void KVCache::recompute_vsum(int layer) {
  const int d = shape_.head_dim;
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    double* sum = &vsum64_[(size_t(layer) * shape_.n_kv_heads + h) * d];
    float* sum32 = &vsum_[(size_t(layer) * shape_.n_kv_heads + h) * d];
    std::fill(sum, sum + d, 0.0);
    const uint8_t* v = at(v_, layer, h);
    for (int p = 0; p < len_[layer]; ++p)
      for (int c = 0; c < d; ++c) {
        const size_t i = size_t(p) * d + c;
        sum[c] += shape_.type == KVType::F32 ? reinterpret_cast<const float*>(v)[i]
                                            : bf16_to_f32(reinterpret_cast<const uint16_t*>(v)[i]);
      }
    for (int c = 0; c < d; ++c) sum32[c] = float(sum[c]);
  }
}

void KVCache::store(int layer, int pos, const float* k, const float* v) {
  if (layer < 0 || layer >= shape_.n_layers)
    fail("KV cache store: layer {} out of range [0, {})", layer, shape_.n_layers);
  if (pos < 0 || pos > len_[layer])
    fail("KV cache store: position {} of layer {} is not in [0, {}] (positions are stored in order)",
         pos, layer, len_[layer]);
  if (pos >= shape_.capacity)
    fail("KV cache full: position {} does not fit the capacity of {} positions", pos, shape_.capacity);
  if (pos < len_[layer]) {
    len_[layer] = pos;
    recompute_vsum(layer);
    reset_eviction(layer);
  }
  const int d = shape_.head_dim;
  const size_t row = size_t(pos) * d;
  const size_t tcol = size_t(pos / kBlock) * d * kBlock + pos % kBlock;  // component 0 in k_t
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    const float* kh = k + size_t(h) * d;
    const float* vh = v + size_t(h) * d;
    double* sum = &vsum64_[(size_t(layer) * shape_.n_kv_heads + h) * d];
    float* sum32 = &vsum_[(size_t(layer) * shape_.n_kv_heads + h) * d];
    if (shape_.type == KVType::F32) {
      auto* kr = reinterpret_cast<float*>(at(k_, layer, h)) + row;
      auto* vr = reinterpret_cast<float*>(at(v_, layer, h)) + row;
      auto* kt = reinterpret_cast<float*>(at(kt_, layer, h)) + tcol;
      for (int c = 0; c < d; ++c) {
        kr[c] = kh[c];
        kt[size_t(c) * kBlock] = kh[c];
        vr[c] = vh[c];
        sum[c] += vh[c];
        sum32[c] = float(sum[c]);
      }
    } else {
      auto* kr = reinterpret_cast<uint16_t*>(at(k_, layer, h)) + row;
      auto* vr = reinterpret_cast<uint16_t*>(at(v_, layer, h)) + row;
      auto* kt = reinterpret_cast<uint16_t*>(at(kt_, layer, h)) + tcol;
      for (int c = 0; c < d; ++c) {
        const uint16_t kb = f32_to_bf16(kh[c]);
        const uint16_t vb = f32_to_bf16(vh[c]);
        kr[c] = kb;
        kt[size_t(c) * kBlock] = kb;
        vr[c] = vb;
        sum[c] += bf16_to_f32(vb);
        sum32[c] = float(sum[c]);
      }
    }
  }
  len_[layer] = pos + 1;
}

}  // namespace sparq
