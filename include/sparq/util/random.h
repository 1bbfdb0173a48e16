// Fast seeded random numbers for benchmarks and random-weight models: filling
// gigabytes with <random>'s distributions would take longer than the runs.
#pragma once
#include <cstddef>
#include <cstdint>

namespace sparq {

struct Rng {
  uint64_t s;
  uint64_t next() {  // splitmix64
    uint64_t z = (s += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // About N(0, 1): sum of four 16-bit uniforms (Irwin-Hall), scaled.
  float normal() {
    const uint64_t r = next();
    const float u = float((r & 0xffff) + ((r >> 16) & 0xffff) + ((r >> 32) & 0xffff) + (r >> 48)) / 65536.0f;
    return (u - 2.0f) * 1.7320508f;
  }
};

// n bf16 values uniform in [-scale, scale), the same for a seed whatever the
// thread count (filled in parallel, a stream per fixed-size piece).
void fill_random_bf16(uint16_t* out, size_t n, float scale, uint64_t seed);

}  // namespace sparq
