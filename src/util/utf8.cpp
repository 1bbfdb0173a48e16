#include "sparq/util/utf8.h"

#include <cstdint>

namespace sparq::utf8 {

Seq classify(std::string_view s, size_t& len) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data());
  const unsigned b0 = p[0];
  if (b0 < 0x80) {
    len = 1;
    return Seq::Complete;
  }
  // Length and the allowed range of the second byte (Unicode Table 3-7); the
  // narrowed ranges exclude overlongs, surrogates and code points above U+10FFFF.
  size_t need;
  unsigned lo = 0x80, hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 2;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 3;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 4;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    len = 1;
    return Seq::Invalid;
  }
  for (size_t k = 1; k < need; ++k) {
    if (k == s.size()) {
      len = k;
      return Seq::Truncated;
    }
    const unsigned b = p[k];
    if (b < (k == 1 ? lo : 0x80) || b > (k == 1 ? hi : 0xBF)) {
      len = k;
      return Seq::Invalid;
    }
  }
  len = need;
  return Seq::Complete;
}

bool valid(std::string_view s, size_t* bad_offset) {
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    if (classify(s.substr(i), len) != Seq::Complete) {
      if (bad_offset) *bad_offset = i;
      return false;
    }
    i += len;
  }
  return true;
}

char32_t next(std::string_view s, size_t& i) {
  const auto* p = reinterpret_cast<const unsigned char*>(s.data()) + i;
  if (p[0] < 0x80) {
    ++i;
    return p[0];
  }
  const int n = p[0] >= 0xF0 ? 4 : p[0] >= 0xE0 ? 3 : 2;
  char32_t cp = p[0] & (0x7F >> n);
  for (int k = 1; k < n; ++k) cp = (cp << 6) | (p[k] & 0x3F);
  i += size_t(n);
  return cp;
}

void append(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out += char(cp);
  } else if (cp < 0x800) {
    out += char(0xC0 | (cp >> 6));
    out += char(0x80 | (cp & 0x3F));
  } else if (cp < 0x10000) {
    out += char(0xE0 | (cp >> 12));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  } else {
    out += char(0xF0 | (cp >> 18));
    out += char(0x80 | ((cp >> 12) & 0x3F));
    out += char(0x80 | ((cp >> 6) & 0x3F));
    out += char(0x80 | (cp & 0x3F));
  }
}

bool is_white_space(char32_t c) {
  return (c >= 0x09 && c <= 0x0D) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
         (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
         c == 0x205F || c == 0x3000;
}

void LossyDecoder::push(std::string_view bytes, std::string& out) {
  pending_.append(bytes);
  const std::string_view s = pending_;
  size_t i = 0;
  while (i < s.size()) {
    size_t len;
    const Seq k = classify(s.substr(i), len);
    if (k == Seq::Truncated) break;
    if (k == Seq::Complete)
      out.append(s.substr(i, len));
    else
      out.append(kReplacement);
    i += len;
  }
  pending_.erase(0, i);
}

void LossyDecoder::finish(std::string& out) {
  if (!pending_.empty()) out.append(kReplacement);  // one maximal subpart at most
  pending_.clear();
}

}  // namespace sparq::utf8
