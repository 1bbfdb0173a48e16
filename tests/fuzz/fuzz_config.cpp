// config.json text. A config that parses must be usable as it is: positive
// sizes that divide as the model needs, and RoPE frequencies that are finite.
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sparq/util/common.h"
#include "sparq/model/config.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  sparq::ModelConfig c;
  try {
    c = sparq::ModelConfig::from_json_text(std::string(reinterpret_cast<const char*>(data), size));
  } catch (const sparq::Error&) {
    return 0;
  }
  if (c.hidden_size <= 0 || c.n_layers <= 0 || c.n_heads <= 0 || c.n_kv_heads <= 0 || c.head_dim <= 0 ||
      c.vocab_size <= 0 || c.intermediate_size <= 0 || c.max_position_embeddings <= 0)
    std::abort();
  if (c.n_heads % c.n_kv_heads != 0) std::abort();
  for (float f : c.rope_inv_freq())
    if (!std::isfinite(f)) std::abort();
  return 0;
}
