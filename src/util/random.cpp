#include "sparq/util/random.h"

#include <algorithm>

#include "sparq/util/common.h"

namespace sparq {

void fill_random_bf16(uint16_t* out, size_t n, float scale, uint64_t seed) {
  constexpr size_t kPiece = size_t(1) << 20;
  const int64_t pieces = int64_t((n + kPiece - 1) / kPiece);
#pragma omp parallel for schedule(static)
  for (int64_t i = 0; i < pieces; ++i) {
    Rng rng{seed + uint64_t(i) * 0x632be59bd9b4e019ull};
    const size_t end = std::min(n, size_t(i + 1) * kPiece);
    for (size_t j = size_t(i) * kPiece; j < end; j += 4) {
      const uint64_t r = rng.next();
      for (size_t q = 0; q < 4 && j + q < end; ++q) {
        const float u = float((r >> (16 * q)) & 0xffff) * (2.0f / 65536.0f) - 1.0f;
        out[j + q] = f32_to_bf16(u * scale);
      }
    }
  }
}

}  // namespace sparq
