// tokenizer.json text. A tokenizer that loads must encode and decode a fixed
// text without failing in any way other than a clean sparq::Error.
#include <cstdint>
#include <cstdlib>
#include <string>

#include "sparq/util/common.h"
#include "sparq/tokenizer/tokenizer.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  try {
    const sparq::Tokenizer t =
        sparq::Tokenizer::from_json_text(std::string(reinterpret_cast<const char*>(data), size));
    const std::vector<int> ids = t.encode("Once upon a time, <s> caf\xc3\xa9 \xf0\x9f\x99\x82 123\n", true);
    for (int id : ids)
      if (id < 0 || id >= t.vocab_size()) std::abort();
    t.decode(ids);
    t.decode(ids, false);
  } catch (const sparq::Error&) {
  }
  return 0;
}
