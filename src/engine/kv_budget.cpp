#include "sparq/engine/kv_budget.h"

#include <algorithm>
#include <fstream>
#include <string>

namespace sparq {

size_t available_memory() {
  std::ifstream f("/proc/meminfo");
  std::string key, unit;
  size_t value = 0;
  while (f >> key >> value >> unit)
    if (key == "MemAvailable:") return value * 1024;
  return 0;
}

namespace {

// KV caches get at most this share of the memory available when they are
// made; the rest is left for activations and the rest of the system.
size_t kv_budget(size_t available) { return available / 10 * 8; }

// Bytes of the caches of these shapes together.
size_t bytes_of(std::span<const KVShape> shapes) {
  size_t sum = 0;
  for (const KVShape& s : shapes) sum += KVCache::bytes_needed(s);
  return sum;
}

// n sequences at ctx `capacity` needing `need` bytes in all.
void check_bytes_fit(size_t need, size_t n, int capacity, size_t available) {
  // available 0: unknown, so the allocation decides.
  if (available == 0 || n == 0 || need <= kv_budget(available)) return;
  const double gib = 1024.0 * 1024 * 1024;
  if (n == 1)
    fail("the KV cache for ctx {} needs {:.2f} GiB (incl. transposed K) but only {:.2f} GiB is available "
         "(20% kept spare; lower -c)", capacity, need / gib, available / gib);
  fail("the KV caches of {} sequences at ctx {} need {:.2f} GiB (incl. transposed K) but only {:.2f} GiB "
       "is available (20% kept spare; lower -c or --parallel)", n, capacity, need / gib, available / gib);
}

}  // namespace

void check_kv_fits(std::span<const KVShape> sequences, size_t available) {
  if (!sequences.empty()) check_bytes_fit(bytes_of(sequences), sequences.size(), sequences[0].capacity, available);
}

void check_kv_fits(const KVShape& one, int n, size_t available) {
  const size_t count = size_t(std::max(n, 1));
  check_bytes_fit(KVCache::bytes_needed(one) * count, count, one.capacity, available);
}

int default_context(const KVShape& at_trained, size_t available) {
  KVShape s = at_trained;
  while (available > 0 && s.capacity > 1 && KVCache::bytes_needed(s) > kv_budget(available)) s.capacity /= 2;
  return s.capacity;
}

int parallel_that_fits(std::span<const KVShape> one_job, int cap) {
  const size_t available = available_memory();
  if (available == 0) return std::max(1, std::min(cap, 4));
  check_kv_fits(one_job, available);
  const size_t fit = kv_budget(available) / std::max<size_t>(bytes_of(one_job), 1);
  return int(std::min<size_t>(fit, size_t(std::max(cap, 1))));
}

int parallel_that_fits(const KVShape& one, int cap) { return parallel_that_fits({&one, 1}, cap); }

}  // namespace sparq
