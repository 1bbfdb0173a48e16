#include "sparq/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>

namespace sparq {
namespace {

bool detect() {
  const char* env = std::getenv("SPARQ_NO_AVX512");
  if (env && std::strcmp(env, "0") != 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bf16");
}

std::atomic<int>& state() {
  static std::atomic<int> s{detect() ? 1 : 0};
  return s;
}

}  // namespace

bool use_avx512() { return state().load(std::memory_order_relaxed) != 0; }

void set_avx512_enabled(bool enabled) {
  static const bool available = detect();
  state().store(enabled && available ? 1 : 0);
}

}  // namespace sparq
