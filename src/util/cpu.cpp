#include "sparq/util/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <cctype>
#include <fstream>

namespace sparq {
namespace {

bool detect() {
  const char* env = std::getenv("SPARQ_NO_AVX512");
  if (env && std::strcmp(env, "0") != 0) return false;
  __builtin_cpu_init();
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
         __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
         __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni");
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

size_t last_level_cache_bytes() {
  int best_level = 0;
  size_t bytes = 0;
  for (int i = 0;; ++i) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(i) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size");
    int level = 0;
    std::string size;
    if (!(level_file >> level) || !(size_file >> size)) break;
    size_t n = 0, at = 0;
    while (at < size.size() && std::isdigit(static_cast<unsigned char>(size[at]))) n = n * 10 + size_t(size[at++] - '0');
    const char unit = at < size.size() ? size[at] : ' ';
    n <<= unit == 'K' ? 10 : unit == 'M' ? 20 : unit == 'G' ? 30 : 0;
    if (level >= best_level) {
      best_level = level;
      bytes = n;
    }
  }
  return bytes;
}

}  // namespace sparq
