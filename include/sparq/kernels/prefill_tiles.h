// What the prompt-attention kernels of every tier share. Templates only:
// instantiated with a tier file's own lambdas they stay in that file, where an
// inline function, compiled with one tier's flags, could be linked into
// another tier's code.
#pragma once
#include <algorithm>
#include <limits>
#include <type_traits>

#include "sparq/kernels/attention_dense.h"

namespace sparq {

// Calls f(std::integral_constant<int, n>{}) for 1 <= n <= Max: a remainder
// pass with a compile-time count.
template <int Max, class F>
inline void with_count(int n, F&& f) {
  if constexpr (Max >= 1) {
    if (n == Max)
      f(std::integral_constant<int, Max>{});
    else
      with_count<Max - 1>(n, f);
  }
}

// A span's queries in tiles of up to Lanes * MaxRegs: tile(type, nv, i0, n,
// lo, hi) for queries [i0, i0 + n), with type (the cache's KVType) and nv (the
// registers of Lanes queries the tile needs) as compile-time constants, and
// lo, hi the least and the greatest last position its queries see.
template <int Lanes, int MaxRegs, class Tile>
void prefill_tiles(const PrefillSpan& s, Tile&& tile) {
  for (int i0 = 0; i0 < s.n; i0 += Lanes * MaxRegs) {
    const int n = std::min(Lanes * MaxRegs, s.n - i0);
    int lo = std::numeric_limits<int>::max(), hi = 0;
    for (int i = 0; i < n; ++i) {
      lo = std::min(lo, s.last[i0 + i]);
      hi = std::max(hi, s.last[i0 + i]);
    }
    with_count<MaxRegs>((n + Lanes - 1) / Lanes, [&](auto nv) {
      switch (s.type) {
        case KVType::F32: return tile(std::integral_constant<KVType, KVType::F32>{}, nv, i0, n, lo, hi);
        case KVType::BF16: return tile(std::integral_constant<KVType, KVType::BF16>{}, nv, i0, n, lo, hi);
        case KVType::Q8_0: return tile(std::integral_constant<KVType, KVType::Q8_0>{}, nv, i0, n, lo, hi);
      }
    });
  }
}

}  // namespace sparq
