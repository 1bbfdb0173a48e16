// Tokenizer from tokenizer.json (SentencePiece-style BPE with byte fallback, or
// byte-level BPE as in Llama 3), no Python needed. A llama2.c tokenizer .bin is
// accepted where a model ships only that.
#pragma once
#include <memory>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace sparq {

namespace tok {
class DecodeStream;
}

class Tokenizer {
 public:
  // Throws Error on malformed or unsupported files.
  static Tokenizer load(const std::string& path);
  static Tokenizer from_json_text(const std::string& text);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  // As HuggingFace tokenizers' encode(text, add_special_tokens=add_bos):
  // added/special tokens written in the text are matched as tokens.
  std::vector<int> encode(std::string_view text, bool add_bos) const;
  // As HuggingFace decode(ids, skip_special_tokens=skip_special).
  std::string decode(std::span<const int> ids, bool skip_special = true) const;
  // The text ids add after context: decode() alone drops the leading space of
  // a SentencePiece continuation (" of" comes out "of"), which a task
  // comparing characters must keep.
  std::string decode_continuation(std::span<const int> context, std::span<const int> ids) const;

  int vocab_size() const;
  int bos_id() const;  // -1 when none
  std::string token_text(int id) const;  // the vocabulary string, for messages

  struct Impl;

 private:
  explicit Tokenizer(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
  friend class TokenStreamer;
};

// Turns generated ids into text as they come, holding back bytes until they
// form complete UTF-8 characters. The concatenation of everything push() and
// finish() return equals tokenizer.decode(all ids pushed). O(1) per token: a
// run of byte-fallback tokens is held until it ends, because HuggingFace
// replaces the whole run with U+FFFD if any byte in it is bad. After finish()
// the next push() starts a new text.
class TokenStreamer {
 public:
  explicit TokenStreamer(const Tokenizer& tok);
  ~TokenStreamer();
  TokenStreamer(const TokenStreamer&) = delete;
  TokenStreamer& operator=(const TokenStreamer&) = delete;
  std::string push(int id);
  std::string finish();

 private:
  const Tokenizer& tok_;
  std::unique_ptr<tok::DecodeStream> stream_;
};

}  // namespace sparq
