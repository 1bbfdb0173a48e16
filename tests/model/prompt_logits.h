// Logits at every position of a prompt, prefilled in batches of `batch` rows
// into a fresh cache of type kv: the model tests' view of a forward pass.
#pragma once
#include <algorithm>
#include <vector>

#include "sparq/model/model.h"

namespace sparq::test {

inline std::vector<float> prompt_logits(Model& m, const std::vector<int>& ids, KVType kv, int batch) {
  KVCache cache(m.kv_shape(int(ids.size()) + 1, kv));
  const size_t V = size_t(m.config().vocab_size);
  std::vector<float> out(ids.size() * V);
  for (size_t p0 = 0; p0 < ids.size(); p0 += size_t(batch)) {
    std::vector<Row> rows;
    for (size_t i = p0; i < std::min(ids.size(), p0 + size_t(batch)); ++i)
      rows.push_back(Row{ids[i], int(i), &cache, nullptr, true});
    m.forward(rows, &out[p0 * V]);
  }
  return out;
}

}  // namespace sparq::test
