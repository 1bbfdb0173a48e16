// Added tokens written in the text (e.g. "<|eot_id|>") become their ids before
// any normalizer or model sees the text around them, as tokenizers'
// AddedVocabulary does.
#include <algorithm>

#include "sparq/tokenizer/tokenizer_parts.h"
#include "sparq/util/utf8.h"

namespace sparq::tok {

namespace {

// Rust regex's \w, which tokenizers uses to decide single_word.
bool is_word_char_at(std::string_view s) {
  static const Regex word(R"([\p{Alphabetic}\p{M}\p{Nd}\p{Pc}\p{Join_Control}])");
  return word.matches_at_start(s);
}

size_t char_start_before(std::string_view s, size_t end) {
  size_t k = end - 1;
  while (k > 0 && (uint8_t(s[k]) & 0xC0) == 0x80) --k;
  return k;
}

bool ends_with_word(std::string_view s, size_t end) {
  return end > 0 && is_word_char_at(s.substr(char_start_before(s, end)));
}

bool starts_with_word(std::string_view s, size_t begin) {
  return begin < s.size() && is_word_char_at(s.substr(begin));
}

// Start of the whitespace run that ends at `end`.
size_t space_run_before(std::string_view s, size_t end) {
  while (end > 0) {
    const size_t k = char_start_before(s, end);
    size_t i = k;
    if (!utf8::is_white_space(utf8::next(s, i))) break;
    end = k;
  }
  return end;
}

// End of the whitespace run that starts at `begin`.
size_t space_run_after(std::string_view s, size_t begin) {
  while (begin < s.size()) {
    size_t i = begin;
    if (!utf8::is_white_space(utf8::next(s, i))) break;
    begin = i;
  }
  return begin;
}

}  // namespace

AddedVocab::AddedVocab(std::vector<AddedToken> tokens, const Normalizer& normalizer)
    : tokens_(std::move(tokens)) {
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& t = tokens_[i];
    std::string pattern = t.normalized ? normalizer.apply(t.content) : t.content;
    if (!pattern.empty()) (t.normalized ? normalized_ : raw_).patterns.emplace_back(pattern, int(i));
  }
  for (Matcher* m : {&raw_, &normalized_}) {
    std::stable_sort(m->patterns.begin(), m->patterns.end(),
                     [](const auto& a, const auto& b) { return a.first.size() > b.first.size(); });
    for (size_t k = 0; k < m->patterns.size(); ++k)
      m->first[uint8_t(m->patterns[k].first[0])].push_back(uint32_t(k));
  }
}

void AddedVocab::split(std::vector<Piece>& pieces, bool normalized) const {
  const Matcher& m = normalized ? normalized_ : raw_;
  if (m.patterns.empty()) return;
  std::vector<Piece> out;
  for (Piece& p : pieces) {
    if (p.id >= 0)
      out.push_back(std::move(p));
    else
      split_piece(p, m, out);
  }
  pieces.swap(out);
}

void AddedVocab::split_piece(const Piece& p, const Matcher& m, std::vector<Piece>& out) const {
  const std::string_view s = p.text;
  auto emit = [&](size_t b, size_t e, int id) {
    if (b < e) out.push_back({std::string(s.substr(b, e - b)), id, p.at_origin && b == 0});
  };
  size_t done = 0;  // text before this is already emitted
  size_t pos = 0;   // where the search for the next match starts
  while (pos < s.size()) {
    // Leftmost-longest: the first position where any pattern matches, its longest.
    size_t start = s.size(), stop = 0;
    const AddedToken* tok = nullptr;
    for (size_t q = pos; q < s.size() && !tok; ++q) {
      for (uint32_t k : m.first[uint8_t(s[q])]) {
        const auto& [text, index] = m.patterns[k];
        if (s.compare(q, text.size(), text) == 0) {
          start = q;
          stop = q + text.size();
          tok = &tokens_[size_t(index)];
          break;
        }
      }
    }
    if (!tok) break;
    pos = stop;  // a rejected match is skipped whole, as the Aho-Corasick iterator does
    if (tok->single_word && (ends_with_word(s, start) || starts_with_word(s, stop))) continue;
    if (tok->lstrip) start = std::max(space_run_before(s, start), done);
    if (tok->rstrip) stop = space_run_after(s, stop);
    emit(done, start, -1);
    emit(start, stop, tok->id);
    done = std::max(done, stop);
  }
  emit(done, s.size(), -1);
}

}  // namespace sparq::tok
