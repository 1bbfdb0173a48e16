#include "sparq/util/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <fstream>

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

std::string cpu_model_name() {
  std::ifstream f("/proc/cpuinfo");
  for (std::string line; std::getline(f, line);) {
    if (line.rfind("model name", 0) != 0) continue;
    const size_t colon = line.find(':');
    const size_t start = colon == std::string::npos ? line.size() : line.find_first_not_of(' ', colon + 1);
    if (start != std::string::npos && start < line.size()) return line.substr(start);
  }
  return "unknown";
}

}  // namespace sparq
