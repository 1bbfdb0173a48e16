// Arbitrary bytes through the shared models' tokenizers: the first byte picks
// the tokenizer (SentencePiece-style or byte-level BPE); the rest is encoded
// as text and also read as little-endian int32 ids to decode, in one piece
// and streamed (whose concatenation must equal the one-piece decode).
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "sparq/util/common.h"
#include "sparq/tokenizer/tokenizer.h"

namespace {

std::vector<sparq::Tokenizer> tokenizers;

std::string shared_dir() {
  const char* env = std::getenv("SPARQ_SHARED");
  return env ? env : SPARQ_SHARED_DIR;
}

void check_decode(const sparq::Tokenizer& t, const std::vector<int>& ids) {
  std::string whole;
  try {
    whole = t.decode(ids);
  } catch (const sparq::Error&) {
    return;  // ids outside the vocabulary
  }
  sparq::TokenStreamer s(t);
  std::string streamed;
  for (int id : ids) streamed += s.push(id);
  streamed += s.finish();
  if (streamed != whole) std::abort();
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  for (const char* f : {"/models/llama-27m-prose/tokenizer.json", "/golden/bytelevel-bpe/tokenizer.json"})
    tokenizers.push_back(sparq::Tokenizer::load(shared_dir() + f));
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  const sparq::Tokenizer& t = tokenizers[data[0] % tokenizers.size()];
  const std::string text(reinterpret_cast<const char*>(data + 1), size - 1);
  try {
    const std::vector<int> ids = t.encode(text, data[0] & 2);
    for (int id : ids)
      if (id < 0 || id >= t.vocab_size()) std::abort();
    check_decode(t, ids);
  } catch (const sparq::Error&) {
    // text that is not valid UTF-8
  }
  std::vector<int> raw((size - 1) / 4);
  if (!raw.empty()) std::memcpy(raw.data(), data + 1, raw.size() * 4);
  // Mostly in-range ids, so decoding gets past the range check.
  if (data[0] & 4)
    for (int& id : raw) id = int(uint32_t(id) % uint32_t(t.vocab_size()));
  check_decode(t, raw);
  return 0;
}
