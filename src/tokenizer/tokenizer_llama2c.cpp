// llama2.c's tokenizer .bin (tokenizer.py export): a uint32 max token length,
// then per token a float32 score, an int32 byte length and the bytes. Ids 0-2
// are <unk>, BOS, EOS; 3-258 the byte pieces; the rest SentencePiece pieces
// with the word-start mark already turned into a space.
//
// It becomes the parts HuggingFace would build from it: the pieces are the BPE
// vocabulary, and two adjacent symbols merge when their concatenation is a
// piece, higher score first and leftmost on ties, which is llama2.c's own
// encode loop. The text gets llama2.c's dummy-prefix space; decoding is the
// Llama 2 tokenizer.json decoder (bytes, then drop the first leading space).
#include <algorithm>
#include <cmath>
#include <cstring>

#include <nlohmann/json.hpp>

#include "sparq/util/common.h"
#include "sparq/tokenizer/tokenizer_parts.h"
#include "sparq/util/utf8.h"

namespace sparq {

namespace {

constexpr const char* kNot = "neither a tokenizer.json nor a llama2.c tokenizer .bin";
constexpr int kBos = 1;
constexpr int kFirstByte = 3;

template <class T>
T read_at(std::string_view data, size_t at) {
  T v;
  std::memcpy(&v, data.data() + at, sizeof v);
  return v;
}

}  // namespace

std::unique_ptr<Tokenizer::Impl> parse_llama2c_tokenizer(std::string_view data) {
  if (data.size() < 4) fail("{} (only {} bytes)", kNot, data.size());
  std::vector<std::pair<std::string, int>> vocab;
  std::vector<float> scores;
  for (size_t at = 4; at < data.size();) {
    const int id = int(vocab.size());
    if (data.size() - at < 8) fail("{}: token {} is cut off by the end of the file", kNot, id);
    const float score = read_at<float>(data, at);
    const int32_t len = read_at<int32_t>(data, at + 4);
    at += 8;
    if (len < 0 || size_t(len) > data.size() - at)
      fail("{}: token {} has length {} with {} bytes left", kNot, id, len, data.size() - at);
    std::string piece(data.substr(at, size_t(len)));
    at += size_t(len);
    if (!std::isfinite(score) || !utf8::valid(piece))
      fail("{}: token {} has a bad score or is not UTF-8", kNot, id);
    vocab.emplace_back(std::move(piece), id);
    scores.push_back(score);
  }
  if (vocab.size() < size_t(kFirstByte + 256))
    fail("{}: {} tokens, fewer than <unk>, BOS, EOS and 256 byte pieces", kNot, vocab.size());
  for (int b = 0; b < 256; ++b)
    if (vocab[size_t(kFirstByte + b)].first != fmt::format("<0x{:02X}>", b))
      fail("{}: token {} is not the byte piece <0x{:02X}>", kNot, kFirstByte + b, b);

  tok::BpeOptions opt;
  opt.byte_fallback = true;
  const tok::BpeModel pieces(vocab, {}, opt);
  std::vector<float> order = scores;  // distinct scores, best first: equal scores share a rank
  std::sort(order.begin(), order.end(), std::greater<>());
  order.erase(std::unique(order.begin(), order.end()), order.end());
  std::vector<tok::MergeRule> merges;
  for (const auto& [text, id] : vocab) {
    if (pieces.id_of(text) != id) continue;  // a repeated piece: lookups find the first
    const int rank = int(std::lower_bound(order.begin(), order.end(), scores[size_t(id)],
                                          std::greater<>()) - order.begin());
    for (size_t k = 1; k < text.size(); ++k) {
      const int left = pieces.id_of(std::string_view(text).substr(0, k));
      const int right = pieces.id_of(std::string_view(text).substr(k));
      if (left >= 0 && right >= 0) merges.push_back({left, right, rank, id});
    }
  }

  auto impl = std::make_unique<Tokenizer::Impl>();
  impl->model = tok::BpeModel(vocab, merges, opt);
  impl->normalizer = tok::Normalizer::from_json(tok::Json::parse(R"({"type": "Prepend", "prepend": " "})"));
  impl->decoder = tok::Decoder::from_json(tok::Json::parse(R"({"type": "Sequence", "decoders": [
      {"type": "ByteFallback"}, {"type": "Fuse"},
      {"type": "Strip", "content": " ", "start": 1, "stop": 0}]})"));
  impl->prefix = {kBos};
  impl->finalize({vocab[0].first, vocab[1].first, vocab[2].first});
  return impl;
}

}  // namespace sparq
