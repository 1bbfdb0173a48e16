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

}  // namespace

void check_kv_fits(const KVShape& one, int n, size_t available) {
  const size_t per = KVCache::bytes_needed(one);
  if (available == 0) return;  // unknown: let the allocation decide
  const double gib = 1024.0 * 1024 * 1024;
  if (n <= 1 && per > kv_budget(available))
    fail("the KV cache for ctx {} needs {:.2f} GiB (incl. transposed K) but only {:.2f} GiB is available "
         "(20% kept spare; lower -c)", one.capacity, per / gib, available / gib);
  if (n > 1 && (per > kv_budget(available) / size_t(n)))
    fail("the KV caches of {} sequences at ctx {} need {:.2f} GiB (incl. transposed K) but only {:.2f} GiB "
         "is available (20% kept spare; lower -c or --parallel)", n, one.capacity, double(per) * n / gib,
         available / gib);
}

int default_context(const KVShape& at_trained, size_t available) {
  KVShape s = at_trained;
  while (available > 0 && s.capacity > 1 && KVCache::bytes_needed(s) > kv_budget(available)) s.capacity /= 2;
  return s.capacity;
}

int parallel_that_fits(const KVShape& one, int cap) {
  const size_t available = available_memory();
  if (available == 0) return std::max(1, std::min(cap, 4));
  check_kv_fits(one, 1, available);
  const size_t fit = kv_budget(available) / KVCache::bytes_needed(one);
  return int(std::min<size_t>(fit, size_t(std::max(cap, 1))));
}

}  // namespace sparq
