// Tokenizer: reads tokenizer.json (or a llama2.c .bin) into its parts and runs
// them in tokenizers' order: added tokens, normalizer, normalized added
// tokens, pre-tokenizer, BPE, post-processor; decoding runs the decoder.
#include "sparq/tokenizer/tokenizer.h"

#include <algorithm>
#include <fstream>
#include <sstream>
#include <unordered_set>

#include <nlohmann/json.hpp>

#include "sparq/util/common.h"
#include "sparq/io/json_text.h"
#include "sparq/tokenizer/tokenizer_parts.h"
#include "sparq/util/utf8.h"

namespace sparq {

using tok::Json;

namespace {

std::vector<tok::AddedToken> parse_added_tokens(const Json& top) {
  std::vector<tok::AddedToken> out;
  const Json* list = tok::field(top, "added_tokens");
  if (!list) return out;
  if (!list->is_array()) fail("\"added_tokens\" must be a list");
  for (size_t i = 0; i < list->size(); ++i) {
    const Json& t = (*list)[i];
    const std::string where = fmt::format("added_tokens[{}]", i);
    if (!t.is_object()) fail("{} must be a JSON object", where);
    tok::AddedToken a;
    const int64_t id = tok::opt_int(t, "id", -1, where);
    if (id < 0 || id >= tok::kMaxTokenId) fail("{}: \"id\" is missing or out of range", where);
    a.id = int(id);
    a.content = tok::need_string(t, "content", where);
    a.single_word = tok::opt_bool(t, "single_word", false, where);
    a.lstrip = tok::opt_bool(t, "lstrip", false, where);
    a.rstrip = tok::opt_bool(t, "rstrip", false, where);
    a.normalized = tok::opt_bool(t, "normalized", true, where);
    a.special = tok::opt_bool(t, "special", false, where);
    out.push_back(std::move(a));
  }
  return out;
}

// The ids TemplateProcessing's "single" template puts before and after $A.
void parse_template(const Json& j, std::vector<int>& pre, std::vector<int>& post) {
  const Json& single = tok::need_list(j, "single", "TemplateProcessing");
  const Json& specials = tok::need(j, "special_tokens", "TemplateProcessing");
  bool seen_a = false;
  for (const Json& item : single) {
    if (const Json* st = tok::field(item, "SpecialToken")) {
      const std::string name = tok::need_string(*st, "id", "TemplateProcessing SpecialToken");
      const Json* spec = tok::field(specials, name.c_str());
      const Json* ids = spec ? tok::field(*spec, "ids") : nullptr;
      if (!ids || !ids->is_array())
        fail("TemplateProcessing: special token \"{}\" has no ids in special_tokens", name);
      for (const Json& id : *ids) {
        if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() >= tok::kMaxTokenId)
          fail("TemplateProcessing: special token \"{}\" has a bad id", name);
        (seen_a ? post : pre).push_back(id.get<int>());
      }
    } else if (const Json* seq = tok::field(item, "Sequence")) {
      if (tok::need_string(*seq, "id", "TemplateProcessing Sequence") != "A")
        fail("TemplateProcessing: \"single\" may only use sequence A");
      seen_a = true;
    } else {
      fail("TemplateProcessing: items must be SpecialToken or Sequence");
    }
  }
  if (!seen_a) fail("TemplateProcessing: \"single\" has no sequence A");
}

void parse_post_processor(const Json& j, Tokenizer::Impl& impl) {
  const std::string type = tok::type_of(j, "post_processor");
  if (type == "Sequence") {
    for (const Json& p : tok::need_list(j, "processors", "Sequence post_processor"))
      parse_post_processor(p, impl);
  } else if (type == "TemplateProcessing") {
    // Later processors wrap what earlier ones produced.
    std::vector<int> pre, post;
    parse_template(j, pre, post);
    impl.prefix.insert(impl.prefix.begin(), pre.begin(), pre.end());
    impl.suffix.insert(impl.suffix.end(), post.begin(), post.end());
  } else if (type != "ByteLevel") {  // ByteLevel only trims offsets
    fail("unsupported post_processor \"{}\" (supported: TemplateProcessing, ByteLevel, Sequence)",
         type);
  }
}

std::unique_ptr<Tokenizer::Impl> parse_tokenizer_json(const std::string& text) {
  const Json top = parse_json(text);
  if (!top.is_object()) fail("not a tokenizer.json: the top level is not a JSON object");
  auto impl = std::make_unique<Tokenizer::Impl>();
  const Json none;
  auto part = [&](const char* key) -> const Json& {
    const Json* p = tok::field(top, key);
    return p ? *p : none;
  };
  impl->normalizer = tok::Normalizer::from_json(part("normalizer"));
  impl->pre_tokenizer = tok::PreTokenizer::from_json(part("pre_tokenizer"));
  impl->model = tok::BpeModel::from_json(tok::need(top, "model", "the top level"));
  impl->decoder = tok::Decoder::from_json(part("decoder"));
  if (const Json* p = tok::field(top, "post_processor")) parse_post_processor(*p, *impl);

  std::vector<tok::AddedToken> added = parse_added_tokens(top);
  std::vector<std::string> specials;
  for (tok::AddedToken& a : added) {
    // tokenizers gives an added token that the model already has the model's id.
    if (const int id = impl->model.id_of(a.content); id >= 0) a.id = id;
    impl->added_text[a.id] = a.content;
    if (a.special) specials.push_back(a.content);
  }
  impl->added = tok::AddedVocab(std::move(added), impl->normalizer);
  impl->finalize(specials);
  return impl;
}

bool looks_like_json(const std::string& path, const std::string& data) {
  if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) return true;
  const size_t first = data.find_first_not_of(" \t\r\n");
  return first != std::string::npos && data[first] == '{';
}

}  // namespace

const std::string* Tokenizer::Impl::text_of(int id) const {
  if (const auto it = added_text.find(id); it != added_text.end()) return &it->second;
  return model.token(id);
}

const std::string* Tokenizer::Impl::visible(int id, bool skip_special) const {
  const std::string* t = text_of(id);
  return t && skip_special && special[size_t(id)] ? nullptr : t;
}

void Tokenizer::Impl::finalize(const std::vector<std::string>& special_contents) {
  size = model.size();
  for (const auto& [id, text] : added_text) size = std::max(size, id + 1);
  for (const std::vector<int>* v : {&prefix, &suffix})
    for (int id : *v)
      if (!text_of(id)) fail("post_processor: id {} is not in the vocabulary", id);
  // tokenizers decides "special" by the token's text, whichever id it has.
  const std::unordered_set<std::string> set(special_contents.begin(), special_contents.end());
  special.assign(size_t(size), 0);
  for (int id = 0; id < size; ++id)
    if (const std::string* t = text_of(id); t && set.count(*t)) special[size_t(id)] = 1;
}

Tokenizer::Tokenizer(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

Tokenizer Tokenizer::load(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) fail("cannot open tokenizer file {}", path);
  std::stringstream ss;
  ss << f.rdbuf();
  const std::string data = ss.str();
  try {
    if (looks_like_json(path, data)) return Tokenizer(parse_tokenizer_json(data));
    return Tokenizer(parse_llama2c_tokenizer(data));
  } catch (const Error& e) {
    fail("{}: {}", path, e.what());
  }
}

Tokenizer Tokenizer::from_json_text(const std::string& text) {
  try {
    return Tokenizer(parse_tokenizer_json(text));
  } catch (const Error& e) {
    fail("tokenizer.json: {}", e.what());
  }
}

std::vector<int> Tokenizer::encode(std::string_view text, bool add_bos) const {
  size_t bad = 0;
  if (!utf8::valid(text, &bad))
    fail("text to encode is not valid UTF-8 (byte {} is 0x{:02X})", bad, uint8_t(text[bad]));
  const Impl& m = *impl_;
  std::vector<tok::Piece> pieces;
  if (!text.empty()) pieces.push_back({std::string(text), -1, true});
  m.added.split(pieces, false);
  for (tok::Piece& p : pieces)
    if (p.id < 0) p.text = m.normalizer.apply(std::move(p.text));
  m.added.split(pieces, true);
  m.pre_tokenizer.apply(pieces);

  std::vector<int> ids;
  if (add_bos) ids = m.prefix;
  for (const tok::Piece& p : pieces) {
    if (p.id >= 0)
      ids.push_back(p.id);
    else
      m.model.tokenize(p.text, ids);
  }
  if (add_bos) ids.insert(ids.end(), m.suffix.begin(), m.suffix.end());
  return ids;
}

std::string Tokenizer::decode(std::span<const int> ids, bool skip_special) const {
  tok::DecodeStream stream(impl_->decoder);
  std::string out;
  for (int id : ids)
    if (const std::string* t = impl_->visible(id, skip_special)) stream.push(*t, out);
  stream.finish(out);
  return out;
}

std::string Tokenizer::decode_continuation(std::span<const int> context, std::span<const int> ids) const {
  // A few tokens of context settle the leading space and any pending bytes.
  const std::span<const int> tail = context.last(std::min<size_t>(context.size(), 8));
  std::vector<int> all(tail.begin(), tail.end());
  all.insert(all.end(), ids.begin(), ids.end());
  const std::string before = decode(tail), full = decode(all);
  if (full.compare(0, before.size(), before) == 0) return full.substr(before.size());
  return decode(ids);
}

int Tokenizer::vocab_size() const { return impl_->size; }

int Tokenizer::bos_id() const { return impl_->prefix.empty() ? -1 : impl_->prefix.front(); }

std::string Tokenizer::token_text(int id) const {
  const std::string* t = impl_->text_of(id);
  return t ? *t : fmt::format("<no token {}>", id);
}

TokenStreamer::TokenStreamer(const Tokenizer& tok)
    : tok_(tok), stream_(std::make_unique<tok::DecodeStream>(tok.impl_->decoder)) {}

TokenStreamer::~TokenStreamer() = default;

std::string TokenStreamer::push(int id) {
  std::string out;
  if (const std::string* t = tok_.impl_->visible(id, true)) stream_->push(*t, out);
  return out;
}

std::string TokenStreamer::finish() {
  std::string out;
  stream_->finish(out);
  stream_ = std::make_unique<tok::DecodeStream>(tok_.impl_->decoder);
  return out;
}

}  // namespace sparq
