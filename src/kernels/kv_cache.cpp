#include "sparq/kernels/kv_cache.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>

#include "sparq/io/big_buffer.h"

namespace sparq {
namespace {

void check_shape(const KVShape& s) {
  if (s.n_layers <= 0 || s.n_kv_heads <= 0 || s.head_dim <= 0 || s.capacity <= 0)
    fail("KV cache shape must be positive, got {} layers, {} KV heads, head size {}, capacity {}",
         s.n_layers, s.n_kv_heads, s.head_dim, s.capacity);
  if (s.type == KVType::Q8_0 && s.head_dim % kKVQuantBlock != 0)
    fail("KV cache type q8_0 needs a head size that is a multiple of {}, got {}", kKVQuantBlock, s.head_dim);
}

// Blocks of the transposed keys: capacity rounded up to whole blocks.
size_t blocks(const KVShape& s) { return (size_t(s.capacity) + KVCache::kBlock - 1) / KVCache::kBlock; }
// Bytes of one (layer, KV head) of the K or V rows, and of the transposed keys.
size_t row_head_bytes(const KVShape& s) { return blocks(s) * KVCache::kBlock * kv_row_bytes(s.type, s.head_dim); }
size_t t_head_bytes(const KVShape& s) { return blocks(s) * kv_t_block_bytes(s.type, s.head_dim); }

// One q8_0 block of n values: quants into q (halves away from zero, or to
// even), the scale returned; too small a block gets scale 0 and a non-finite
// one NaN, both with quants 0.
template <bool NearestEven>
float quantize_block_f32(const float* x, int n, int8_t* q) {
  float amax = 0;
  bool finite = true;
  for (int i = 0; i < n; ++i) {
    amax = std::max(amax, std::fabs(x[i]));
    finite = finite && std::isfinite(x[i]);
  }
  const float s = amax / 127, inv = s != 0 ? 1 / s : 0;
  if (!finite || !std::isfinite(inv)) {
    std::fill(q, q + n, int8_t(0));
    return finite ? 0.0f : NAN;
  }
  for (int i = 0; i < n; ++i) q[i] = int8_t(NearestEven ? std::nearbyint(x[i] * inv) : std::round(x[i] * inv));
  return s;
}
// The cache's rows: f16 scales.
uint16_t quantize_block(const float* x, int n, int8_t* q) { return f32_to_f16(quantize_block_f32<false>(x, n, q)); }

void put_f16(uint8_t* p, uint16_t h) { std::memcpy(p, &h, 2); }

}  // namespace

void quantize_kv_row(const float* x, int d, uint8_t* out) {
  for (int b = 0; b < d / kKVQuantBlock; ++b)
    put_f16(out + d + 2 * b, quantize_block(x + b * kKVQuantBlock, kKVQuantBlock,
                                            reinterpret_cast<int8_t*>(out) + b * kKVQuantBlock));
}

void quantize_kv_query(const float* q, int d, int8_t* qq, float* qs) {
  for (int b = 0; b < d / kKVQuantBlock; ++b)
    qs[b] = quantize_block_f32<true>(q + b * kKVQuantBlock, kKVQuantBlock, qq + b * kKVQuantBlock);
}

void kv_query_as_met(const float* q, int d, float* out) {
  int8_t qq[kKVQuantBlock];
  for (int b = 0; b < d / kKVQuantBlock; ++b) {
    float s = 0;
    quantize_kv_query(q + b * kKVQuantBlock, kKVQuantBlock, qq, &s);
    for (int i = 0; i < kKVQuantBlock; ++i) out[b * kKVQuantBlock + i] = float(qq[i]) * s;
  }
}

float kv_q8_dot(const int8_t* qq, const float* qs, const void* rows, int d, size_t p) {
  const uint8_t* row = static_cast<const uint8_t*>(rows) + p * kv_row_bytes(KVType::Q8_0, d);
  float acc = 0;
  for (int b = 0; b < d / kKVQuantBlock; ++b) {
    int32_t sum = 0;
    for (int i = b * kKVQuantBlock; i < (b + 1) * kKVQuantBlock; ++i) sum += int32_t(int8_t(row[i])) * qq[i];
    acc += float(sum) * (qs[b] * f16_to_f32(load_as<uint16_t>(row + d + 2 * b)));
  }
  return acc;
}

KVType parse_kv_type(std::string_view name) {
  for (KVType t : {KVType::F32, KVType::BF16, KVType::Q8_0})
    if (name == kv_type_name(t)) return t;
  fail("unknown KV cache type '{}' (types: f32, bf16, q8_0)", name);
}

void KVCache::Deleter::operator()(uint8_t* p) const { std::free(p); }

size_t KVCache::bytes_needed(const KVShape& shape) {
  check_shape(shape);
  const size_t heads = size_t(shape.n_layers) * size_t(shape.n_kv_heads);
  const size_t per_head = 2 * row_head_bytes(shape) + t_head_bytes(shape);
  if (per_head > std::numeric_limits<size_t>::max() / 2 / heads)
    fail("KV cache of capacity {} is too large to address", shape.capacity);
  return heads * per_head + heads * shape.head_dim * sizeof(float);
}

KVCache::KVCache(const KVShape& shape) : shape_(shape) {
  const size_t total = bytes_needed(shape);  // validates
  row_head_ = row_head_bytes(shape);
  t_head_ = t_head_bytes(shape);
  len_.assign(size_t(shape.n_layers), 0);
  const size_t heads = size_t(shape.n_layers) * shape.n_kv_heads;
  auto alloc = [&](size_t head_bytes) {
    try {
      return static_cast<uint8_t*>(alloc_big(heads * head_bytes, "the KV cache"));
    } catch (const Error&) {  // name the whole cache, not the one array that failed
      fail("cannot allocate {:.1f} MiB for the KV cache", total / 1048576.0);
    }
  };
  k_.reset(alloc(row_head_));
  v_.reset(alloc(row_head_));
  kt_.reset(alloc(t_head_));
  const size_t nsum = size_t(shape.n_layers) * shape.n_kv_heads * shape.head_dim;
  vsum64_.assign(nsum, 0.0);
  vsum_.assign(nsum, 0.0f);
  kq_.resize(size_t(shape.head_dim));
  evict_.resize(size_t(shape.n_layers) * shape.n_kv_heads);
}

uint8_t* KVCache::at(const std::unique_ptr<uint8_t, Deleter>& a, size_t head_bytes, int layer, int kv_head) const {
  return a.get() + (size_t(layer) * shape_.n_kv_heads + kv_head) * head_bytes;
}

const void* KVCache::k_rows(int layer, int kv_head) const { return at(k_, row_head_, layer, kv_head); }
const void* KVCache::v_rows(int layer, int kv_head) const { return at(v_, row_head_, layer, kv_head); }
const void* KVCache::k_t(int layer, int kv_head) const { return at(kt_, t_head_, layer, kv_head); }
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
  const size_t rows = size_t(n) * kv_row_bytes(shape_.type, shape_.head_dim);
  const size_t blocks = (size_t(n) + kBlock - 1) / kBlock * kv_t_block_bytes(shape_.type, shape_.head_dim);
  for (int l = 0; l < shape_.n_layers; ++l) {
    for (int h = 0; h < shape_.n_kv_heads; ++h) {
      std::memcpy(at(k_, row_head_, l, h), src.k_rows(l, h), rows);
      std::memcpy(at(v_, row_head_, l, h), src.v_rows(l, h), rows);
      std::memcpy(at(kt_, t_head_, l, h), src.k_t(l, h), blocks);
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
    const void* v = v_rows(layer, h);
    for (int p = 0; p < len_[layer]; ++p)
      for (int c = 0; c < d; ++c) sum[c] += kv_row_elem(v, shape_.type, d, size_t(p), c);
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
  const KVType t = shape_.type;
  const size_t row = size_t(pos) * kv_row_bytes(t, d);
  const size_t e = kv_t_elem_bytes(t);
  const size_t col = size_t(pos % kBlock);
  for (int h = 0; h < shape_.n_kv_heads; ++h) {
    const float* kh = k + size_t(h) * d;
    const float* vh = v + size_t(h) * d;
    uint8_t* kr = at(k_, row_head_, layer, h) + row;
    uint8_t* vr = at(v_, row_head_, layer, h) + row;
    uint8_t* kt = at(kt_, t_head_, layer, h) + size_t(pos / kBlock) * kv_t_block_bytes(t, d);
    if (t == KVType::Q8_0) {
      quantize_kv_row(kh, d, kr);
      quantize_kv_row(vh, d, vr);
      // The transposed copy: one scale for the position's d values.
      put_f16(kt + size_t(d) * kBlock + 2 * col, quantize_block(kh, d, kq_.data()));
      for (int c = 0; c < d; ++c) kt[size_t(c) * kBlock + col] = uint8_t(kq_[size_t(c)]);
    } else {
      for (int c = 0; c < d; ++c) {
        const size_t at_t = (size_t(c) * kBlock + col) * e;
        if (t == KVType::F32) {
          std::memcpy(kr + 4 * size_t(c), &kh[c], 4);
          std::memcpy(vr + 4 * size_t(c), &vh[c], 4);
          std::memcpy(kt + at_t, &kh[c], 4);
        } else {
          const uint16_t kb = f32_to_bf16(kh[c]), vb = f32_to_bf16(vh[c]);
          std::memcpy(kr + 2 * size_t(c), &kb, 2);
          std::memcpy(vr + 2 * size_t(c), &vb, 2);
          std::memcpy(kt + at_t, &kb, 2);
        }
      }
    }
    // The sum of the values as stored.
    double* sum = &vsum64_[(size_t(layer) * shape_.n_kv_heads + h) * d];
    float* sum32 = &vsum_[(size_t(layer) * shape_.n_kv_heads + h) * d];
    for (int c = 0; c < d; ++c) {
      sum[c] += kv_row_elem(vr, t, d, 0, c);
      sum32[c] = float(sum[c]);
    }
  }
  len_[layer] = pos + 1;
}

}  // namespace sparq
