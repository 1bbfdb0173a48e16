// Linear: bf16 weights are stored once, in the layout of matvec.h (oneDNN's
// BA16a64b2a). Decode rows (one per sequence) go through our own
// matrix-vector kernels, prompt rows through oneDNN's matmul on the same
// memory; should oneDNN refuse that layout on some CPU, our kernels take
// prompt rows too. f32 weights stay in the layout oneDNN picks for M = 1, and
// oneDNN runs every product on them. Quantized weights (q8_0, q4_0) sit in
// matvec_quant.h's layout: decode rows run on our int8 kernels; prompt rows
// too, or (set_quant_prompt) on oneDNN's bf16 matmul over tiles of the
// weights dequantized to bf16 a few MiB at a time.
#include "sparq/kernels/matmul.h"

#include <omp.h>

#include <atomic>
#include <cstring>
#include <map>
#include <vector>

#include <dnnl.hpp>

#include "sparq/io/big_buffer.h"
#include "sparq/kernels/matvec.h"
#include "sparq/kernels/matvec_quant.h"
#include "sparq/kernels/ops.h"
#include "sparq/kernels/widen.h"
#include "sparq/util/cpu.h"
#include "sparq/util/work_team.h"

namespace sparq {

using dt = dnnl::memory::data_type;
using tag = dnnl::memory::format_tag;

namespace {

// oneDNN picks its own kernels from the CPU; below the avx512bf16 tier it is
// held to that tier's instructions, so a forced tier runs as on such a CPU.
// It can be held only before its first primitive: SPARQ_CPU or --cpu must
// come before the first layer is built.
void limit_onednn_isa() {
  switch (cpu_tier()) {
    case CpuTier::portable: dnnl::set_max_cpu_isa(dnnl::cpu_isa::sse41); break;
    case CpuTier::avx2: dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx2); break;
    case CpuTier::avx512: dnnl::set_max_cpu_isa(dnnl::cpu_isa::avx512_core); break;
    case CpuTier::avx512bf16: break;
  }
}

dnnl::engine& cpu_engine() {
  static dnnl::engine eng = [] {
    limit_onednn_isa();
    return dnnl::engine(dnnl::engine::kind::cpu, 0);
  }();
  return eng;
}

// Offset (in elements) that index i of dimension dim adds in a blocked
// layout: its outer block times the dimension's stride, plus its place in each
// inner block of that dimension. Offsets of an element sum over dimensions.
int64_t blocked_offset(const dnnl_blocking_desc_t& b, int dim, int64_t i) {
  int64_t block = 1;
  for (int j = 0; j < b.inner_nblks; ++j)
    if (b.inner_idxs[j] == dim) block *= b.inner_blks[j];
  int64_t off = i / block * b.strides[dim], rem = i % block, inner_stride = 1;
  for (int j = b.inner_nblks - 1; j >= 0; --j) {
    if (b.inner_idxs[j] == dim) {
      off += rem % b.inner_blks[j] * inner_stride;
      rem /= b.inner_blks[j];
    }
    inner_stride *= b.inner_blks[j];
  }
  return off;
}

bool is_reference_impl(const dnnl::matmul::primitive_desc& pd) {
  return std::strncmp(pd.impl_info_str(), "ref", 3) == 0;
}

size_t round64(size_t n) { return (n + 63) / 64 * 64; }

// Bytes of bf16 weights a quantized layer dequantizes at a time for prompt
// rows: a tile stays in the last-level cache while oneDNN reads it.
constexpr size_t kTileBytes = size_t(16) << 20;

// From this many prompt rows on, a bf16 layer that oneDNN cannot multiply in
// bf16 widens its weights to f32 tiles for oneDNN's f32 matmul; fewer rows
// stream the weights through the matrix-vector kernels.
constexpr int kWideRows = 8;

// oneDNN's type for F32 or BF16 weights.
dt dnnl_type(WeightFormat f) { return f == WeightFormat::BF16 ? dt::bf16 : dt::f32; }
dt dnnl_type(DType t) { return t == DType::BF16 ? dt::bf16 : dt::f32; }
QuantFormat quant_format(WeightFormat f) { return f == WeightFormat::Q8_0 ? QuantFormat::Q8_0 : QuantFormat::Q4_0; }

dnnl::matmul::primitive_desc matmul_pd(int N, int K, int M, dt type, const dnnl::memory::desc& w) {
  const dnnl::memory::desc src({M, K}, type, tag::ab), dst({M, N}, dt::f32, tag::ab);
  return dnnl::matmul::primitive_desc(dnnl::matmul::desc(src, w, dst), cpu_engine());
}

// The layout the weights are stored in: matvec.h's for bf16, oneDNN's pick
// for M = 1 for f32.
dnnl::memory::desc stored_weights_desc(int N, int K, dt type) {
  if (type == dt::bf16) return dnnl::memory::desc({K, N}, type, tag::BA16a64b2a);
  return matmul_pd(N, K, 1, type, dnnl::memory::desc({K, N}, type, tag::any)).weights_desc();
}

void check_args(int N, int K, WeightFormat f) {
  if (N <= 0 || K <= 0) fail("linear layer: bad weight shape {} x {}", N, K);
  if (is_quantized(f) && K % kQuantBlock != 0)
    fail("linear layer {} x {}: {} needs a multiple of {} columns", N, K, weight_format_name(f), kQuantBlock);
}

// Groups of rows handed to threads as they come free, in runs of consecutive
// groups (about 4 runs a thread): within a run the kernels' prefetch flows on
// into the next group instead of starting each one cold, and a thread the OS
// holds back delays at most one run. Decode rows run on the work team;
// prompt rows on OpenMP's threads, which run oneDNN's products and the
// prompt's attention beside them (handing over between the two sets of
// threads took 12% off llama-27m-prose's q4_0 pp512).
enum class Pool { team, openmp };

template <class F>
void over_groups(int groups, Pool pool, F&& f) {
  const int threads = std::min(team_threads(), groups);  // 1 inside an item or an OpenMP region
  const int run = std::max(1, groups / (4 * threads));
  if (pool == Pool::team) {
    parallel_items((groups + run - 1) / run, [&](int i) {
      for (int b = i * run; b < std::min(groups, (i + 1) * run); ++b) f(b);
    });
    return;
  }
#pragma omp parallel for schedule(dynamic, run) num_threads(threads) if (threads > 1)
  for (int b = 0; b < groups; ++b) f(b);
}

std::atomic<QuantPrompt> g_quant_prompt{QuantPrompt::automatic};

}  // namespace

void set_quant_prompt(QuantPrompt p) { g_quant_prompt.store(p); }

bool quant_prompt_tiles() {
  switch (g_quant_prompt.load()) {
    case QuantPrompt::tiles: return true;
    case QuantPrompt::int8: return false;
    case QuantPrompt::automatic: break;
  }
  static const bool amx = [] {
    const auto isa = unsigned(dnnl::get_effective_cpu_isa()), amx_isa = unsigned(dnnl_cpu_isa_avx512_core_amx);
    return (isa & amx_isa) == amx_isa;
  }();
  return amx;
}

const char* weight_format_name(WeightFormat f) {
  switch (f) {
    case WeightFormat::F32: return "f32";
    case WeightFormat::BF16: return "bf16";
    case WeightFormat::Q8_0: return "q8_0";
    case WeightFormat::Q4_0: return "q4_0";
  }
  return "?";
}

bool is_quantized(WeightFormat f) { return f == WeightFormat::Q8_0 || f == WeightFormat::Q4_0; }

double weight_format_bytes(WeightFormat f) {
  if (!is_quantized(f)) return f == WeightFormat::F32 ? 4 : 2;
  return double(quant_record_bytes(quant_format(f))) / (kMatvecBlock * kQuantBlock);
}

WeightArena::WeightArena(size_t bytes)
    : base_(static_cast<char*>(alloc_big(bytes, "the model's weights"))), size_(bytes) {}
WeightArena::~WeightArena() { std::free(base_); }

void* WeightArena::take(size_t bytes) {
  const size_t n = round64(bytes);
  if (n > size_ - used_) fail("weight arena: {} bytes wanted, {} of {} left", bytes, size_ - used_, size_);
  void* p = base_ + used_;
  used_ += n;
  return p;
}

struct Linear::Impl {
  // One matmul for a given M, with memory objects whose data handles are
  // pointed at the caller's buffers on each call.
  struct Prim {
    dnnl::matmul matmul;
    dnnl::memory src, dst;
    bool reference = false;   // oneDNN's slow reference implementation
    bool row_by_row = false;  // f32: runs M rows through the M = 1 primitive
    bool own = false;         // bf16: oneDNN has no fast kernel here, matvec.h's take the rows
  };

  WeightFormat format = WeightFormat::BF16;
  dt type = dt::bf16;
  PackedQuant quant;                          // q8_0 / q4_0: the weights
  std::unique_ptr<uint8_t[]> quant_own;       // ... when no arena holds them
  dnnl::stream stream{cpu_engine()};
  dnnl::memory weights;
  std::map<int, Prim> prims;     // by M; cleared when the thread count changes
  int prims_threads = 0;         // omp_get_max_threads() the prims were made for
  std::vector<int64_t> k_offset;  // blocked_offset of each index of dimension 0 (K)

  // Quantized layers' prompt rows: a matmul of M rows against a tile of
  // `cols` dequantized columns (oneDNN 2.6 has fast kernels only for dense
  // outputs: the tile's columns are copied into y after).
  struct TilePrim {
    dnnl::matmul matmul;
    dnnl::memory src, w, dst;
    bool usable = false;  // false: oneDNN refused, or has only its reference code
  };
  std::map<std::pair<int, int>, TilePrim> tile_prims;  // by (M, cols)

  // bf16 layers' prompt rows where oneDNN has no fast bf16 matmul (CPUs
  // without AVX512_BF16): tiles of the stored weights widened to f32
  // (widen.h; oneDNN's own reorder of that layout is its slow reference
  // code), then its f32 matmul, which such CPUs run near their FMA peak (our
  // matrix-vector kernels are built to stream, not to reuse).
  std::map<std::pair<int, int>, TilePrim> wide_prims;  // by (M, cols)

  void check_threads() {
    const int threads = omp_get_max_threads();
    if (threads != prims_threads) {
      prims.clear();  // oneDNN sizes its work split at creation
      tile_prims.clear();
      wide_prims.clear();
      prims_threads = threads;
    }
  }

  // A tile's product: bf16 rows against a bf16 tile in the packed layout
  // (quantized layers), or f32 rows against an f32 tile of rows [cols][K]
  // (bf16 layers widened).
  TilePrim& tile_prim(int K, int M, int cols, dt tile_type) {
    check_threads();
    auto& cache = tile_type == dt::bf16 ? tile_prims : wide_prims;
    auto it = cache.find({M, cols});
    if (it != cache.end()) return it->second;
    TilePrim t;
    try {
      const dnnl::memory::desc src({M, K}, tile_type, tag::ab), w({K, cols}, tile_type, tile_type == dt::bf16 ? tag::BA16a64b2a : tag::ba),
          dst({M, cols}, dt::f32, tag::ab);
      const dnnl::matmul::primitive_desc pd(dnnl::matmul::desc(src, w, dst), cpu_engine());
      t = TilePrim{dnnl::matmul(pd), dnnl::memory(src, cpu_engine(), nullptr), dnnl::memory(w, cpu_engine(), nullptr),
                   dnnl::memory(dst, cpu_engine(), nullptr), !is_reference_impl(pd)};
    } catch (const dnnl::error&) {
      t = TilePrim{};
    }
    return cache.emplace(std::pair{M, cols}, std::move(t)).first->second;
  }

  Prim& prim(int N, int K, int M) {
    check_threads();
    auto it = prims.find(M);
    if (it != prims.end()) return it->second;
    Prim p;
    bool refused = false;  // no implementation takes the stored layout for this M
    try {
      const auto pd = matmul_pd(N, K, M, type, weights.get_desc());
      p = Prim{dnnl::matmul(pd), dnnl::memory(pd.src_desc(), cpu_engine(), nullptr),
               dnnl::memory(pd.dst_desc(), cpu_engine(), nullptr), is_reference_impl(pd)};
    } catch (const dnnl::error&) {
      if (M == 1 && type != dt::bf16) throw;
      refused = true;
    }
    if (type == dt::bf16) {
      if (refused || p.reference) {
        p = Prim{};
        p.own = true;
      }
    } else if (M > 1 && (refused || (p.reference && !prim(N, K, 1).reference))) {
      p = prim(N, K, 1);
      p.row_by_row = true;
    }
    return prims.emplace(M, std::move(p)).first->second;
  }

  // y[M][N] through matvec.h's kernels, x: [M][kp] bf16.
  PackedBf16 packed(int N, int K) const {
    return {static_cast<const uint16_t*>(weights.get_data_handle()), N, K, matvec_kp(K)};
  }

  // Columns of row groups [b0, b1) of y[M][N] through matvec.h's kernels.
  void matvec(int N, int K, const float* x, int M, float* y, int b0, int b1, Pool pool) const {
    thread_local std::vector<uint16_t> x_bf16;
    const int kp = matvec_kp(K);
    x_bf16.assign(size_t(M) * kp, 0);  // zeros past K meet the weights' zero padding
    for (int i = 0; i < M; ++i) ops::to_bf16(&x_bf16[size_t(i) * kp], x + size_t(i) * K, size_t(K));
    const uint16_t* xb = x_bf16.data();  // the caller's buffer, as the workers see it
    const PackedBf16 W = packed(N, K);
    over_groups(b1 - b0, pool, [&](int i) { matvec::matvec_bf16(W, xb, M, y, size_t(N), b0 + i, b0 + i + 1); });
  }

  // Columns of row groups [b0, b1) of y[M][N] through matvec_quant.h's kernels.
  void matvec_quant(const float* x, int M, float* y, int b0, int b1, Pool pool) const {
    thread_local QuantRows buffer;
    QuantRows& xq = buffer;  // the caller's: worker threads have their own thread_locals
    quantize_rows(x, M, quant.K, quant.format, xq);
    over_groups(b1 - b0, pool, [&](int i) { matvec::matvec_quant(quant, xq, y, size_t(quant.N), b0 + i, b0 + i + 1); });
  }

  // y[M][N] for prompt rows, tile by tile: fill(b, out) writes row group b
  // of the weights as the tile's type wants them (bf16: the packed layout;
  // f32: rows [64][K]), and oneDNN multiplies each tile; rest(b0, b1) takes
  // the row groups of a tile oneDNN has no fast kernel for.
  template <class Fill, class Rest>
  void tiled(int N, int K, const float* x, int M, float* y, dt tile_type, Fill&& fill, Rest&& rest) {
    const int blocks = (N + kMatvecBlock - 1) / kMatvecBlock;
    const size_t block_elems = size_t(tile_type == dt::bf16 ? matvec_kp(K) : K) * kMatvecBlock;
    const size_t elem_bytes = tile_type == dt::bf16 ? 2 : 4;
    const int chunk = std::max(1, int(kTileBytes / (block_elems * elem_bytes)));  // row groups per tile
    const int first_cols = std::min(N, chunk * kMatvecBlock);
    if (!tile_prim(K, M, first_cols, tile_type).usable) return rest(0, blocks);
    thread_local std::vector<uint16_t> x_bf16;
    thread_local std::vector<char> tile;
    thread_local std::vector<float> out;
    const void* src = x;
    if (tile_type == dt::bf16) {
      x_bf16.resize(size_t(M) * K);
      ops::to_bf16(x_bf16.data(), x, x_bf16.size());
      src = x_bf16.data();
    }
    tile.resize(size_t(std::min(chunk, blocks)) * block_elems * elem_bytes);
    char* t = tile.data();  // the caller's buffers, as the workers see them
    const bool whole = first_cols == N;  // one tile: oneDNN writes y itself
    if (!whole) out.resize(size_t(M) * first_cols);
    float* o = whole ? y : out.data();
    for (int b0 = 0; b0 < blocks; b0 += chunk) {
      const int b1 = std::min(blocks, b0 + chunk), n0 = b0 * kMatvecBlock, cols = std::min(N, b1 * kMatvecBlock) - n0;
      TilePrim& p = tile_prim(K, M, cols, tile_type);
      if (!p.usable) {  // a last, narrower tile
        rest(b0, b1);
        continue;
      }
      over_groups(b1 - b0, Pool::openmp, [&](int i) { fill(b0 + i, t + size_t(i) * block_elems * elem_bytes); });
      p.src.set_data_handle(const_cast<void*>(src));
      p.w.set_data_handle(t);
      p.dst.set_data_handle(o);
      p.matmul.execute(stream, {{DNNL_ARG_SRC, p.src}, {DNNL_ARG_WEIGHTS, p.w}, {DNNL_ARG_DST, p.dst}});
      stream.wait();
      if (!whole)
        for (int m = 0; m < M; ++m)
          std::memcpy(y + size_t(m) * N + n0, o + size_t(m) * cols, size_t(cols) * sizeof(float));
    }
  }

  // Prompt rows on quantized weights, dequantized a tile at a time: to bf16
  // for oneDNN's bf16 matmul at the avx512bf16 tier, else to f32 (exact).
  void quant_prompt(const float* x, int M, float* y) {
    const int K = quant.K;
    auto rest = [&](int b0, int b1) { matvec_quant(x, M, y, b0, b1, Pool::openmp); };
    if (cpu_tier() == CpuTier::avx512bf16)
      return tiled(quant.N, K, x, M, y, dt::bf16, [&](int b, char* out) {
        matvec::dequantize_bf16(quant, b, b + 1, reinterpret_cast<uint16_t*>(out));
      }, rest);
    tiled(quant.N, K, x, M, y, dt::f32, [&](int b, char* out) {
      const int n0 = b * kMatvecBlock, rows = std::min(kMatvecBlock, quant.N - n0);
      for (int r = 0; r < rows; ++r) dequantize_row(quant, n0 + r, reinterpret_cast<float*>(out) + size_t(r) * K);
    }, rest);
  }

  // Prompt rows of a bf16 layer where oneDNN does not multiply bf16 (below
  // the avx512bf16 tier): tiles widened to f32 for its f32 matmul.
  // The activations are rounded to bf16 as on the other paths, so a bf16
  // layer's result does not depend on the tier beyond the order of its sums.
  void wide_prompt(int N, int K, const float* x, int M, float* y) {
    const PackedBf16 W = packed(N, K);
    thread_local std::vector<float> x_round;
    x_round.resize(size_t(M) * K);
    for (size_t i = 0; i < x_round.size(); ++i) x_round[i] = bf16_to_f32(f32_to_bf16(x[i]));
    tiled(N, K, x_round.data(), M, y, dt::f32, [&](int b, char* out) { widen_block(W, b, reinterpret_cast<float*>(out)); },
          [&](int b0, int b1) { matvec(N, K, x, M, y, b0, b1, Pool::openmp); });
  }

  void run(Prim& p, const void* x, float* y) {
    p.src.set_data_handle(const_cast<void*>(x));
    p.dst.set_data_handle(y);
    p.matmul.execute(stream, {{DNNL_ARG_SRC, p.src}, {DNNL_ARG_WEIGHTS, weights}, {DNNL_ARG_DST, p.dst}});
    stream.wait();
  }
};

size_t Linear::arena_bytes(int N, int K, WeightFormat format) {
  check_args(N, K, format);
  if (is_quantized(format)) return round64(PackedQuant{nullptr, quant_format(format), N, K}.bytes());
  try {
    return round64(stored_weights_desc(N, K, dnnl_type(format)).get_size());
  } catch (const dnnl::error& e) {
    fail("linear layer {} x {} ({}): oneDNN failed: {}", N, K, weight_format_name(format), e.what());
  }
}

Linear::Linear(const void* w, DType w_type, int N, int K, WeightFormat format, WeightArena* arena)
    : N_(N), K_(K), impl_(std::make_unique<Impl>()) {
  check_args(N, K, format);
  if (w_type == DType::F16) fail("linear layer: f16 weights are not supported (widen them to f32)");
  Impl& im = *impl_;
  im.format = format;
  if (is_quantized(format)) {
    PackedQuant& W = im.quant;
    W = PackedQuant{nullptr, quant_format(format), N, K};
    uint8_t* out = nullptr;
    if (arena) {
      out = static_cast<uint8_t*>(arena->take(W.bytes()));
    } else {
      im.quant_own.reset(new uint8_t[W.bytes()]);
      out = im.quant_own.get();
    }
    std::memset(out, 0, W.bytes());
    // A group of 64 rows at a time, widened to f32 (quantizing is all the
    // work a quantized model's load does).
    const auto* w16 = static_cast<const uint16_t*>(w);
    // On the team: a weight it refuses comes out as an exception, which would
    // end the program inside an OpenMP loop.
    over_groups(W.blocks(), Pool::team, [&](int b) {
      const int n0 = b * kMatvecBlock, n1 = std::min(N, n0 + kMatvecBlock);
      std::vector<float> rows(size_t(n1 - n0) * K);
      if (w_type == DType::BF16) {
        for (size_t i = 0; i < rows.size(); ++i) rows[i] = bf16_to_f32(w16[size_t(n0) * K + i]);
      } else {
        std::memcpy(rows.data(), static_cast<const float*>(w) + size_t(n0) * K, rows.size() * 4);
      }
      quantize_weights(rows.data(), n0, n1, W, out);
    });
    W.w = out;
    return;
  }
  im.type = dnnl_type(format);
  try {
    const dnnl::memory::desc wd = stored_weights_desc(N, K, im.type);
    // W is [N][K] row-major, i.e. the K x N weights matrix in "ba" order. The
    // reorder converts the type (f32 to bf16 rounds to nearest even) and
    // zero-fills padding.
    dnnl::memory plain({{K, N}, dnnl_type(w_type), tag::ba}, cpu_engine(), const_cast<void*>(w));
    im.weights = arena ? dnnl::memory(wd, cpu_engine(), arena->take(wd.get_size())) : dnnl::memory(wd, cpu_engine());
    dnnl::reorder(plain, im.weights).execute(im.stream, plain, im.weights);
    im.stream.wait();
    const dnnl_memory_desc_t& md = im.weights.get_desc().data;
    if (md.format_kind != dnnl_blocked) fail("linear layer {} x {}: oneDNN chose a non-blocked weight layout", N, K);
    if (im.type == dt::bf16 && (md.padded_dims[0] != matvec_kp(K) || md.padded_dims[1] % kMatvecBlock != 0))
      fail("linear layer {} x {}: oneDNN padded the weights to {} x {}", N, K, md.padded_dims[0], md.padded_dims[1]);
    im.k_offset.resize(size_t(K));
    for (int k = 0; k < K; ++k) im.k_offset[k] = md.offset0 + blocked_offset(md.format_desc.blocking, 0, k);
  } catch (const dnnl::error& e) {
    fail("linear layer {} x {} ({}): oneDNN failed: {}", N, K, weight_format_name(format), e.what());
  }
}

Linear::~Linear() = default;
Linear::Linear(Linear&&) noexcept = default;
Linear& Linear::operator=(Linear&&) noexcept = default;

WeightFormat Linear::format() const { return impl_->format; }

size_t Linear::weight_bytes() const {
  return is_quantized(impl_->format) ? impl_->quant.bytes() : impl_->weights.get_desc().get_size();
}

size_t Linear::row_bytes() const {
  switch (impl_->format) {
    case WeightFormat::F32: return size_t(K_) * 4;
    case WeightFormat::BF16: return size_t(K_) * 2;
    default: return impl_->quant.group_bytes() / kMatvecBlock;
  }
}

const void* Linear::weight_data() const {
  return is_quantized(impl_->format) ? static_cast<const void*>(impl_->quant.w) : impl_->weights.get_data_handle();
}

void Linear::row(int n, float* out) const {
  if (n < 0 || n >= N_) fail("linear layer: row {} is outside [0, {})", n, N_);
  const Impl& im = *impl_;
  if (is_quantized(im.format)) return dequantize_row(im.quant, n, out);
  const int64_t off = blocked_offset(im.weights.get_desc().data.format_desc.blocking, 1, n);
  const void* w = im.weights.get_data_handle();
  if (im.type == dt::bf16) {
    const auto* p = static_cast<const uint16_t*>(w) + off;
    for (int k = 0; k < K_; ++k) out[k] = bf16_to_f32(p[im.k_offset[k]]);
  } else {
    const auto* p = static_cast<const float*>(w) + off;
    for (int k = 0; k < K_; ++k) out[k] = p[im.k_offset[k]];
  }
}

void Linear::forward(const float* x, float* y, int M) const {
  if (M < 1) fail("linear layer: bad number of rows {}", M);
  Impl& im = *impl_;
  if (is_quantized(im.format)) {
    if (!quant_prompt_tiles()) return im.matvec_quant(x, M, y, 0, im.quant.blocks(), Pool::openmp);
    try {
      return im.quant_prompt(x, M, y);
    } catch (const dnnl::error& e) {
      fail("linear layer {} x {}, {} rows: oneDNN failed: {}", N_, K_, M, e.what());
    }
  }
  const void* src = x;
  if (im.type == dt::bf16) {
    // Activations converted for the bf16 product: one buffer for all layers.
    thread_local std::vector<uint16_t> x_bf16;
    if (cpu_tier() != CpuTier::avx512bf16 || im.prim(N_, K_, M).own) {
      if (M < kWideRows) return forward_decode(x, y, M);
      try {
        return im.wide_prompt(N_, K_, x, M, y);
      } catch (const dnnl::error& e) {
        fail("linear layer {} x {}, {} rows: oneDNN failed: {}", N_, K_, M, e.what());
      }
    }
    x_bf16.resize(size_t(M) * K_);
    ops::to_bf16(x_bf16.data(), x, size_t(M) * K_);
    src = x_bf16.data();
  }
  try {
    Impl::Prim& p = im.prim(N_, K_, M);
    if (!p.row_by_row) {
      im.run(p, src, y);
      return;
    }
    const size_t row_bytes = size_t(K_) * (im.type == dt::bf16 ? 2 : 4);
    for (int i = 0; i < M; ++i)
      im.run(p, static_cast<const char*>(src) + i * row_bytes, y + size_t(i) * N_);
  } catch (const dnnl::error& e) {
    fail("linear layer {} x {}, {} rows: oneDNN failed: {}", N_, K_, M, e.what());
  }
}

void Linear::forward_decode(const float* x, float* y, int M) const {
  if (M < 1) fail("linear layer: bad number of rows {}", M);
  const Impl& im = *impl_;
  if (is_quantized(im.format)) return im.matvec_quant(x, M, y, 0, im.quant.blocks(), Pool::team);
  if (im.type != dt::bf16) return forward(x, y, M);
  im.matvec(N_, K_, x, M, y, 0, im.packed(N_, K_).blocks(), Pool::team);
}

}  // namespace sparq
