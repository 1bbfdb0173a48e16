// Normalizers and pre-tokenizers: what tokenizers does to the text before the
// BPE model sees it.
#include <algorithm>

#include <nlohmann/json.hpp>

#include "sparq/util/common.h"
#include "sparq/tokenizer/tokenizer_parts.h"
#include "sparq/util/utf8.h"

namespace sparq::tok {

namespace {

struct ByteTable {
  std::string chars[256];
  int bytes[0x144];  // every mapped character is below U+0144
  ByteTable() {
    std::fill(std::begin(bytes), std::end(bytes), -1);
    // Printable Latin-1 bytes map to themselves, the other 68 to U+0100.. in order.
    int n = 0;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE;
      const char32_t c = printable ? char32_t(b) : char32_t(0x100 + n++);
      utf8::append(chars[b], c);
      bytes[c] = b;
    }
  }
};

const ByteTable& byte_table() {
  static const ByteTable t;
  return t;
}

const Regex& gpt2_regex() {
  static const Regex re(
      R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)");
  return re;
}

PreTokenizer::Behavior parse_behavior(const Json& j, std::string_view where) {
  const std::string b = need_string(j, "behavior", where);
  using B = PreTokenizer::Behavior;
  if (b == "Removed") return B::Removed;
  if (b == "Isolated") return B::Isolated;
  if (b == "MergedWithPrevious") return B::MergedWithPrevious;
  if (b == "MergedWithNext") return B::MergedWithNext;
  if (b == "Contiguous") return B::Contiguous;
  fail("{}: unknown behavior \"{}\"", where, b);
}

}  // namespace

const std::string& byte_level_char(uint8_t b) { return byte_table().chars[b]; }

int byte_level_byte(char32_t c) { return c < 0x144 ? byte_table().bytes[c] : -1; }

Normalizer Normalizer::from_json(const Json& j) {
  Normalizer n;
  if (!j.is_null()) n.add(j);
  return n;
}

void Normalizer::add(const Json& j) {
  const std::string type = type_of(j, "normalizer");
  if (type == "Sequence") {
    for (const Json& s : need_list(j, "normalizers", "Sequence normalizer")) add(s);
  } else if (type == "Prepend") {
    steps_.push_back({true, need_string(j, "prepend", "Prepend normalizer"), std::nullopt});
  } else if (type == "Replace") {
    steps_.push_back({false, need_string(j, "content", "Replace normalizer"),
                      Pattern::from_json(need(j, "pattern", "Replace normalizer"),
                                         "Replace normalizer")});
  } else {
    fail("unsupported normalizer \"{}\" (supported: Sequence, Prepend, Replace)", type);
  }
}

std::string Normalizer::apply(std::string s) const {
  for (const Step& st : steps_) {
    if (st.prepend) {
      if (!s.empty()) s.insert(0, st.text);
    } else {
      s = replace_all(*st.pattern, s, st.text);
    }
  }
  return s;
}

PreTokenizer::Prepend parse_prepend_scheme(const Json& j, std::string_view where) {
  if (const Json* p = field(j, "prepend_scheme")) {
    const std::string s = p->is_string() ? p->get<std::string>() : "";
    if (s == "always") return PreTokenizer::Prepend::Always;
    if (s == "first") return PreTokenizer::Prepend::First;
    if (s == "never") return PreTokenizer::Prepend::Never;
    fail("{}: prepend_scheme must be \"always\", \"first\" or \"never\"", where);
  }
  // Files written before prepend_scheme existed say add_prefix_space instead.
  return opt_bool(j, "add_prefix_space", true, where) ? PreTokenizer::Prepend::Always
                                                      : PreTokenizer::Prepend::Never;
}

std::vector<Span> split_spans(size_t size, const std::vector<Span>& matches, bool invert,
                              PreTokenizer::Behavior behavior) {
  struct Part {
    Span span;
    bool match;
  };
  std::vector<Part> parts;
  size_t prev = 0;
  for (const Span& m : matches) {
    if (prev != m.begin) parts.push_back({{prev, m.begin}, invert});
    parts.push_back({m, !invert});
    prev = m.end;
  }
  if (prev != size) parts.push_back({{prev, size}, invert});

  using B = PreTokenizer::Behavior;
  std::vector<Span> out;
  bool prev_match = false;
  switch (behavior) {
    case B::Isolated:
      for (const Part& p : parts) out.push_back(p.span);
      break;
    case B::Removed:
      for (const Part& p : parts)
        if (!p.match) out.push_back(p.span);
      break;
    case B::MergedWithPrevious:
      for (const Part& p : parts) {
        if (p.match && !prev_match && !out.empty())
          out.back().end = p.span.end;
        else
          out.push_back(p.span);
        prev_match = p.match;
      }
      break;
    case B::MergedWithNext:
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->match && !prev_match && !out.empty())
          out.back().begin = it->span.begin;
        else
          out.push_back(it->span);
        prev_match = it->match;
      }
      std::reverse(out.begin(), out.end());
      break;
    case B::Contiguous:
      for (const Part& p : parts) {
        if (p.match == prev_match && !out.empty())
          out.back().end = p.span.end;
        else
          out.push_back(p.span);
        prev_match = p.match;
      }
      break;
  }
  return out;
}

PreTokenizer PreTokenizer::from_json(const Json& j) {
  PreTokenizer p;
  if (!j.is_null()) p.add(j);
  return p;
}

void PreTokenizer::add(const Json& j) {
  const std::string type = type_of(j, "pre_tokenizer");
  Step s{};
  if (type == "Sequence") {
    for (const Json& x : need_list(j, "pretokenizers", "Sequence pre_tokenizer")) add(x);
    return;
  } else if (type == "Split") {
    s.kind = Step::Split;
    s.pattern = Pattern::from_json(need(j, "pattern", "Split pre_tokenizer"), "Split pre_tokenizer");
    s.behavior = parse_behavior(j, "Split pre_tokenizer");
    s.invert = opt_bool(j, "invert", false, "Split pre_tokenizer");
  } else if (type == "ByteLevel") {
    s.kind = Step::ByteLevel;
    s.add_prefix_space = opt_bool(j, "add_prefix_space", true, "ByteLevel pre_tokenizer");
    s.use_regex = opt_bool(j, "use_regex", true, "ByteLevel pre_tokenizer");
  } else if (type == "Metaspace") {
    s.kind = Step::Metaspace;
    s.replacement = need_char(j, "replacement", "Metaspace pre_tokenizer");
    s.prepend = parse_prepend_scheme(j, "Metaspace pre_tokenizer");
    s.split = opt_bool(j, "split", true, "Metaspace pre_tokenizer");
  } else {
    fail("unsupported pre_tokenizer \"{}\" (supported: Sequence, Split, ByteLevel, Metaspace)",
         type);
  }
  steps_.push_back(std::move(s));
}

void PreTokenizer::apply(std::vector<Piece>& pieces) const {
  for (const Step& s : steps_) {
    std::vector<Piece> out;
    out.reserve(pieces.size());
    for (Piece& p : pieces) {
      if (p.id >= 0)
        out.push_back(std::move(p));
      else
        run(s, p, out);
    }
    pieces.swap(out);
  }
}

void PreTokenizer::run(const Step& s, const Piece& in, std::vector<Piece>& out) const {
  std::string text = in.text;
  std::vector<Span> spans;
  switch (s.kind) {
    case Step::Split:
      spans = split_spans(text.size(), s.pattern->find_all(text), s.invert, s.behavior);
      break;
    case Step::Metaspace: {
      text = replace_all(Pattern(" "), text, s.replacement);
      const bool starts = text.compare(0, s.replacement.size(), s.replacement) == 0;
      if (!starts && (s.prepend == Prepend::Always || (s.prepend == Prepend::First && in.at_origin)))
        text.insert(0, s.replacement);
      if (s.split)
        spans = split_spans(text.size(), Pattern(s.replacement).find_all(text), false,
                            Behavior::MergedWithNext);
      else
        spans.push_back({0, text.size()});
      break;
    }
    case Step::ByteLevel:
      if (s.add_prefix_space && text[0] != ' ') text = " " + text;
      if (s.use_regex)
        spans = split_spans(text.size(), gpt2_regex().find_all(text), false, Behavior::Isolated);
      else
        spans.push_back({0, text.size()});
      break;
  }
  for (const Span& sp : spans) {
    if (sp.begin == sp.end) continue;
    Piece p{text.substr(sp.begin, sp.end - sp.begin), -1, in.at_origin && sp.begin == 0};
    if (s.kind == Step::ByteLevel) {
      std::string mapped;
      for (unsigned char b : p.text) mapped += byte_level_char(b);
      p.text = std::move(mapped);
    }
    out.push_back(std::move(p));
  }
}

}  // namespace sparq::tok
