// The Llama forward pass. Read Model::forward top to bottom: embed, then per
// layer RMSNorm -> fused QKV -> RoPE -> cache -> attention -> O -> residual,
// RMSNorm -> fused gate/up -> SiLU*up -> down -> residual; final norm, logits.
#include "sparq/model/model.h"

#include <algorithm>
#include <array>
#include <chrono>
#include <malloc.h>
#include <omp.h>

#include <cmath>
#include <functional>

#include "sparq/kernels/matvec_quant.h"
#include "sparq/kernels/ops.h"
#include "sparq/io/safetensors.h"
#include "sparq/util/random.h"

namespace sparq {
namespace {

using Clock = std::chrono::steady_clock;

// The MLP runs over blocks of at most this many rows: its hidden activations
// (2 * intermediate floats a row) would be a prompt batch's largest buffer.
constexpr int kMlpRows = 128;

using Data = WeightStore::Data;

// Stacks matrices with the same column count into one [sum rows][cols], in
// their shared type (f32 if the types differ).
Data stack(std::initializer_list<const Data*> parts) {
  Data out;
  out.type = parts.begin()[0]->type;
  for (const Data* p : parts)
    if (p->type != out.type) out.type = DType::F32;
  for (const Data* p : parts) {
    if (p->type == out.type) {
      out.bytes.insert(out.bytes.end(), p->bytes.begin(), p->bytes.end());
      continue;
    }
    const size_t n = p->bytes.size() / 2, at = out.bytes.size();  // bf16 to f32
    out.bytes.resize(at + n * 4);
    convert_to_f32(p->bytes.data(), DType::BF16, reinterpret_cast<float*>(out.bytes.data() + at), n);
  }
  return out;
}

struct Shape {
  int64_t N, K;  // a weight matrix [N][K]
};

Linear linear(const Data& w, Shape s, WeightFormat f, WeightArena& arena) {
  return Linear(w.bytes.data(), w.type, int(s.N), int(s.K), f, &arena);
}

size_t arena_bytes(Shape s, WeightFormat f) { return Linear::arena_bytes(int(s.N), int(s.K), f); }

// A layer's matrices, as Layer holds them: [q; k; v], o, [gate; up], down.
// The arena is sized from this list and the layers are built from it.
std::array<Shape, 4> layer_shapes(const ModelConfig& c) {
  const int64_t H = c.hidden_size, q_rows = int64_t(c.n_heads) * c.head_dim, I = c.intermediate_size;
  return {Shape{q_rows + 2 * int64_t(c.n_kv_heads) * c.head_dim, H}, Shape{H, q_rows}, Shape{2 * I, H}, Shape{H, I}};
}

// y = x . W^T for M rows, decode rows (is_decode(i)) through the layer's
// decode kernels and prompt rows through its prompt path, run by run, so a
// row's result never depends on what else is in the batch.
template <class IsDecode>
void project(const Linear& L, const float* x, float* y, int M, IsDecode is_decode) {
  for (int i = 0; i < M;) {
    const bool d = is_decode(i);
    int j = i + 1;
    while (j < M && is_decode(j) == d) ++j;
    const float* xi = x + size_t(i) * L.cols();
    float* yi = y + size_t(i) * L.rows();
    d ? L.forward_decode(xi, yi, j - i) : L.forward(xi, yi, j - i);
    i = j;
  }
}

}  // namespace

// Where a model's tensors come from: a checkpoint's files, or seeded random
// values for a shape (bench --shape).
struct Model::Source {
  std::function<Data(const std::string&, const std::vector<int64_t>&)> matrix;
  std::function<std::vector<float>(const std::string&, const std::vector<int64_t>&)> vector;
};

std::unique_ptr<Model> Model::load(const std::string& path, const LoadOptions& opt) {
  const ModelFiles files = resolve_model_files(path);
  auto m = std::unique_ptr<Model>(new Model());
  m->cfg_ = ModelConfig::load(files.config);
  m->tok_ = std::make_unique<Tokenizer>(Tokenizer::load(files.tokenizer));
  if (m->tok_->vocab_size() > m->cfg_.vocab_size)
    fail("tokenizer has {} tokens but the model's vocab_size is {}", m->tok_->vocab_size(), m->cfg_.vocab_size);
  const WeightStore w(files.safetensors);
  m->build(Source{[&](const std::string& name, const std::vector<int64_t>& shape) { return w.get_data(name, shape); },
                  [&](const std::string& name, const std::vector<int64_t>& shape) { return w.get_f32(name, shape); }},
           opt);
  w.check_unchanged();  // weights read from a file rewritten meanwhile would be a mix
  return m;
}

std::unique_ptr<Model> Model::random(const ModelConfig& cfg, const LoadOptions& opt, uint64_t seed) {
  auto m = std::unique_ptr<Model>(new Model());
  m->cfg_ = cfg;
  // Uniform in +-sqrt(3 / K): each product of a unit-variance input has
  // unit variance, so activations stay finite through any number of layers.
  auto matrix = [&](const std::string& name, const std::vector<int64_t>& shape) {
    Data d{DType::BF16, std::vector<uint8_t>(size_t(shape[0] * shape[1]) * 2)};
    const float scale = name.find("embed") != std::string::npos ? 1.0f : std::sqrt(3.0f / float(shape[1]));
    fill_random_bf16(reinterpret_cast<uint16_t*>(d.bytes.data()), d.bytes.size() / 2, scale,
                     seed ^ std::hash<std::string>{}(name));
    return d;
  };
  auto vector = [](const std::string&, const std::vector<int64_t>& shape) {
    return std::vector<float>(size_t(shape[0]), 1.0f);  // norms: identity weights
  };
  m->build(Source{matrix, vector}, opt);
  return m;
}

void Model::build(const Source& w, const LoadOptions& opt) {
  const ModelConfig& c = cfg_;
  const int64_t H = c.hidden_size, D = c.head_dim, I = c.intermediate_size, V = c.vocab_size;
  const int64_t q_rows = c.n_heads * D, kv_rows = c.n_kv_heads * D;
  const WeightFormat wt = opt.weight_format;
  const WeightFormat table_format = is_quantized(wt) ? WeightFormat::Q8_0 : wt;
  if (is_quantized(wt))
    for (auto [name, cols] : {std::pair{"hidden_size", H}, {"n_heads * head_dim", q_rows}, {"intermediate_size", I}})
      if (cols % kQuantBlock != 0)
        fail("--dtype {}: {} = {} is not a multiple of the {}-weight block", weight_format_name(wt), name, cols,
             kQuantBlock);

  final_norm_ = w.vector("model.norm.weight", {H});
  inv_freq_ = c.rope_inv_freq();
  const Shape table{V, H};
  const std::array<Shape, 4> shapes = layer_shapes(c);
  size_t arena = arena_bytes(table, table_format) * (c.tie_word_embeddings ? 1 : 2);
  for (const Shape& sh : shapes) arena += size_t(c.n_layers) * arena_bytes(sh, wt);
  arena_ = std::make_unique<WeightArena>(arena);
  WeightArena& a = *arena_;
  {
    const Data embed = w.matrix("model.embed_tokens.weight", {V, H});
    if (c.tie_word_embeddings) {
      lm_head_ = std::make_unique<Linear>(linear(embed, table, table_format, a));  // embed() reads its rows
    } else {
      lm_head_ = std::make_unique<Linear>(linear(w.matrix("lm_head.weight", {V, H}), table, table_format, a));
      embed_ = std::make_unique<Linear>(linear(embed, table, table_format, a));
    }
  }
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = fmt::format("model.layers.{}.", l);
    auto get = [&](const char* name, std::vector<int64_t> shape) { return w.matrix(p + name, shape); };
    const Data q = get("self_attn.q_proj.weight", {q_rows, H});
    const Data k = get("self_attn.k_proj.weight", {kv_rows, H});
    const Data v = get("self_attn.v_proj.weight", {kv_rows, H});
    const Data gate = get("mlp.gate_proj.weight", {I, H});
    const Data up = get("mlp.up_proj.weight", {I, H});
    layers_.push_back(Layer{
        w.vector(p + "input_layernorm.weight", {H}),
        w.vector(p + "post_attention_layernorm.weight", {H}),
        linear(stack({&q, &k, &v}), shapes[0], wt, a),
        linear(get("self_attn.o_proj.weight", {H, q_rows}), shapes[1], wt, a),
        linear(stack({&gate, &up}), shapes[2], wt, a),
        linear(get("mlp.down_proj.weight", {H, I}), shapes[3], wt, a),
    });
  }
  // The loading buffers are freed but glibc keeps their pages: hand them back.
  malloc_trim(0);
}

const Tokenizer& Model::tokenizer() const {
  if (!tok_) fail("this model has no tokenizer (a random-weight shape)");
  return *tok_;
}

KVShape Model::kv_shape(int capacity, KVType kv_type) const {
  return KVShape{cfg_.n_layers, cfg_.n_kv_heads, cfg_.head_dim, capacity, kv_type};
}

size_t Model::memory_bytes() const { return weight_bytes() + (embed_ ? embed_->weight_bytes() : 0); }

size_t Model::weight_bytes() const {
  size_t b = lm_head_->weight_bytes();
  for (const Layer& L : layers_)
    b += L.qkv.weight_bytes() + L.o.weight_bytes() + L.gate_up.weight_bytes() +
         L.down.weight_bytes();
  return b;
}

void Model::embed(int token, float* out) const {
  if (token < 0 || token >= cfg_.vocab_size)
    fail("token id {} is outside the vocabulary (size {})", token, cfg_.vocab_size);
  (embed_ ? *embed_ : *lm_head_).row(token, out);
}

// xb_: normed input, then attention's output; qkv_: q, k, v, then the output
// projection's result. Reusing them keeps a prompt batch's buffers small, and
// a prompt batch's megabytes go back once rows drop below a quarter of them,
// so a long decode does not hold them on top of a full cache.
void Model::size_activations(int M) {
  const ModelConfig& c = cfg_;
  const int H = c.hidden_size, QKV = (c.n_heads + 2 * c.n_kv_heads) * c.head_dim;
  if (x_.capacity() > 4 * size_t(M) * H) {
    for (std::vector<float>* v : {&x_, &xb_, &qkv_, &hb_}) std::vector<float>().swap(*v);
    malloc_trim(0);  // freed blocks inside the heap stay resident otherwise
  }
  x_.resize(size_t(M) * H);
  xb_.resize(size_t(M) * std::max(H, c.n_heads * c.head_dim));
  qkv_.resize(size_t(M) * std::max(QKV, H));
  hb_.resize(size_t(std::min(M, kMlpRows)) * 2 * c.intermediate_size);
}

void Model::forward(std::span<const Row> rows, float* logits, ForwardStats* stats) {
  const ModelConfig& c = cfg_;
  const int M = int(rows.size());
  const int H = c.hidden_size, D = c.head_dim, NH = c.n_heads, NKV = c.n_kv_heads;
  const int QKV = (NH + 2 * NKV) * D, I = c.intermediate_size;
  size_activations(M);
  ForwardStats local;
  ForwardStats& st = stats ? *stats : local;
  if (st.attn_layers.size() < size_t(c.n_layers)) st.attn_layers.resize(c.n_layers);

  auto decode_row = [&](int i) { return rows[i].decode != nullptr; };
  const auto t_start = Clock::now();
  const bool decode_only = std::all_of(rows.begin(), rows.end(), [](const Row& r) { return r.decode != nullptr; });
  const int user_threads = omp_get_max_threads();
  if (decode_only) {
    const int n = governor_on_ ? governor_.pick(user_threads) : user_threads;
    omp_set_num_threads(n);
    ++st.decode_steps;
    if (n < user_threads) ++st.steps_fewer_threads;
  }
  auto t0 = Clock::now();
  for (int i = 0; i < M; ++i) embed(rows[i].token, &x_[size_t(i) * H]);
  st.t_embed += seconds_since(t0);

  for (int l = 0; l < c.n_layers; ++l) {
    Layer& L = layers_[l];
    t0 = Clock::now();
    for (int i = 0; i < M; ++i)
      ops::rmsnorm(&xb_[size_t(i) * H], &x_[size_t(i) * H], L.attn_norm.data(), H, c.rms_norm_eps);
    project(L.qkv, xb_.data(), qkv_.data(), M, decode_row);
    for (int i = 0; i < M; ++i) {
      float* q = &qkv_[size_t(i) * QKV];
      float* k = q + NH * D;
      ops::rope(q, NH, D, rows[i].pos, inv_freq_.data());
      ops::rope(k, NKV, D, rows[i].pos, inv_freq_.data());
      rows[i].cache->store(l, rows[i].pos, k, k + NKV * D);
    }
    st.t_qkv += seconds_since(t0);

    // Decode rows with the same setting go through the decode attention
    // together; each run of prompt rows of one sequence gets dense causal attention.
    t0 = Clock::now();
    for (int i = 0; i < M;) {
      const Row& r = rows[i];
      int j = i + 1;
      if (r.decode) {
        i = j;
        continue;
      }
      while (j < M && !rows[j].decode && rows[j].cache == r.cache) ++j;
      attention_prefill(*r.cache, l, r.pos, j - i, NH, &qkv_[size_t(i) * QKV], QKV, &xb_[size_t(i) * NH * D]);
      i = j;
    }
    decode_done_.assign(size_t(M), false);
    for (int i = 0; i < M; ++i) {
      if (!rows[i].decode || decode_done_[i]) continue;
      decode_queries_.clear();
      for (int j = i; j < M; ++j)
        if (rows[j].decode == rows[i].decode) {
          decode_done_[j] = true;
          decode_queries_.push_back(DecodeQuery{rows[j].cache, rows[j].pos + 1, &qkv_[size_t(j) * QKV],
                                                &xb_[size_t(j) * NH * D]});
        }
      AttnCounters group;
      attention_decode(decode_queries_, l, NH, *rows[i].decode, &group);
      st.attn_layers[l].add(group);
      st.by_setting[rows[i].decode].add(group);
    }
    st.t_attn += seconds_since(t0);

    t0 = Clock::now();
    project(L.o, xb_.data(), qkv_.data(), M, decode_row);
    ops::add(x_.data(), qkv_.data(), M * H);
    st.t_out += seconds_since(t0);

    t0 = Clock::now();
    for (int i = 0; i < M; ++i)
      ops::rmsnorm(&xb_[size_t(i) * H], &x_[size_t(i) * H], L.mlp_norm.data(), H, c.rms_norm_eps);
    for (int r0 = 0; r0 < M; r0 += kMlpRows) {
      const int m = std::min(kMlpRows, M - r0);
      float* xr = &xb_[size_t(r0) * H];  // the block's input, then its output
      auto block_row = [&](int i) { return decode_row(r0 + i); };
      project(L.gate_up, xr, hb_.data(), m, block_row);
      for (int i = 0; i < m; ++i) {
        float* g = &hb_[size_t(i) * 2 * I];
        ops::silu_mul(g, g + I, I);
        if (i > 0) std::copy_n(g, I, &hb_[size_t(i) * I]);  // packed in place: that slot held rows already used
      }
      project(L.down, hb_.data(), xr, m, block_row);
    }
    ops::add(x_.data(), xb_.data(), M * H);
    st.t_mlp += seconds_since(t0);
  }

  t0 = Clock::now();
  int n_out = 0;
  out_decode_.clear();
  for (int i = 0; i < M; ++i)
    if (rows[i].logits) {
      ops::rmsnorm(&xb_[size_t(n_out++) * H], &x_[size_t(i) * H], final_norm_.data(), H, c.rms_norm_eps);
      out_decode_.push_back(decode_row(i));
    }
  project(*lm_head_, xb_.data(), logits, n_out, [&](int i) { return out_decode_[size_t(i)] != 0; });
  st.t_logits += seconds_since(t0);
  st.weight_bytes += weight_bytes();
  st.b_embed += uint64_t(M) * (embed_ ? *embed_ : *lm_head_).row_bytes();
  for (const Layer& L : layers_) {
    st.b_qkv += L.qkv.weight_bytes();
    st.b_out += L.o.weight_bytes();
    st.b_mlp += L.gate_up.weight_bytes() + L.down.weight_bytes();
  }
  if (n_out > 0) st.b_logits += lm_head_->weight_bytes();
  st.attn = AttnCounters{};
  for (const AttnCounters& a : st.attn_layers) st.attn.add(a);
  if (decode_only) {
    if (governor_on_) governor_.record(seconds_since(t_start));
    omp_set_num_threads(user_threads);
  }
}

}  // namespace sparq
