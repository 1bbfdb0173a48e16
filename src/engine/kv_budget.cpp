#include "sparq/engine/kv_budget.h"

#include <algorithm>
#include <fstream>
#include <string>
#include <vector>

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

void check_kv_fits(std::span<const KVShape> sequences, size_t available) {
  size_t need = 0;
  for (const KVShape& s : sequences) need += KVCache::bytes_needed(s);
  if (available == 0 || sequences.empty()) return;  // unknown: let the allocation decide
  const double gib = 1024.0 * 1024 * 1024;
  const size_t n = sequences.size();
  if (n == 1 && need > kv_budget(available))
    fail("the KV cache for ctx {} needs {:.2f} GiB (incl. transposed K) but only {:.2f} GiB is available "
         "(20% kept spare; lower -c)", sequences[0].capacity, need / gib, available / gib);
  if (n > 1 && need > kv_budget(available))
    fail("the KV caches of {} sequences at ctx {} need {:.2f} GiB (incl. transposed K) but only {:.2f} GiB "
         "is available (20% kept spare; lower -c or --parallel)", n, sequences[0].capacity, need / gib,
         available / gib);
}

void check_kv_fits(const KVShape& one, int n, size_t available) {
  check_kv_fits(std::vector<KVShape>(size_t(std::max(n, 1)), one), available);
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
  size_t per_job = 0;
  for (const KVShape& s : one_job) per_job += KVCache::bytes_needed(s);
  const size_t fit = kv_budget(available) / std::max<size_t>(per_job, 1);
  return int(std::min<size_t>(fit, size_t(std::max(cap, 1))));
}

int parallel_that_fits(const KVShape& one, int cap) { return parallel_that_fits({&one, 1}, cap); }

}  // namespace sparq
