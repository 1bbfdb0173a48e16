// UTF-8 checks and repair with the rules of Rust's String::from_utf8 and
// String::from_utf8_lossy (one U+FFFD per maximal ill-formed subpart), which
// HuggingFace tokenizers' decoders inherit and the tokenizer must reproduce.
#pragma once
#include <cstddef>
#include <string>
#include <string_view>

namespace sparq::utf8 {

inline constexpr std::string_view kReplacement = "\xEF\xBF\xBD";  // U+FFFD

enum class Seq {
  Complete,   // a well-formed character
  Invalid,    // ill-formed: replace `len` bytes (its maximal subpart) with one U+FFFD
  Truncated,  // a well-formed prefix that the end of the input cuts short
};

// Classifies the bytes at the start of s (non-empty); sets len as described above
// (for Truncated, len = s.size()).
Seq classify(std::string_view s, size_t& len);

// True when s is well-formed; otherwise *bad_offset (if given) is the first bad byte.
bool valid(std::string_view s, size_t* bad_offset = nullptr);

// Decodes the character at s[i] of well-formed s and advances i past it.
char32_t next(std::string_view s, size_t& i);

void append(std::string& out, char32_t cp);

// Rust char::is_whitespace: the Unicode White_Space property.
bool is_white_space(char32_t cp);

// Incremental from_utf8_lossy: bytes in, well-formed UTF-8 out. A sequence cut
// by the end of the bytes so far is held back until more bytes or finish().
class LossyDecoder {
 public:
  void push(std::string_view bytes, std::string& out);
  void finish(std::string& out);

 private:
  std::string pending_;
};

}  // namespace sparq::utf8
