// Regexes and literal patterns for Split pre-tokenizers and Replace steps.
#include <nlohmann/json.hpp>

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>

#include "sparq/util/common.h"
#include "sparq/tokenizer/tokenizer_parts.h"
#include "sparq/util/utf8.h"

namespace sparq::tok {

struct Regex::Code {
  pcre2_code* code = nullptr;
  ~Code() { pcre2_code_free(code); }
};

namespace {

struct MatchData {
  explicit MatchData(const pcre2_code* c) : md(pcre2_match_data_create_from_pattern(c, nullptr)) {
    if (!md) throw std::bad_alloc();
  }
  ~MatchData() { pcre2_match_data_free(md); }
  MatchData(const MatchData&) = delete;
  MatchData& operator=(const MatchData&) = delete;
  pcre2_match_data* md;
};

// Subjects are checked UTF-8 before they get here, so PCRE2 need not recheck.
int run(const pcre2_code* c, std::string_view s, size_t from, uint32_t opts, MatchData& m) {
  return pcre2_match(c, reinterpret_cast<PCRE2_SPTR>(s.data()), s.size(), from,
                     opts | PCRE2_NO_UTF_CHECK, m.md, nullptr);
}

void check_rc(int rc) {
  if (rc < 0 && rc != PCRE2_ERROR_NOMATCH) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(rc, msg, sizeof msg);
    fail("regex match failed: {}", reinterpret_cast<const char*>(msg));
  }
}

}  // namespace

Regex::Regex(const std::string& pattern) {
  int err = 0;
  PCRE2_SIZE at = 0;
  auto code = std::make_shared<Code>();
  code->code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(pattern.data()), pattern.size(),
                             PCRE2_UTF | PCRE2_UCP, &err, &at, nullptr);
  if (!code->code) {
    PCRE2_UCHAR msg[256];
    pcre2_get_error_message(err, msg, sizeof msg);
    fail("regex /{}/ does not compile at offset {}: {}", pattern, at,
         reinterpret_cast<const char*>(msg));
  }
  pcre2_jit_compile(code->code, PCRE2_JIT_COMPLETE);  // falls back to the interpreter
  code_ = std::move(code);
}

std::vector<Span> Regex::find_all(std::string_view s) const {
  std::vector<Span> out;
  MatchData m(code_->code);
  size_t from = 0;
  bool have_prev = false;
  size_t prev_end = 0;
  while (from <= s.size()) {
    const int rc = run(code_->code, s, from, 0, m);
    check_rc(rc);
    if (rc < 0) break;
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(m.md);
    const size_t b = ov[0], e = ov[1];
    if (b == e && have_prev && e == prev_end) {
      if (from == s.size()) break;
      size_t next = from;
      utf8::next(s, next);
      from = next;
      continue;
    }
    out.push_back({b, e});
    have_prev = true;
    prev_end = e;
    from = e;
  }
  return out;
}

bool Regex::matches_at_start(std::string_view s) const {
  MatchData m(code_->code);
  const int rc = run(code_->code, s, 0, PCRE2_ANCHORED, m);
  check_rc(rc);
  return rc >= 0;
}

Pattern::Pattern(std::string literal) : literal_(std::move(literal)) {
  if (literal_.empty()) fail("empty pattern");
}

Pattern Pattern::from_json(const Json& j, std::string_view where) {
  if (const Json* s = field(j, "String")) {
    if (!s->is_string()) fail("{}: pattern \"String\" must be a string", where);
    return Pattern(s->get<std::string>());
  }
  if (const Json* r = field(j, "Regex")) {
    if (!r->is_string()) fail("{}: pattern \"Regex\" must be a string", where);
    Pattern p;
    p.literal_ = r->get<std::string>();
    p.regex_.emplace(p.literal_);
    return p;
  }
  fail("{}: pattern must be {{\"String\": ...}} or {{\"Regex\": ...}}", where);
}

std::vector<Span> Pattern::find_all(std::string_view s) const {
  if (regex_) return regex_->find_all(s);
  std::vector<Span> out;
  for (size_t at = s.find(literal_); at != std::string_view::npos;
       at = s.find(literal_, at + literal_.size()))
    out.push_back({at, at + literal_.size()});
  return out;
}

std::string replace_all(const Pattern& p, std::string_view s, std::string_view with) {
  std::string out;
  size_t last = 0;
  for (const Span& m : p.find_all(s)) {
    out.append(s.substr(last, m.begin - last));
    out.append(with);
    last = m.end;
  }
  out.append(s.substr(last));
  return out;
}

}  // namespace sparq::tok
