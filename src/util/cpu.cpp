#include "sparq/util/cpu.h"

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <cctype>
#include <fstream>
#include <iterator>

#include "sparq/util/common.h"

namespace sparq {
namespace {

CpuTier detect() {
  __builtin_cpu_init();
  if (!(__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c")))
    return CpuTier::portable;
  if (!(__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq")))
    return CpuTier::avx2;
  // Every CPU with AVX512_BF16 has VNNI too.
  return __builtin_cpu_supports("avx512bf16") && __builtin_cpu_supports("avx512vnni") ? CpuTier::avx512bf16
                                                                                      : CpuTier::avx512;
}

// SPARQ_CPU's tier when it names one the CPU has.
CpuTier initial() {
  const char* env = std::getenv("SPARQ_CPU");
  if (!env || !*env) return best_cpu_tier();
  try {
    const CpuTier t = parse_cpu_tier(env);
    return cpu_has(t) ? t : best_cpu_tier();
  } catch (const Error&) {
    return best_cpu_tier();
  }
}

std::atomic<CpuTier>& state() {
  static std::atomic<CpuTier> s{initial()};
  return s;
}

std::string tier_list(const std::vector<CpuTier>& tiers) {
  std::string s;
  for (CpuTier t : tiers) s += (s.empty() ? "" : ", ") + std::string(cpu_tier_name(t));
  return s;
}

}  // namespace

const char* cpu_tier_name(CpuTier t) {
  switch (t) {
    case CpuTier::portable: return "portable";
    case CpuTier::avx2: return "avx2";
    case CpuTier::avx512: return "avx512";
    case CpuTier::avx512bf16: return "avx512bf16";
  }
  return "?";
}

std::string cpu_tier_names() { return tier_list({std::begin(kCpuTiers), std::end(kCpuTiers)}); }

CpuTier parse_cpu_tier(std::string_view name) {
  for (CpuTier t : kCpuTiers)
    if (name == cpu_tier_name(t)) return t;
  fail("unknown CPU tier '{}' (tiers: {})", name, cpu_tier_names());
}

CpuTier best_cpu_tier() {
  static const CpuTier best = detect();
  return best;
}

bool cpu_has(CpuTier t) { return int(t) <= int(best_cpu_tier()); }

std::vector<CpuTier> cpu_tiers_here() {
  std::vector<CpuTier> v;
  for (CpuTier t : kCpuTiers)
    if (cpu_has(t)) v.push_back(t);
  return v;
}

CpuTier cpu_tier() { return state().load(std::memory_order_relaxed); }

void set_cpu_tier(CpuTier t) {
  if (!cpu_has(t))
    fail("this CPU has no {} tier (it has {})", cpu_tier_name(t), tier_list(cpu_tiers_here()));
  state().store(t);
}

void check_cpu_env() {
  const char* env = std::getenv("SPARQ_CPU");
  if (!env || !*env) return;
  try {
    set_cpu_tier(parse_cpu_tier(env));
  } catch (const Error& e) {
    fail("SPARQ_CPU: {}", e.what());
  }
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
