#include "sparq/bandwidth.h"

#include <omp.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <memory>

#include "sparq/big_buffer.h"
#include "sparq/cpu.h"

namespace sparq {

namespace ref {
uint64_t read_checksum(const void* p, size_t n) {
  const auto* w = static_cast<const uint64_t*>(p);
  uint64_t a[8] = {};
  for (size_t i = 0; i < n / 8; i += 8) {
    if ((i + kReadAhead / 8) < n / 8) __builtin_prefetch(w + i + kReadAhead / 8);
    for (int j = 0; j < 8; ++j) a[j] ^= w[i + j];
  }
  return a[0] ^ a[1] ^ a[2] ^ a[3] ^ a[4] ^ a[5] ^ a[6] ^ a[7];
}
}  // namespace ref

double measure_read_bandwidth_gbs(int threads) {
  constexpr size_t kBytes = size_t(1) << 30;
  constexpr int kReps = 5;
  threads = std::max(1, threads);
  const std::unique_ptr<void, decltype(&std::free)> buf(alloc_big(kBytes, "the bandwidth probe"), &std::free);
  auto* base = static_cast<uint8_t*>(buf.get());
  const size_t chunk = kBytes / size_t(threads) / 256 * 256;  // per thread, whole 256-byte steps
  const bool avx = use_avx512();
  uint64_t sink = 0;
  double best = 0;
  // Each thread touches the part it will read, so pages sit near it.
#pragma omp parallel num_threads(threads)
  {
    const int t = omp_get_thread_num();
    std::memset(base + size_t(t) * chunk, t + 1, chunk);
  }
  for (int rep = 0; rep < kReps; ++rep) {
    const auto t0 = std::chrono::steady_clock::now();
#pragma omp parallel num_threads(threads) reduction(^ : sink)
    {
      const uint8_t* p = base + size_t(omp_get_thread_num()) * chunk;
      sink ^= avx ? avx512::read_checksum(p, chunk) : ref::read_checksum(p, chunk);
    }
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    best = std::max(best, double(chunk) * threads / s / 1e9);
  }
  volatile uint64_t keep = sink;  // the reads must not be optimised away
  (void)keep;
  return best;
}

}  // namespace sparq
