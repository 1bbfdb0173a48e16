// The tokenizer's parts, one type per HuggingFace tokenizers component that
// tokenizer.json describes (normalizer, pre-tokenizer, BPE model, added tokens,
// post-processor, decoder). Used by src/tokenizer/*.cpp and the tests; the rest
// of the program needs only sparq/tokenizer.h.
#pragma once
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include <nlohmann/json_fwd.hpp>

#include "sparq/tokenizer/tokenizer.h"

namespace sparq::tok {

using Json = nlohmann::json;

// Ids above this are taken for a corrupt file rather than allocated for.
inline constexpr int64_t kMaxTokenId = 1 << 24;

// JSON field access that fails with the field's name instead of a library message.
const Json* field(const Json& obj, const char* key);  // nullptr when absent or null
const Json& need(const Json& obj, const char* key, std::string_view where);
const Json& need_list(const Json& obj, const char* key, std::string_view where);
std::string need_string(const Json& obj, const char* key, std::string_view where);
std::string need_char(const Json& obj, const char* key, std::string_view where);  // one character
std::string type_of(const Json& component, std::string_view what);  // its "type"
bool opt_bool(const Json& obj, const char* key, bool dflt, std::string_view where);
int64_t opt_int(const Json& obj, const char* key, int64_t dflt, std::string_view where);

struct Span {
  size_t begin, end;
};

// PCRE2 (UTF + UCP) in place of the Oniguruma regexes HuggingFace uses.
class Regex {
 public:
  explicit Regex(const std::string& pattern);
  // Leftmost non-overlapping matches; an empty match where the previous match
  // ended is skipped, as Oniguruma's find_iter does.
  std::vector<Span> find_all(std::string_view s) const;
  // Whether the regex matches at the very start of s.
  bool matches_at_start(std::string_view s) const;

 private:
  struct Code;
  std::shared_ptr<const Code> code_;
};

// A Split/Replace pattern: JSON {"String": literal} or {"Regex": pattern}.
class Pattern {
 public:
  static Pattern from_json(const Json& j, std::string_view where);
  explicit Pattern(std::string literal);
  std::vector<Span> find_all(std::string_view s) const;
  bool is_literal() const { return !regex_; }
  const std::string& literal() const { return literal_; }

 private:
  Pattern() = default;
  std::string literal_;  // the regex source for a regex
  std::optional<Regex> regex_;
};

// Replaces every match of p in s with `with`.
std::string replace_all(const Pattern& p, std::string_view s, std::string_view with);

// Text on its way through the pipeline: a stretch of input, or an added token
// already recognised in it (id >= 0).
struct Piece {
  std::string text;
  int id = -1;
  bool at_origin = false;  // starts at offset 0 of the input (Metaspace "first")
};

class Normalizer {
 public:
  // null -> identity. Supports Sequence, Prepend, Replace.
  static Normalizer from_json(const Json& j);
  std::string apply(std::string s) const;

 private:
  struct Step {
    bool prepend;  // else Replace
    std::string text;
    std::optional<Pattern> pattern;
  };
  void add(const Json& j);
  std::vector<Step> steps_;
};

// GPT-2's table mapping each byte to a printable character (ByteLevel).
const std::string& byte_level_char(uint8_t b);  // UTF-8 of the character for b
int byte_level_byte(char32_t c);                // the inverse, -1 outside the table

class PreTokenizer {
 public:
  // null -> none. Supports Sequence, Split, ByteLevel, Metaspace.
  static PreTokenizer from_json(const Json& j);
  // Splits and rewrites the pieces that are not added tokens.
  void apply(std::vector<Piece>& pieces) const;

  enum class Behavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
  enum class Prepend { Always, First, Never };

 private:
  struct Step {
    enum Kind { Split, ByteLevel, Metaspace } kind;
    std::optional<Pattern> pattern;  // Split
    Behavior behavior = Behavior::Isolated;
    bool invert = false;
    bool add_prefix_space = false;  // ByteLevel
    bool use_regex = true;
    std::string replacement;  // Metaspace
    Prepend prepend = Prepend::Always;
    bool split = true;
  };
  void add(const Json& j);
  void run(const Step& s, const Piece& in, std::vector<Piece>& out) const;
  std::vector<Step> steps_;
};

// Splits text at the matches per `behavior` (tokenizers' NormalizedString::split).
std::vector<Span> split_spans(size_t size, const std::vector<Span>& matches, bool invert,
                              PreTokenizer::Behavior behavior);

PreTokenizer::Prepend parse_prepend_scheme(const Json& j, std::string_view where);

struct MergeRule {
  int left, right, rank, result;
};

struct BpeOptions {
  std::optional<std::string> unk_token;
  bool byte_fallback = false;
  bool fuse_unk = false;
  bool ignore_merges = false;
  std::string subword_prefix;  // continuing_subword_prefix
  std::string word_suffix;     // end_of_word_suffix
};

class BpeModel {
 public:
  BpeModel() = default;
  // vocab: (token, id) pairs with ids in [0, kMaxTokenId); the first of
  // duplicate tokens wins.
  BpeModel(const std::vector<std::pair<std::string, int>>& vocab,
           const std::vector<MergeRule>& merges, BpeOptions opt);
  static BpeModel from_json(const Json& model);

  // Appends the ids of one pre-token, as tokenizers' BPE::tokenize.
  void tokenize(std::string_view word, std::vector<int>& out) const;

  int id_of(std::string_view token) const;  // -1 when absent
  const std::string* token(int id) const;   // nullptr when absent
  int size() const { return int(tokens_.size()); }
  const MergeRule* merge(int left, int right) const;

 private:
  struct Hash {
    using is_transparent = void;
    size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
  };
  std::unordered_map<std::string, int, Hash, std::equal_to<>> vocab_;
  std::vector<std::string> tokens_;  // by id
  std::vector<uint8_t> present_;
  std::unordered_map<uint64_t, MergeRule> merges_;
  int byte_ids_[256] = {};
  int unk_id_ = -1;
  BpeOptions opt_;
};

struct AddedToken {
  int id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false, special = false;
};

// Finds added tokens written in the text (tokenizers' AddedVocabulary):
// leftmost-longest, non-normalized ones in the raw text, normalized ones (as
// their normalized content) in the normalized text.
class AddedVocab {
 public:
  AddedVocab() = default;
  AddedVocab(std::vector<AddedToken> tokens, const Normalizer& normalizer);
  void split(std::vector<Piece>& pieces, bool normalized) const;

 private:
  struct Matcher {
    std::vector<std::pair<std::string, int>> patterns;  // (text, index in tokens_), longest first
    std::vector<uint32_t> first[256];                   // pattern indices by first byte
  };
  void split_piece(const Piece& p, const Matcher& m, std::vector<Piece>& out) const;
  std::vector<AddedToken> tokens_;
  Matcher raw_, normalized_;
};

class Decoder {
 public:
  // null -> tokens joined with spaces. Supports Sequence, Replace, ByteFallback,
  // Fuse, Strip, Metaspace, ByteLevel.
  static Decoder from_json(const Json& j);

  struct Step {
    enum Kind { JoinSpace, Replace, ByteFallback, Fuse, Strip, Metaspace, ByteLevel } kind = Fuse;
    bool text_mode = false;  // after Fuse/ByteLevel: acts on one growing string
    std::optional<Pattern> pattern;
    std::string text;  // Replace content, Strip content, Metaspace replacement
    size_t start = 0, stop = 0;
    PreTokenizer::Prepend prepend = PreTokenizer::Prepend::Always;
  };
  const std::vector<Step>& steps() const { return steps_; }

 private:
  void add(const Json& j);
  std::vector<Step> steps_;
};

// Runs a Decoder token by token, with the output of decode_chain on the whole
// list: each stage keeps only the state its rule needs across tokens.
class DecodeStream {
 public:
  explicit DecodeStream(const Decoder& d);
  ~DecodeStream();
  DecodeStream(const DecodeStream&) = delete;
  DecodeStream& operator=(const DecodeStream&) = delete;
  void push(std::string_view token, std::string& out);
  void finish(std::string& out);

  struct Stage;

 private:
  std::vector<std::unique_ptr<Stage>> stages_;  // the last one appends to out
};

}  // namespace sparq::tok

namespace sparq {

struct Tokenizer::Impl {
  tok::Normalizer normalizer;
  tok::AddedVocab added;  // matched in the text to encode
  tok::PreTokenizer pre_tokenizer;
  tok::BpeModel model;
  std::vector<int> prefix, suffix;  // what the post-processor puts around the ids
  tok::Decoder decoder;
  std::unordered_map<int, std::string> added_text;  // id -> content, over the model's
  std::vector<uint8_t> special;                      // by id: dropped by decode(skip_special)
  int size = 0;                                      // 1 + the largest id

  const std::string* text_of(int id) const;
  // The text decode feeds the decoder for id, or nullptr when the id is skipped.
  const std::string* visible(int id, bool skip_special) const;
  // Fills `special` and `size` once the parts are in place.
  void finalize(const std::vector<std::string>& special_contents);
};

std::unique_ptr<Tokenizer::Impl> parse_llama2c_tokenizer(std::string_view data);

}  // namespace sparq
