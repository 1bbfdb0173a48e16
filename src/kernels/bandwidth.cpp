#include "sparq/kernels/bandwidth.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "sparq/io/big_buffer.h"
#include "sparq/util/common.h"
#include "sparq/util/cpu.h"

namespace sparq {

namespace ref {
uint64_t read_checksum(const void* p, size_t n) {
  const auto* w = static_cast<const uint64_t*>(p);
  uint64_t a[8] = {};
  for (size_t i = 0; i < n / 8; i += 8) {
    if ((i + kReadAhead / 8) < n / 8) __builtin_prefetch(w + i + kReadAhead / 8, 0, 2);
    for (int j = 0; j < 8; ++j) a[j] ^= w[i + j];
  }
  return a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}
}  // namespace ref

namespace {

constexpr size_t kBytes = size_t(1) << 30;
constexpr int kReps = 5;

// The probe's buffer, split in per-thread chunks that each thread touches
// first, so pages sit near the thread that reads them.
struct Probe {
  std::unique_ptr<void, decltype(&std::free)> buf{alloc_big(kBytes, "the bandwidth probe"), &std::free};
  uint8_t* base = static_cast<uint8_t*>(buf.get());
  int threads;
  size_t chunk;  // per thread, whole 256-byte steps
  explicit Probe(int t) : threads(std::max(1, t)), chunk(kBytes / size_t(threads) / 256 * 256) {
#pragma omp parallel num_threads(threads)
    {
      const int i = omp_get_thread_num();
      std::memset(base + size_t(i) * chunk, i + 1, chunk);
    }
  }
};

uint64_t gather_checksum(const uint8_t* p, size_t row_bytes, const std::vector<uint32_t>& rows) {
  constexpr size_t kAhead = 32;
  uint64_t a = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    if (i + kAhead < rows.size()) {
      const uint8_t* f = p + rows[i + kAhead] * row_bytes;
      for (size_t o = 0; o < row_bytes; o += 64) __builtin_prefetch(f + o, 0, 2);  // into L2, as step 3
    }
    const auto* w = reinterpret_cast<const uint64_t*>(p + rows[i] * row_bytes);
    for (size_t j = 0; j < row_bytes / 8; j += 8) a ^= w[j];  // one word per cache line
  }
  return a;
}

}  // namespace

double measure_gather_bandwidth_gbs(int threads, int row_bytes, int every) {
  if (row_bytes < 64 || row_bytes % 64 != 0 || every < 1)
    fail("gather probe: rows must be a multiple of 64 bytes and every >= 1");
  const Probe pr(threads);
  const size_t n_rows = pr.chunk / size_t(row_bytes);
  std::vector<uint32_t> rows;
  uint64_t s = 0x9e3779b97f4a7c15ull;
  for (size_t r = 0; r + size_t(every) <= n_rows; r += size_t(every)) {
    s ^= s << 13, s ^= s >> 7, s ^= s << 17;  // xorshift: one row of each group of `every`
    rows.push_back(uint32_t(r + s % uint64_t(every)));
  }
  uint64_t sink = 0;
  double best = 0;
  for (int rep = 0; rep < kReps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(pr.threads) reduction(^ : sink)
    sink ^= gather_checksum(pr.base + size_t(omp_get_thread_num()) * pr.chunk, size_t(row_bytes), rows);
    const double t = seconds_since(t0);
    best = std::max(best, double(rows.size()) * row_bytes * pr.threads / t / 1e9);
  }
  volatile uint64_t keep = sink;
  (void)keep;
  return best;
}

uint64_t read_checksum(const void* p, size_t n) {
  using Read = uint64_t (*)(const void*, size_t);
  return for_tier<Read>(cpu_tier(), ref::read_checksum, avx2::read_checksum, avx512::read_checksum,
                        avx512bf16::read_checksum)(p, n);
}

double measure_read_bandwidth_gbs(int threads) {
  const Probe pr(threads);
  const size_t chunk = pr.chunk;
  uint8_t* base = pr.base;
  uint64_t sink = 0;
  double best = 0;
  threads = pr.threads;
  for (int rep = 0; rep < kReps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(^ : sink)
    {
      const uint8_t* p = base + size_t(omp_get_thread_num()) * chunk;
      sink ^= read_checksum(p, chunk);
    }
    const double s = seconds_since(t0);
    best = std::max(best, double(chunk) * threads / s / 1e9);
  }
  volatile uint64_t keep = sink;  // the reads must not be optimised away
  (void)keep;
  return best;
}

}  // namespace sparq
