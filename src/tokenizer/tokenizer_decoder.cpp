// Decoders: tokens back to text. tokenizers applies each decoder to the whole
// token list; here each step is a stage that sees tokens one at a time and
// holds back only what a later token can still change (a byte-fallback group,
// an unfinished UTF-8 sequence, a possible trailing strip), so decoding and
// streaming are the same code and streaming costs O(1) per token.
#include <nlohmann/json.hpp>

#include "sparq/util/common.h"
#include "sparq/tokenizer/tokenizer_parts.h"
#include "sparq/util/utf8.h"

namespace sparq::tok {

using Step = Decoder::Step;

namespace {

const char* kSupported = "Sequence, Replace, ByteFallback, Fuse, Strip, Metaspace, ByteLevel";

size_t opt_size(const Json& j, const char* key, std::string_view where) {
  const int64_t v = opt_int(j, key, 0, where);
  if (v < 0) fail("{}: \"{}\" must not be negative", where, key);
  return size_t(v);
}

}  // namespace

Decoder Decoder::from_json(const Json& j) {
  Decoder d;
  if (j.is_null()) {
    Step join;
    join.kind = Step::JoinSpace;
    d.steps_.push_back(std::move(join));
    return d;
  }
  d.add(j);
  bool fused = false;
  for (Step& s : d.steps_) {
    s.text_mode = fused;
    const bool per_token_only = s.kind == Step::ByteFallback || s.kind == Step::ByteLevel ||
                                (s.kind == Step::Replace && !s.pattern->is_literal());
    if (fused && per_token_only)
      fail("decoder: a {} after Fuse or ByteLevel is not supported",
           s.kind == Step::Replace ? "regex Replace"
           : s.kind == Step::ByteLevel ? "ByteLevel" : "ByteFallback");
    fused = fused || s.kind == Step::Fuse || s.kind == Step::ByteLevel;
  }
  return d;
}

void Decoder::add(const Json& j) {
  const std::string type = type_of(j, "decoder");
  Step s{};
  if (type == "Sequence") {
    for (const Json& x : need_list(j, "decoders", "Sequence decoder")) add(x);
    return;
  } else if (type == "Replace") {
    s.kind = Step::Replace;
    s.pattern = Pattern::from_json(need(j, "pattern", "Replace decoder"), "Replace decoder");
    s.text = need_string(j, "content", "Replace decoder");
  } else if (type == "ByteFallback") {
    s.kind = Step::ByteFallback;
  } else if (type == "Fuse") {
    s.kind = Step::Fuse;
  } else if (type == "Strip") {
    s.kind = Step::Strip;
    s.text = need_char(j, "content", "Strip decoder");
    s.start = opt_size(j, "start", "Strip decoder");
    s.stop = opt_size(j, "stop", "Strip decoder");
  } else if (type == "Metaspace") {
    s.kind = Step::Metaspace;
    s.text = need_char(j, "replacement", "Metaspace decoder");
    s.prepend = parse_prepend_scheme(j, "Metaspace decoder");
  } else if (type == "ByteLevel") {
    s.kind = Step::ByteLevel;
  } else {
    fail("unsupported decoder \"{}\" (supported: {})", type, kSupported);
  }
  steps_.push_back(std::move(s));
}

// A stage gets tokens (or, in text mode, chunks of the one fused string) and
// passes what it can settle to the next stage.
struct DecodeStream::Stage {
  virtual ~Stage() = default;
  virtual void put(std::string s) = 0;
  virtual void finish() { next->finish(); }
  Stage* next = nullptr;
};

namespace {

struct Sink final : DecodeStream::Stage {
  std::string* out = nullptr;
  void put(std::string s) override { out->append(s); }
  void finish() override {}
};

struct JoinSpace final : DecodeStream::Stage {
  bool first = true;
  void put(std::string s) override {
    next->put(first ? std::move(s) : " " + s);
    first = false;
  }
};

struct ReplaceTokens final : DecodeStream::Stage {
  explicit ReplaceTokens(const Step& s) : step(s) {}
  const Step& step;
  void put(std::string s) override { next->put(replace_all(*step.pattern, s, step.text)); }
};

// A literal Replace on the fused string: holds back a tail that may be the
// start of a match finished by later text.
struct ReplaceText final : DecodeStream::Stage {
  explicit ReplaceText(const Step& s) : step(s) {}
  const Step& step;
  std::string held;
  void put(std::string s) override {
    held += s;
    const std::string& lit = step.pattern->literal();
    std::string out;
    size_t last = 0;
    for (size_t at = held.find(lit); at != std::string::npos; at = held.find(lit, at + lit.size())) {
      out.append(held, last, at - last).append(step.text);
      last = at + lit.size();
    }
    size_t keep = std::max(last, held.size() - std::min(held.size(), lit.size() - 1));
    while (keep < held.size() && lit.compare(0, held.size() - keep, held, keep) != 0) ++keep;
    out.append(held, last, keep - last);
    held.erase(0, keep);
    if (!out.empty()) next->put(std::move(out));
  }
  void finish() override {
    if (!held.empty()) next->put(std::move(held));
    next->finish();
  }
};

int hex_digit(char c) {
  if (c >= '0' && c <= '9') return c - '0';
  if (c >= 'a' && c <= 'f') return c - 'a' + 10;
  if (c >= 'A' && c <= 'F') return c - 'A' + 10;
  return -1;
}

// Runs of <0xNN> tokens become their bytes when those form valid UTF-8, and
// one U+FFFD per byte otherwise, so a run is settled only when it ends.
struct ByteFallback final : DecodeStream::Stage {
  std::string bytes;
  void put(std::string s) override {
    if (s.size() == 6 && s.compare(0, 3, "<0x") == 0 && s[5] == '>') {
      const int hi = hex_digit(s[3]), lo = hex_digit(s[4]);
      if (hi >= 0 && lo >= 0) {
        bytes += char(hi * 16 + lo);
        return;
      }
    }
    flush();
    next->put(std::move(s));
  }
  void flush() {
    if (bytes.empty()) return;
    if (utf8::valid(bytes))
      next->put(bytes);
    else
      for (size_t i = 0; i < bytes.size(); ++i) next->put(std::string(utf8::kReplacement));
    bytes.clear();
  }
  void finish() override {
    flush();
    next->finish();
  }
};

struct Fuse final : DecodeStream::Stage {
  void put(std::string s) override { next->put(std::move(s)); }
};

struct StripTokens final : DecodeStream::Stage {
  explicit StripTokens(const Step& s) : step(s) {}
  const Step& step;
  void put(std::string s) override {
    const std::string& c = step.text;
    size_t b = 0, e = s.size();
    for (size_t i = 0; i < step.start && s.compare(b, c.size(), c) == 0; ++i) b += c.size();
    for (size_t i = 0; i < step.stop && e >= b + c.size() && s.compare(e - c.size(), c.size(), c) == 0; ++i)
      e -= c.size();
    next->put(s.substr(b, e - b));
  }
};

// Strip on the fused string: the start cut happens once at the beginning; the
// last `stop` content characters are held back in case the text ends there.
struct StripText final : DecodeStream::Stage {
  explicit StripText(const Step& s) : step(s), start_left(s.start) {}
  const Step& step;
  size_t start_left;
  std::string held;
  void put(std::string s) override {
    const std::string& c = step.text;
    size_t b = 0;
    while (start_left > 0 && b < s.size()) {
      if (s.compare(b, c.size(), c) == 0) {
        b += c.size();
        --start_left;
      } else {
        start_left = 0;
      }
    }
    held.append(s, b);
    size_t keep = held.size();
    for (size_t n = 0; n < step.stop && keep >= c.size() && held.compare(keep - c.size(), c.size(), c) == 0; ++n)
      keep -= c.size();
    if (keep > 0) next->put(held.substr(0, keep));
    held.erase(0, keep);
  }
  // What is still held is the trailing run the strip removes.
};

struct Metaspace final : DecodeStream::Stage {
  explicit Metaspace(const Step& s) : step(s) {}
  const Step& step;
  bool first = true;
  void put(std::string s) override {
    // tokenizers drops the replacement char throughout token 0 (the whole
    // string once fused), and turns it into a space elsewhere.
    const bool drop = first && step.prepend != PreTokenizer::Prepend::Never;
    if (!step.text_mode) first = false;
    next->put(replace_all(Pattern(step.text), s, drop ? "" : " "));
  }
};

struct ByteLevel final : DecodeStream::Stage {
  utf8::LossyDecoder lossy;
  void put(std::string s) override {
    std::string bytes;
    for (size_t i = 0; i < s.size();) {
      const int b = byte_level_byte(utf8::next(s, i));
      if (b < 0) {
        bytes = s;  // a token outside the byte alphabet passes through as it is
        break;
      }
      bytes += char(b);
    }
    std::string out;
    lossy.push(bytes, out);
    if (!out.empty()) next->put(std::move(out));
  }
  void finish() override {
    std::string out;
    lossy.finish(out);
    if (!out.empty()) next->put(std::move(out));
    next->finish();
  }
};

std::unique_ptr<DecodeStream::Stage> make_stage(const Step& s) {
  switch (s.kind) {
    case Step::JoinSpace: return std::make_unique<JoinSpace>();
    case Step::Replace:
      if (s.text_mode) return std::make_unique<ReplaceText>(s);
      return std::make_unique<ReplaceTokens>(s);
    case Step::ByteFallback: return std::make_unique<ByteFallback>();
    case Step::Fuse: return std::make_unique<Fuse>();
    case Step::Strip:
      if (s.text_mode) return std::make_unique<StripText>(s);
      return std::make_unique<StripTokens>(s);
    case Step::Metaspace: return std::make_unique<Metaspace>(s);
    case Step::ByteLevel: return std::make_unique<ByteLevel>();
  }
  return nullptr;
}

}  // namespace

DecodeStream::DecodeStream(const Decoder& d) {
  for (const Step& s : d.steps()) stages_.push_back(make_stage(s));
  stages_.push_back(std::make_unique<Sink>());
  for (size_t i = 0; i + 1 < stages_.size(); ++i) stages_[i]->next = stages_[i + 1].get();
}

DecodeStream::~DecodeStream() = default;

void DecodeStream::push(std::string_view token, std::string& out) {
  static_cast<Sink*>(stages_.back().get())->out = &out;
  stages_.front()->put(std::string(token));
}

void DecodeStream::finish(std::string& out) {
  static_cast<Sink*>(stages_.back().get())->out = &out;
  stages_.front()->finish();
}

}  // namespace sparq::tok
