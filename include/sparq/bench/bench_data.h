// What the benches feed the kernels when no real model or text does.
#pragma once
#include "sparq/kernels/kv_cache.h"
#include "sparq/util/random.h"

namespace sparq {

// Positions [0, S) of every layer: keys with per-channel scales (some
// channels matter more, as in real models) and normal values, so SparQ's
// top-r and top-k selections are not degenerate.
void fill_cache(KVCache& c, int S, Rng& rng);

}  // namespace sparq
